"""Has the frontier stopped moving? The same frontiers at two scales, side by side.

Notebook 08 records every family's frontier (each seed's L0, delta LM loss and FVU) under
outputs/<scale>/frontiers/08_pareto.json. After a run at `long` (4x the steps and 4x the distinct training
activations, each family's learning rate re-swept at that budget), `python -m saelib.lab.claims --compare default
long` calls `compare_frontiers_across_scales`: a figure per notebook (figures/08_frontiers_default_vs_long.png)
and, per family, the longer run's frontier read against the shorter one's at equal L0 (log-log interpolation, as
every comparison here), judged with the equivalence rule of saelib.lab.verdicts: the frontier "has stopped
moving" when the change is within 2 x the seed spread at every compared L0. The runs of the two scales are
independent (different activations), so seed s of one is matched with seed s of the other only to form
differences; the spread of those differences carries the noise of both.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from saelib.files import atomic_write_json, read_json
from saelib.lab.paths import output_dir

KEPT = ("point", "seed", "label", "sparsity_coeff", "k", "l0", "delta_lm_loss", "fvu")
METRICS = ("l0", "delta_lm_loss", "fvu")


def frontier_path(notebook: str, scale: str) -> Path:
    return output_dir(scale) / "frontiers" / f"{notebook}.json"


def save_frontiers(notebook: str, scale: str, rows: Mapping[str, Sequence[Mapping]]) -> Path:
    """Record each family's frontier rows (one per SAE: point, seed, L0, delta LM loss, FVU) for the comparison
    across scales. `rows`: family -> the rows of `RunResult.row()`."""
    path = frontier_path(notebook, scale)
    frontiers = {fam: [{k: r[k] for k in KEPT if k in r} for r in fam_rows] for fam, fam_rows in rows.items()}
    atomic_write_json(path, {"notebook": notebook, "scale": scale, "frontiers": frontiers})
    return path


def load_frontiers(notebook: str, scale: str) -> dict[str, list[dict]] | None:
    """family -> rows, as `save_frontiers` wrote them; None when the notebook has not run at that scale."""
    path = frontier_path(notebook, scale)
    return read_json(path)["frontiers"] if path.exists() else None


def judge_frontier_moves(base_rows: Sequence[Mapping], other_rows: Sequence[Mapping], metric: str = "delta_lm_loss",
                         what: str = ""):
    """The `other` frontier against the `base` one at equal L0 (3 L0s spread over the range both cover), seed s
    matched with seed s, judged "equivalent" (margin 2 x pooled seed sd): holds = the frontier has not moved."""
    from saelib.lab.pareto import judge, paired_at_equal_l0

    return judge(paired_at_equal_l0(other_rows, base_rows, metric), "equivalent", what=what)


def plot_frontiers_across_scales(frontiers: Mapping[str, Mapping[str, Sequence[Mapping]]], name: str,
                                 figure_scale: str, metric: str = "delta_lm_loss") -> Path:
    """One panel per family (the families present at every scale): each scale's frontier, mean ± sd over seeds,
    in the order given (solid circles, then dashed squares). `frontiers`: scale label -> family -> rows."""
    from saelib.lab.pareto import seed_summary
    from saelib.lab.plotting import color_for, new_figure, plot_frontier, save_figure

    labels = list(frontiers)
    families = [f for f in frontiers[labels[0]] if all(f in frontiers[s] for s in labels)]
    fig, axes = new_figure(ncols=len(families), width=3.0)
    for i, (ax, fam) in enumerate(zip(axes if len(families) > 1 else [axes], families, strict=True)):
        for j, label in enumerate(labels):
            summary = [dict(s, label=label) for s in seed_summary(frontiers[label][fam], list(METRICS))]
            plot_frontier(ax, summary, x="l0", y=metric, logx=True, logy=True, marker="os"[j % 2],
                          linestyle=("-", "--")[j % 2], colors={label: color_for(fam, i)})
        ax.set_title(fam)
        ax.legend(fontsize=6)
    return save_figure(fig, name, scale=figure_scale)


def compare_frontiers_across_scales(notebook: str, base: str, other: str) -> tuple[Path, list] | None:
    """Figure `<NN>_frontiers_<base>_vs_<other>` (written beside the base scale's figures) and, per family, the
    result of `judge_frontier_moves` (delta LM loss); None unless the notebook recorded frontiers at both scales."""
    from saelib.lab.scales import get_scale

    a, b = load_frontiers(notebook, base), load_frontiers(notebook, other)
    if a is None or b is None:
        return None
    steps = {s: get_scale(s).train_steps for s in (base, other)}
    label = {s: f"{s} ({steps[s]} steps)" for s in (base, other)}
    figure = plot_frontiers_across_scales({label[base]: a, label[other]: b},
                                          f"{notebook[:2]}_frontiers_{base}_vs_{other}", figure_scale=base)
    results = [(fam, judge_frontier_moves(a[fam], b[fam], what=f"delta LM loss, {fam} at {other} vs {base}"))
               for fam in a if fam in b]
    return figure, results
