"""Frontiers at two scales side by side (saelib.lab.scale_frontiers): recorded, reloaded, judged and drawn, and
reported by `python -m saelib.lab.claims --compare`."""
import pytest

from saelib.lab.scale_frontiers import (
    compare_frontiers_across_scales,
    judge_frontier_moves,
    load_frontiers,
    save_frontiers,
)

L0S = (3.0, 8.0, 20.0, 50.0)


def frontier(factor: float, noise: float = 0.03) -> list[dict]:
    """Four points x three seeds of a power-law frontier (delta LM loss = factor * 0.05 / L0), with a small
    seed-dependent wobble; extra fields the recorder should drop."""
    rows = []
    for point, l0 in enumerate(L0S):
        for seed in range(3):
            wobble = 1 + noise * ((seed + point) % 3 - 1)
            rows.append({"point": point, "seed": seed, "label": "standard", "sparsity_coeff": 0.1 / (point + 1),
                         "l0": l0 * (1 + 0.01 * seed), "delta_lm_loss": factor * 0.05 / l0 * wobble,
                         "fvu": 0.1 / l0, "history": [1, 2, 3], "gamma": 0.9})
    return rows


def test_recorded_frontiers_reload_without_the_extra_fields(tmp_path, monkeypatch):
    monkeypatch.setenv("SAELIB_OUTPUT_DIR", str(tmp_path))
    assert load_frontiers("08_pareto", "long") is None
    path = save_frontiers("08_pareto", "long", {"standard": frontier(1.0)})
    assert path == tmp_path / "long" / "frontiers" / "08_pareto.json"
    rows = load_frontiers("08_pareto", "long")["standard"]
    assert len(rows) == 12 and set(rows[0]) == {"point", "seed", "label", "sparsity_coeff", "l0", "delta_lm_loss",
                                                 "fvu"}
    assert rows[5]["delta_lm_loss"] == frontier(1.0)[5]["delta_lm_loss"]


def test_a_frontier_that_moves_by_more_than_the_seed_spread_is_not_settled():
    assert judge_frontier_moves(frontier(1.0), frontier(1.0, noise=0.02)).holds            # within the spread
    moved = judge_frontier_moves(frontier(1.0), frontier(0.5), what="standard at long vs default")
    assert not moved.holds and moved.observed.startswith("standard at long vs default: L0 ")
    assert "-50%" in moved.observed and moved.n_seeds == 3


def test_comparison_across_scales_draws_a_figure_and_judges_each_family(tmp_path, monkeypatch):
    monkeypatch.setenv("SAELIB_OUTPUT_DIR", str(tmp_path / "out"))
    monkeypatch.setenv("SAELIB_FIGURES_DIR", str(tmp_path / "figures"))
    save_frontiers("08_pareto", "default", {"standard": frontier(1.0), "gated": frontier(0.4)})
    assert compare_frontiers_across_scales("08_pareto", "default", "long") is None      # not run at long
    save_frontiers("08_pareto", "long", {"standard": frontier(0.5), "gated": frontier(0.4, noise=0.02),
                                         "topk": frontier(1.0)})
    figure, results = compare_frontiers_across_scales("08_pareto", "default", "long")
    assert figure == tmp_path / "figures" / "08_frontiers_default_vs_long.png" and figure.exists()
    assert [(fam, r.holds) for fam, r in results] == [("standard", False), ("gated", True)]   # topk: long only


def test_claims_comparison_reports_whether_each_frontier_moved(tmp_path, monkeypatch):
    from saelib.lab.claims import Claims, assemble_comparison

    monkeypatch.setenv("SAELIB_OUTPUT_DIR", str(tmp_path / "out"))
    monkeypatch.setenv("SAELIB_FIGURES_DIR", str(tmp_path / "figures"))
    for scale, factor in (("default", 1.0), ("long", 0.5)):
        Claims("08_pareto", scale).add("a claim", "s", "e", "x", holds=True, n_seeds=3)
        save_frontiers("08_pareto", scale, {"standard": frontier(factor)})
    text = assemble_comparison("default", "long").read_text()
    assert "## Has the frontier stopped moving? 08_pareto" in text
    assert "[`08_frontiers_default_vs_long.png`](08_frontiers_default_vs_long.png)" in text
    assert "| standard | **no** | delta LM loss, standard at long vs default: L0 " in text
    assert text.index("## Has the frontier") < text.index("## Claims at both scales") < text.index("| a claim |")


@pytest.mark.parametrize("missing", ["default", "long"])
def test_no_frontier_section_without_frontiers_at_both_scales(tmp_path, monkeypatch, missing):
    from saelib.lab.claims import Claims, assemble_comparison

    monkeypatch.setenv("SAELIB_OUTPUT_DIR", str(tmp_path / "out"))
    monkeypatch.setenv("SAELIB_FIGURES_DIR", str(tmp_path / "figures"))
    for scale in ("default", "long"):
        Claims("08_pareto", scale).add("a claim", "s", "e", "x", holds=True)
        if scale != missing:
            save_frontiers("08_pareto", scale, {"standard": frontier(1.0)})
    text = assemble_comparison("default", "long").read_text()
    assert "stopped moving" not in text and "| 08_pareto | a claim |" in text
