"""The shared training protocol, seed aggregation, paired equal-L0 comparisons and the verdict rules."""
import json
import math

import pytest

from saelib.lab.claims import Claim, Claims, load_claims, markdown_table
from saelib.lab.experiments import SAESpec, train_config
from saelib.lab.pareto import (
    Paired,
    common_l0_range,
    diagnose,
    judge,
    log_spaced,
    mean_sd,
    paired_at_equal_l0,
    paired_at_points,
    seed_summary,
)
from saelib.lab.protocol import UNTUNED_LR, Protocol, describe, make_protocol, show_protocol
from saelib.lab.scales import get_scale

SCALE = get_scale("smoke")


# ----------------------------------------------------------------------------- protocol -> TrainConfig

def test_every_family_gets_the_same_schedule_and_only_its_own_learning_rate():
    protocol = Protocol(lrs={"gated": 3e-3, "standard": 2e-3})
    cfgs = {fam: train_config(SAESpec(fam, 0.1, {"k": 8} if fam == "topk" else {}), SCALE, 0, protocol)
            for fam in ("standard", "gated", "jumprelu", "topk")}
    shared = {"total_steps", "batch_size", "adam_betas", "grad_clip_norm", "lr_warmup_steps", "lr_decay_frac",
              "sparsity_warmup_frac", "resample_every"}
    for name in shared:
        assert len({repr(getattr(c, name)) for c in cfgs.values()}) == 1, name
    assert cfgs["gated"].lr == 3e-3 and cfgs["standard"].lr == 2e-3
    assert cfgs["jumprelu"].lr == UNTUNED_LR and cfgs["topk"].lr == UNTUNED_LR
    c = cfgs["gated"]
    assert c.grad_clip_norm == 1.0 and c.adam_betas == (0.0, 0.999)
    assert c.total_steps == SCALE.train_steps and c.lr_warmup_steps == round(0.05 * SCALE.train_steps)
    assert c.lr_decay_frac == 0.2 and c.sparsity_warmup_frac == 0.05


def test_budget_scales_the_steps_and_the_warm_up_with_them():
    cfg = train_config(SAESpec("gated", 0.1), SCALE, 0, Protocol(budget=3.0))
    assert cfg.total_steps == 3 * SCALE.train_steps
    assert cfg.lr_warmup_steps == round(0.05 * 3 * SCALE.train_steps)
    assert cfg.resample_every == 3 * SCALE.train_steps // 4


def test_spec_train_overrides_the_protocol_one_setting_at_a_time():
    spec = SAESpec("standard", 0.1, train={"adam_betas": (0.9, 0.999), "sparsity_warmup_steps": 0})
    cfg = train_config(spec, SCALE, 3, Protocol())
    assert cfg.adam_betas == (0.9, 0.999) and cfg.seed == 3
    assert cfg.grad_clip_norm == 1.0                       # everything else still from the protocol
    no_clip = train_config(SAESpec("standard", 0.1), SCALE, 0, Protocol(grad_clip_norm=None))
    assert no_clip.grad_clip_norm is None


def test_bad_protocols_are_refused_with_the_field_named():
    with pytest.raises(ValueError, match="lr_decay_frac"):
        Protocol(lr_decay_frac=1.5)
    with pytest.raises(ValueError, match="budget"):
        Protocol(budget=0)
    with pytest.raises(ValueError, match="lrs"):
        Protocol(lrs={"gatd": 1e-3})
    with pytest.raises(ValueError, match="not Protocol fields"):
        make_protocol({"grad_clip": 1.0})
    assert make_protocol({"grad_clip_norm": None}).grad_clip_norm is None


def test_show_protocol_prints_the_exact_train_config(capsys):
    protocol = Protocol(lrs={"gated": 3e-3}, lr_source="test")
    text = show_protocol(protocol, SCALE, [SAESpec("gated", 0.2), SAESpec("gated", 0.5)])
    out = capsys.readouterr().out
    assert text in out
    assert "grad clipping  global norm 1" in text and "gated 0.003" in text and "(test)" in text
    assert text.count("TrainConfig(") == 1                    # one line per arm, not per point
    assert "lr=0.003" in text and f"total_steps={SCALE.train_steps}" in text
    assert "budget         1x" in describe(Protocol(), SCALE)


def test_family_options_come_from_the_protocol_and_enter_the_cache_key():
    from saelib.lab.experiments import effective_options, run_key

    class FakeSite:
        key = {"fake": 1}

    spec = SAESpec("jumprelu", 1e-3)
    assert effective_options(spec, Protocol()) == {"theta_init": 0.05}
    assert effective_options(SAESpec("jumprelu", 1e-3, {"theta_init": 0.1}), Protocol()) == {"theta_init": 0.1}
    cfg = train_config(spec, SCALE, 0, Protocol())
    a = run_key(FakeSite(), spec, cfg, effective_options(spec, Protocol()))
    b = run_key(FakeSite(), spec, cfg, effective_options(spec, Protocol(options={})))
    assert a != b


# ----------------------------------------------------------------------------- seeds

def frontier(seed, scale_y, l0s=(2.0, 8.0, 32.0), slope=-1.0, label="a"):
    """A power-law frontier y = scale_y * l0^slope, one row per L0."""
    return [{"label": label, "seed": seed, "point": f"{label}{i}", "l0": l0, "y": scale_y * l0 ** slope}
            for i, l0 in enumerate(l0s)]


def test_mean_sd_and_seed_summary():
    assert mean_sd([1.0, 2.0, 3.0]) == pytest.approx((2.0, 1.0))
    m, s = mean_sd([5.0])
    assert m == 5.0 and math.isnan(s)
    rows = frontier(0, 1.0) + frontier(1, 2.0) + frontier(2, 3.0)
    summary = {r["point"]: r for r in seed_summary(rows, ["y", "l0"])}
    assert set(summary) == {"a0", "a1", "a2"}
    assert summary["a1"]["n_seeds"] == 3 and summary["a1"]["l0"] == 8.0
    assert summary["a1"]["y"] == pytest.approx(2.0 / 8.0) and summary["a1"]["y_sd"] == pytest.approx(1.0 / 8.0)
    assert "seed" not in summary["a1"]
    rows[0]["noise"], rows[3]["noise"] = 1.0, 2.0          # a field that differs between seeds is left out
    assert "noise" not in seed_summary(rows, ["y"])[0] and seed_summary(rows, ["y"])[0]["label"] == "a"


def test_paired_log_ratios_at_log_spaced_l0s_in_the_common_range():
    a = [r for s, c in enumerate((0.5, 0.55, 0.45)) for r in frontier(s, c, label="a")]
    b = [r for s in range(3) for r in frontier(s, 1.0, l0s=(4.0, 16.0, 64.0), label="b")]
    assert common_l0_range(a, b) == (4.0, 32.0)
    paired = paired_at_equal_l0(a, b, "y", n_l0=3)
    assert [p.l0 for p in paired] == pytest.approx([4.0, math.sqrt(128.0), 32.0])
    for p in paired:
        assert p.log_ratio and p.seeds == (0, 1, 2)
        # power laws are interpolated exactly, so each seed's log-ratio is log(c_seed / 1)
        assert p.differences == pytest.approx([math.log(0.5), math.log(0.55), math.log(0.45)])
    assert paired_at_equal_l0(a, frontier(0, 1.0, l0s=(100.0, 200.0)), "y") == []


def test_log_spaced_ends_exactly_at_the_range_so_no_seed_is_lost_at_the_edge():
    assert log_spaced(4.0, 32.0, 3) == pytest.approx([4.0, math.sqrt(128.0), 32.0])
    assert log_spaced(5.52, 98.387, 3)[-1] == 98.387        # 5.52 * (98.387 / 5.52) ** 1.0 is 98.38700000000001
    assert log_spaced(2.0, 2.0, 3) == [2.0] and log_spaced(2.0, 8.0, 1) == [2.0]
    with pytest.raises(ValueError, match="n"):
        log_spaced(1.0, 2.0, 0)
    # a seed whose frontier ends exactly at the top of the common range is still compared there
    a = [r for s in range(3) for r in frontier(s, 0.5, l0s=(5.52, 20.0, 98.387 if s == 0 else 120.0), label="a")]
    b = [r for s in range(3) for r in frontier(s, 1.0, l0s=(2.0, 30.0, 200.0), label="b")]
    assert common_l0_range(a, b) == (5.52, 98.387)
    assert [p.seeds for p in paired_at_equal_l0(a, b, "y", n_l0=3)] == [(0, 1, 2)] * 3


def test_seeds_are_paired_only_where_both_sides_have_them():
    a = frontier(0, 0.5) + frontier(1, 0.5) + frontier(2, 0.5)
    b = frontier(0, 1.0) + frontier(2, 1.0)
    (p,) = paired_at_equal_l0(a, b, "y", l0s=[8.0])
    assert p.seeds == (0, 2)


def test_paired_at_points_reads_the_reference_at_each_seeds_own_l0():
    ref = [r for s in range(3) for r in frontier(s, 1.0, l0s=(1.0, 10.0, 100.0))]
    points = [{"point": "p", "seed": s, "l0": l0, "y": 2.0 / l0} for s, l0 in enumerate((5.0, 6.0, 200.0))]
    (p,) = paired_at_points(points, ref, "y")
    assert p.seeds == (0, 1)                                   # seed 2's L0 200 is outside its reference
    assert p.differences == pytest.approx([math.log(2.0)] * 2)
    assert p.l0 == pytest.approx(math.sqrt(30.0))


# ----------------------------------------------------------------------------- verdict rules

def paired(diffs, *, spread=0.0):
    """A Paired whose log-ratios are `diffs`; `spread` adds the same per-seed noise to both sides."""
    noise = [spread * (i - (len(diffs) - 1) / 2) for i in range(len(diffs))]
    values = tuple(math.exp(d + n) for d, n in zip(diffs, noise, strict=True))
    reference = tuple(math.exp(n) for n in noise)
    return Paired(10.0, tuple(range(len(diffs))), values, reference, True)


def test_lower_needs_every_seed_to_agree_and_the_mean_beyond_two_sd():
    assert judge([paired([-0.30, -0.35, -0.32])], "lower").holds
    assert not judge([paired([-0.10, -0.50, -0.30])], "lower").holds        # mean -0.3, sd 0.2: |mean| < 2 sd
    assert not judge([paired([-0.30, -0.35, 0.01])], "lower").holds         # one seed disagrees
    assert not judge([paired([-0.3, -0.3, -0.3]), paired([-0.3, -0.6, 0.1])], "lower").holds  # every L0 counts
    assert judge([paired([0.2, 0.25, 0.22])], "higher").holds
    assert not judge([paired([-0.3, -0.35])], "higher").holds


def test_not_lower_and_the_minimum_number_of_seeds():
    assert judge([paired([0.01, -0.02, 0.03])], "not_lower").holds
    assert not judge([paired([-0.30, -0.35, -0.32])], "not_lower").holds
    one_seed = judge([paired([-0.5])], "lower")
    assert not one_seed.holds and "1 seed" in one_seed.observed
    mixed = judge([paired([-0.30, -0.35, -0.32]), paired([0.9])], "lower")   # the 1-seed L0 is left out
    assert mixed.holds and mixed.n_seeds == 3 and "left out" in mixed.observed
    nothing = judge([], "equivalent", what="x")
    assert not nothing.holds and "not compared" in nothing.observed


def test_equivalence_margin_comes_from_the_measured_seed_spread():
    # both arms vary by +-0.1 in log y across seeds (sd 0.1): margin = 2 x 0.1
    close = judge([paired([0.02, 0.02, 0.02], spread=0.1)], "equivalent")
    assert close.holds and close.margins == pytest.approx((0.2,), rel=1e-6)
    # unequal spreads pool as sqrt((sd_a^2 + sd_b^2) / 2): log y of one side -0.08, 0.03, 0.11, other -0.1, 0, 0.1
    uneven = judge([paired([0.02, 0.03, 0.01], spread=0.1)], "equivalent")
    sd_a = mean_sd([-0.08, 0.03, 0.11])[1]
    assert uneven.margins == pytest.approx((2 * math.sqrt((sd_a ** 2 + 0.1 ** 2) / 2),))
    far = judge([paired([0.40, 0.42, 0.38], spread=0.1)], "equivalent")
    assert not far.holds
    stated = judge([paired([0.02, 0.03, 0.01], spread=0.1)], "equivalent", margin=0.01)
    assert not stated.holds and "0.01 (stated)" in stated.rule
    assert "margin 0.200 (log-ratio)" in close.observed
    # where a value is <= 0 that L0 compares differences, and its margin says so
    signed = Paired(50.0, (0, 1, 2), (0.001, -0.001, 0.0), (0.002, 0.0, 0.001), False)
    both = judge([paired([0.02, 0.02, 0.02], spread=0.1), signed], "equivalent")
    assert "margin 0.200 (log-ratio)" in both.observed and "margin 0.002 (difference)" in both.observed


def test_result_text_reports_mean_and_sd_per_side():
    p = Paired(12.0, (0, 1, 2), (0.010, 0.011, 0.012), (0.020, 0.021, 0.022), True)
    text = p.text()
    assert text.startswith("L0 12.0: 0.011 ± 0.001 vs 0.021 ± 0.001 (-48%; log-ratio -0.65 ± 0.04, n=3)"), text
    r = judge([p], "lower", what="delta LM loss")
    assert r.holds and r.n_seeds == 3 and r.observed.startswith("delta LM loss: L0 12.0")


# ----------------------------------------------------------------------------- claims

def test_claims_record_seeds_paper_figure_and_rule(tmp_path, monkeypatch):
    monkeypatch.setenv("SAELIB_OUTPUT_DIR", str(tmp_path))
    claims = Claims("99_test", "smoke")
    result = judge([paired([-0.30, -0.35, -0.32])], "lower", what="y")
    claims.add_result("A beats B", source="paper §1", expected="lower", result=result, paper="Fig. 1: 2x")
    claims.add("plain", source="s", expected="e", observed="o", holds=False)
    saved = json.loads(claims.path.read_text())
    assert saved[0]["n_seeds"] == 3 and saved[0]["paper"] == "Fig. 1: 2x" and saved[0]["holds"] is True
    assert saved[0]["rule"] == result.rule and saved[1]["n_seeds"] is None
    # claim files written before these columns existed still load
    (claims.path.parent / "00_old.json").write_text(json.dumps([{
        "notebook": "00_old", "claim": "c", "source": "s", "expected": "e", "observed": "o", "holds": True}]))
    items = load_claims("smoke")
    assert {c.notebook for c in items} == {"00_old", "99_test"}
    table = markdown_table(items)
    header = table.splitlines()[0]
    assert "paper's figure" in header and "seeds" in header and "verdict rule" in header
    assert all(line.count("|") == header.count("|") for line in table.splitlines())
    assert Claim("n", "c", "s", "e", "o", True).n_seeds is None


def test_claims_record_their_figure_and_section(tmp_path, monkeypatch):
    from saelib.lab.claims import parse_where, where

    monkeypatch.setenv("SAELIB_OUTPUT_DIR", str(tmp_path))
    claims = Claims("99_test", "smoke")
    result = judge([paired([-0.30, -0.35, -0.32])], "lower", what="y")
    claims.add_result("A beats B", source="s", expected="lower", result=result, figure="99_frontier", section="4")
    claims.add("plain", source="s", expected="e", observed="o", holds=True, figure="figures/99_other.png",
               section="§4b.")
    claims.add("nowhere", source="s", expected="e", observed="o", holds=True)
    saved = json.loads(claims.path.read_text())
    assert [(c["figure"], c["section"]) for c in saved] == [("99_frontier", "4"), ("99_other", "4b"), ("", "")]
    items = load_claims("smoke")
    assert [where(c) for c in items] == ["§4, fig 99_frontier", "§4b, fig 99_other", "—"]
    assert [parse_where(where(c)) for c in items] == [("4", "99_frontier"), ("4b", "99_other"), ("", "")]
    table = markdown_table(items).splitlines()
    assert table[0].startswith("| notebook | where | claim |")
    assert table[2].startswith("| 99_test | §4, fig 99_frontier | A beats B |")
    assert all(line.count("|") == table[0].count("|") for line in table)


def test_the_site_links_each_claim_to_its_notebook_section_and_figure(tmp_path, monkeypatch):
    """scripts/build_site.py: the claims page links the "## N." heading's id on the rendered notebook page (the
    id mkdocs-jupyter gives it, math included) and the claim's own figure."""
    import sys
    from pathlib import Path

    pytest.importorskip("mkdocs_jupyter")
    pytest.importorskip("latex2mathml")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    try:
        import build_site
    finally:
        sys.path.pop(0)
    nb = {"cells": [{"cell_type": "markdown", "metadata": {}, "source": ["# 99 title\n", "## 1. Intro\n"]},
                    {"cell_type": "markdown", "metadata": {},
                     "source": ["## 4. $L_0$ versus $L_1$, and Gated SAEs\n\ntext"]},
                    {"cell_type": "markdown", "metadata": {}, "source": ["### 4b. More: \"quoted\" & shifted"]}],
           "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    path = tmp_path / "99_test.ipynb"
    path.write_text(json.dumps(nb))
    anchors = build_site.section_anchors(path)
    assert anchors == {"1": "1-intro", "4": "4-l0-versus-l1-and-gated-saes", "4b": "4b-more-quoted-shifted"}
    items = [Claim("99_test", "c1", "s", "e", "o", True, figure="99_fig", section="4"),
             Claim("99_test", "c2", "s", "e", "o", False, section="4b"),
             Claim("99_test", "c3", "s", "e", "o", True)]
    claims_md = tmp_path / "CLAIMS.md"
    claims_md.write_text(markdown_table(items) + "\n")
    page = build_site.claims_page(claims_md, ["99_test"], ["99_fig.png", "99_other.png"], {"99_test": anchors})
    rows = [ln for ln in page.splitlines() if ln.startswith("| [99_test]")]
    assert len(rows) == 3
    assert "[§4](notebooks/99_test.ipynb#4-l0-versus-l1-and-gated-saes)<br>[fig: 99_fig](figures/99_fig.png)" \
        in rows[0] and "99_other" not in rows[0]
    assert "[§4b](notebooks/99_test.ipynb#4b-more-quoted-shifted)" in rows[1]
    assert "figures/99_fig.png" in rows[2] and "figures/99_other.png" in rows[2]    # no where: all its figures
    assert "Claims that do not hold" not in page
    # the failing claims' section follows the table, its links to files the site lacks turned into names
    from saelib.lab.claims import failing_section

    claims_md.write_text(markdown_table(items) + "\n\n" + failing_section(items, "default", [], "long"))
    page = build_site.claims_page(claims_md, ["99_test"], ["99_fig.png"], {"99_test": anchors})
    section = page[page.index("## Claims that do not hold"):]
    assert "c2. Tried: no seeds" in section and "c1" not in section and "Not made" not in section
    assert "`figures/CLAIMS_default_vs_long.md`" in section and "](CLAIMS_default_vs_long.md)" not in section


# ----------------------------------------------------------------------------- seeds, points, shared runs

def test_check_seeds_defaults_to_the_scale_and_refuses_bad_values():
    from saelib.lab.protocol import check_seeds, lr_sweep_seeds

    assert check_seeds(None, get_scale("default")) == (0, 1, 2)
    assert check_seeds(None, SCALE) == (0, 1)
    assert check_seeds([4, 7], SCALE) == (4, 7)
    assert lr_sweep_seeds(get_scale("default")) == (0,) and lr_sweep_seeds(SCALE) == (0,)
    for bad in ([], [0, 0], [-1], [1.5], "012", 3):
        with pytest.raises(ValueError, match="seeds"):
            check_seeds(bad, SCALE)


def test_claim_scales_train_on_distinct_activations_at_1x():
    for name in ("default", "long"):
        scale = get_scale(name)
        assert scale.train_tokens >= scale.batch_size * scale.train_steps, name


def test_middle_points():
    from saelib.lab.experiments import middle_points

    assert middle_points([1, 2, 3, 4]) == [2, 3]
    assert middle_points([1, 2, 3, 4, 5]) == [2, 3]
    assert middle_points([1, 2, 3, 4, 5], 1) == [3]
    assert middle_points([1, 2]) == [1, 2]


def test_the_lr_sweep_runs_its_middle_frontier_point_and_shares_the_chosen_run():
    from saelib.lab.experiments import default_max_k, frontier_specs, run_key
    from saelib.lab.protocol import lr_sweep_point, lr_sweep_specs

    class FakeSite:
        key = {"fake": 1}
        scale = get_scale("default")
        d_in = 128

    site = FakeSite()
    assert default_max_k(site) == 128
    for fam in ("standard", "gated", "jumprelu", "topk"):
        frontier = frontier_specs(fam, site.scale.sweep_points, max_k=default_max_k(site))
        assert lr_sweep_point(fam, site) == frontier[len(frontier) // 2]
    (spec,) = lr_sweep_specs("gated", site, candidates=[3e-3])
    frontier_spec = lr_sweep_point("gated", site)
    assert spec.train == {"lr": 3e-3} and frontier_spec.train == {}
    protocol = Protocol(lrs={"gated": 3e-3})
    a = run_key(site, spec, train_config(spec, site.scale, 0, protocol))
    b = run_key(site, frontier_spec, train_config(frontier_spec, site.scale, 0, protocol))
    assert a == b                                           # the chosen rate's sweep run is the frontier's run
    c = run_key(site, frontier_spec, train_config(frontier_spec, site.scale, 0, Protocol(lrs={"gated": 1e-2})))
    assert c != a


def test_compare_gaps_pairs_two_arms_through_a_common_reference():
    from saelib.lab.pareto import compare_gaps, make_paired

    ref = [r for s in range(3) for r in frontier(s, 1.0, l0s=(1.0, 10.0, 100.0))]
    arm_b = [{"point": f"b{i}", "seed": s, "l0": l0, "y": 1.2 / l0} for i, l0 in enumerate((5.0, 20.0))
             for s in range(3)]
    arm_c = [{"point": "c", "seed": s, "l0": 50.0, "y": (1.5 + 0.01 * s) / 50.0} for s in range(3)]
    (gap,) = compare_gaps(paired_at_points(arm_b, ref, "y"), paired_at_points(arm_c, ref, "y"))
    assert gap.seeds == (0, 1, 2) and gap.log_ratio
    assert gap.values == pytest.approx((1.2, 1.2, 1.2))                 # arm b's y / reference's y
    assert gap.differences == pytest.approx([math.log(1.2 / (1.5 + 0.01 * s)) for s in range(3)])
    assert judge([gap], "lower").holds
    p = make_paired(3.0, [0, 1], [0.5, 0.6], [1.0, 1.0])
    assert p.log_ratio and make_paired(3.0, [0, 1], [0.5, -0.1], [1.0, 1.0]).log_ratio is False


def _bent_frontier(bend: float, noise: float = 0.05) -> list[dict]:
    """Five points x three seeds of log y = -log L0 + bend * (log L0 - log 8)^2 with a seed wobble of `noise`."""
    import math

    rows = []
    for point, l0 in enumerate((2.0, 4.0, 8.0, 16.0, 32.0)):
        for seed in range(3):
            log_y = -math.log(l0) + bend * (math.log(l0) - math.log(8.0)) ** 2 + noise * (seed - 1) * (-1) ** point
            rows.append({"point": point, "seed": seed, "l0": l0, "delta_lm_loss": math.exp(log_y)})
    return rows


def test_leave_one_out_is_exact_on_a_power_law_and_sees_a_bend():
    import math

    from saelib.lab.pareto import leave_one_out

    straight = leave_one_out(_bent_frontier(0.0, noise=0.0), "delta_lm_loss")
    assert [c["point"] for c in straight] == [1, 2, 3] and all(abs(e) < 1e-12 for c in straight for e in c["errors"])
    bent = leave_one_out(_bent_frontier(0.3, noise=0.0), "delta_lm_loss")
    # a neighbour pair 2 x log 2 apart around a parabola of curvature 0.3 misses by 0.3 * (log 2)^2 below the chord
    assert all(math.isclose(c["error"], -0.3 * math.log(2) ** 2, rel_tol=1e-9) for c in bent)


def test_spacing_error_estimate_is_a_quarter_of_the_leave_one_out_miss_on_a_parabola():
    import math

    from saelib.lab.pareto import interpolate_at, spacing_error_estimate

    ratio, l0 = spacing_error_estimate(_bent_frontier(0.3), "delta_lm_loss")
    # leave-one-out misses by 0.3 (log 2)^2 (neighbours 2 log 2 apart); the margin is 2 x the seed wobble 0.05
    assert ratio == pytest.approx(0.3 * math.log(2) ** 2 / 4 / (2 * 0.05))
    assert any(l0 == pytest.approx(v) for v in (4.0, 8.0, 16.0))
    # and a quarter is what the frontier's own chord misses by: between L0 4 and 8, at their geometric midpoint
    smooth = [r for r in _bent_frontier(0.3, noise=0.0) if r["seed"] == 0]
    mid = math.sqrt(4.0 * 8.0)
    truth = -math.log(mid) + 0.3 * (math.log(mid) - math.log(8.0)) ** 2
    assert math.log(interpolate_at(smooth, mid, "delta_lm_loss")) - truth == pytest.approx(0.3 * math.log(2) ** 2 / 4)
    assert math.isnan(spacing_error_estimate(_bent_frontier(0.3)[:6], "delta_lm_loss")[0])   # 2 points


def test_interpolation_verdict_compares_the_miss_with_twice_the_seed_spread():
    from saelib.lab.pareto import interpolation_verdict

    holds, observed, n = interpolation_verdict(_bent_frontier(0.05), "delta_lm_loss", what="standard")
    # the miss 0.05 (log 2)^2 = 0.024 is inside the margin 2 x 0.05
    assert holds and n == 3 and observed.startswith("standard: L0 4.0: -0.024 ± 0.100 (n=3) vs margin 0.100")
    holds, observed, _ = interpolation_verdict(_bent_frontier(1.0), "delta_lm_loss")
    assert not holds and "L0 8.0: -0.480 ± 0.100 (n=3) vs margin 0.100" in observed
    assert interpolation_verdict(_bent_frontier(0.0)[:6], "delta_lm_loss")[0] is False   # 2 points: nothing to check


def test_a_denser_frontier_keeps_the_lr_sweep_operating_point():
    from types import SimpleNamespace

    from saelib.lab.experiments import default_max_k, frontier_specs
    from saelib.lab.lr_sweep import lr_sweep_point
    from saelib.lab.scales import get_scale

    for family in ("standard", "gated", "jumprelu", "topk"):
        points = {}
        for n in (4, 7, 10):
            site = SimpleNamespace(scale=get_scale("default", sweep_points=n, frontier_points=n), d_in=128)
            points[n] = lr_sweep_point(family, site)
            assert points[n] in frontier_specs(family, n, max_k=default_max_k(site))   # a frontier run: no extra SAE
        assert points[4] == points[7] == points[10], family
    smoke = SimpleNamespace(scale=get_scale("smoke"), d_in=16)
    assert lr_sweep_point("standard", smoke) == frontier_specs("standard", 2)[1]


def test_frontier_points_default_to_the_operating_grid_and_contain_it():
    from saelib.lab.experiments import default_max_k, frontier_specs, middle_points
    from saelib.lab.scales import Scale

    for name in ("default", "long"):
        assert get_scale(name).frontier_points == 7 and get_scale(name).sweep_points == 4, name
    assert get_scale("smoke").frontier_points == 2
    assert get_scale("default", frontier_points=4).frontier_points == 4                 # the quicker look
    with pytest.raises(ValueError, match="frontier_points"):
        get_scale("default").with_(frontier_points=0)
    with pytest.raises(ValueError, match="frontier_points"):
        Scale("default", 1, 1, 1, 1, 1, 4, 1, frontier_points=2.5)
    with pytest.raises(ValueError, match="frontier_points=3 is not allowed with sweep_points=4"):
        get_scale("long", frontier_points=3, sweep_points=4)
    quick = get_scale("long", frontier_points=2)                # a sparser frontier takes the grid down with it
    assert (quick.sweep_points, quick.frontier_points) == (2, 2)
    # a frontier that is the operating grid follows it; a denser one stays
    assert get_scale("smoke", sweep_points=3).frontier_points == 3
    assert get_scale("long", sweep_points=2).frontier_points == 7
    # 3k + 1 or 2k + 1 points contain the 4 (and the operating points: the two central ones, the middle one)
    for n, nests in ((4, True), (5, False), (7, True), (10, True), (6, False)):
        scale = get_scale("long", frontier_points=n)
        assert scale.frontier_nests_grid is nests, n
        for family in ("standard", "gated", "jumprelu"):
            grid, frontier = frontier_specs(family, scale.sweep_points), frontier_specs(family, n)
            assert all(g in frontier for g in grid) is nests, (family, n)
            if nests:
                assert all(m in frontier for m in middle_points(grid, 2)), (family, n)
    site = type("S", (), {"scale": get_scale("long"), "d_in": 128})()
    ks = [s.options["k"] for s in frontier_specs("topk", 7, max_k=default_max_k(site))]
    assert ks == [8, 16, 32, 64, 128]                     # every k of the ladder up to d_sae / 4: 5, not 7
    assert set(s.options["k"] for s in frontier_specs("topk", 4, max_k=128)) <= set(ks)
    assert get_scale("smoke", sweep_points=1, frontier_points=3).frontier_nests_grid


# ----------------------------------------------------------------------------- why a claim fails

def at(l0, diffs, *, spread=0.0):
    p = paired(diffs, spread=spread)
    return Paired(l0, p.seeds, p.values, p.reference, True)


def test_diagnose_sorts_each_compared_l0_against_the_seed_spread():
    assert diagnose(judge([paired([-0.30, -0.35, -0.32])], "lower")) == ""          # a claim that holds: nothing
    within = diagnose(judge([at(5.0, [-0.30, -0.35, -0.32]), at(20.0, [-0.1, -0.5, -0.3])], "lower"))
    assert within.startswith("2 compared L0s (3 seeds): as claimed, beyond the seed spread at 1 (L0 5.0); "
                             "as claimed, within the seed spread at 1 (L0 20.0)."), within
    assert "the claimed direction at every compared L0" in within
    mixed = diagnose(judge([at(5.0, [-0.1, 0.2, -0.3]), at(20.0, [0.1, -0.2, 0.3])], "lower"))
    assert "the other way, within the seed spread at 1 (L0 20.0)" in mixed and "no consistent direction" in mixed
    against = diagnose(judge([at(5.0, [0.30, 0.35, 0.32])], "lower"))
    assert "the other way, beyond the seed spread at 1 (L0 5.0)" in against and "does not reproduce" in against
    measured = diagnose(judge([at(5.0, [-0.30, -0.35, -0.32])], "not_lower"))
    assert "the other way, beyond the seed spread at 1" in measured and "a measured difference" in measured
    far = diagnose(judge([at(5.0, [0.5, 0.52, 0.51], spread=0.1)], "equivalent"))
    assert far.startswith("1 of 1 compared L0s differ by more than the margin (L0 5.0: +0.51 vs margin 0.2")
    assert "not compared" not in far and "not judged" in diagnose(judge([], "lower"))
    for unjudged in (judge([], "lower"), judge([at(5.0, [0.1])], "lower")):          # no overlap; one seed
        assert "Would settle it" in diagnose(unjudged)


def test_claims_that_fail_say_what_was_tried_and_what_would_settle_them(tmp_path, monkeypatch):
    from saelib.lab.claims import assemble, failing_section

    monkeypatch.setenv("SAELIB_OUTPUT_DIR", str(tmp_path))
    monkeypatch.setenv("SAELIB_FIGURES_DIR", str(tmp_path / "figures"))    # default scale: never the repo's figures/
    claims = Claims("99_test", "default")
    claims.add_result("A beats B", source="s", expected="lower", result=judge([at(5.0, [0.3, 0.35, 0.32])], "lower"))
    claims.add_result("C beats D", source="s", expected="lower", result=judge([at(5.0, [-0.3, -0.35, -0.32])], "lower"))
    claims.add("E, checked by hand", source="s", expected="e", observed="o", holds=False, diagnosis="why not")
    claims.add("F holds", source="s", expected="e", observed="o", holds=True, diagnosis="dropped: it holds")
    saved = json.loads(claims.path.read_text())
    assert [bool(c["diagnosis"]) for c in saved] == [True, False, True, False]
    items = load_claims("default")
    text = failing_section(items, "default")
    assert "A beats B. Tried: 3 seeds; rule: lower at every compared L0" in text
    assert "Found: 1 compared L0 (3 seeds): the other way, beyond the seed spread" in text
    assert "E, checked by hand. Tried: no seeds (exact check); rule: —. Found: why not" in text
    assert "C beats D" not in text and "F holds" not in text and "At `long`" not in text
    # at default, the verdict at long is added where outputs/long has the claim
    Claims("99_test", "long").add_result("A beats B", source="s", expected="lower",
                                         result=judge([at(5.0, [-0.3, -0.35, -0.32])], "lower"))
    out = assemble("default")
    assert out == tmp_path / "figures" / "CLAIMS.md"
    written = out.read_text()
    assert "A beats B. Tried: 3 seeds; rule: lower at every compared L0: all seeds' paired differences < 0 and " \
           "|mean| > 2 sd of them. At `long`: holds (the longer budget settles it)." in written
    assert "E, checked by hand. Tried: no seeds (exact check); rule: —. Not made at `long`." in written
    assert "[`CLAIMS_default_vs_long.md`](CLAIMS_default_vs_long.md)" in written
    assert failing_section([c for c in items if c.holds], "default") == ""
