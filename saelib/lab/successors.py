"""The successor recipes of notebook 10 as frontier specs, in one place so that notebooks 08 and 10 train (and
cache) exactly the same SAEs: whichever notebook runs first trains them, the other loads them.

    specs = successor_specs(site, n_points=3)        # {"batchtopk": [...], "jumprelu 2025": [...], ...}
    protocol = successor_protocol(protocol)           # BatchTopK trains at TopK's learning rate

BatchTopK (Bussmann, Leask & Nanda 2024, arXiv 2412.06410) sweeps the central k values of the shared TopK
frontier; Anthropic's January-2025 JumpReLU recipe (tanh penalty, pre-activation loss, straight-through gradients
into the encoder) sweeps lambda_S over `tanh_range`; Gemma Scope 2's quadratic L0 penalty sweeps its target L0*
(by default over the same k values) at one lambda.
"""
from __future__ import annotations

from collections.abc import Sequence

from saelib.lab.experiments import SAESpec, coefficient_grid, default_max_k, frontier_specs, middle_points

# one colour per successor recipe (the 2024 families keep saelib.lab.plotting.COLORS)
SUCCESSOR_COLORS = {"batchtopk": "#ff7f0e", "jumprelu 2025": "#8c564b", "jumprelu quadratic": "#e377c2"}


def successor_ks(site, n_points: int, sweep_points: int | None = None) -> list[int]:
    """The n_points central k values of the shared TopK frontier on `site` (what BatchTopK sweeps)."""
    topk = frontier_specs("topk", sweep_points or site.scale.sweep_points, max_k=default_max_k(site))
    return [s.options["k"] for s in middle_points(topk, n_points)]


def successor_specs(site, n_points: int = 3, *, tanh_range: Sequence[float] = (1e-3, 3e-2), tanh_scale: float = 4.0,
                    pre_act_loss_coeff: float = 3e-6, target_l0s: Sequence[float] | None = None,
                    quadratic_coeff: float = 0.01, sweep_points: int | None = None) -> dict[str, list[SAESpec]]:
    """The three successor frontiers (label -> specs), notebook 10's defaults."""
    ks = successor_ks(site, n_points, sweep_points)
    low, high = tanh_range
    return {
        "batchtopk": [SAESpec("batchtopk", 0.0, {"k": k}, label="batchtopk") for k in ks],
        "jumprelu 2025": [SAESpec("jumprelu", c, {"sparsity_mode": "tanh", "tanh_scale": tanh_scale,
                                                  "encoder_ste": True, "pre_act_loss_coeff": pre_act_loss_coeff},
                                  label="jumprelu 2025")
                          for c in coefficient_grid(low, high, n_points)],
        "jumprelu quadratic": [SAESpec("jumprelu", quadratic_coeff, {"sparsity_mode": "quadratic",
                                                                     "target_l0": float(t)},
                                       label="jumprelu quadratic") for t in (target_l0s or ks)],
    }


def successor_protocol(protocol):
    """`protocol` with BatchTopK at TopK's learning rate (BatchTopK has no sweep of its own: it differs from TopK
    only in where the top-k is taken)."""
    return protocol.with_(lrs={**dict(protocol.lrs), "batchtopk": protocol.lr_for("topk")})


def plot_successor_frontiers(ax, rows, y: str, x: str = "l0", logy: bool = True):
    """The successor frontiers (rows from `sweep(...).row()`, one seed) on `ax`: dashed, square markers, each in
    its SUCCESSOR_COLORS colour, on top of whatever the axes already show (e.g. the 2024 families)."""
    from saelib.lab.plotting import plot_frontier

    before = len(ax.lines)
    plot_frontier(ax, rows, x=x, y=y, logx=True, logy=logy, marker="s")
    for line in ax.lines[before:]:
        line.set_color(SUCCESSOR_COLORS.get(line.get_label(), "k"))
        line.set_linestyle("--")
    ax.legend(fontsize=7)
    return ax
