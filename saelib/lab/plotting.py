"""Shared plotting helpers: one look for every figure, one way to save it.

    fig, ax = new_figure()
    plot_frontier(ax, rows, x="l0", y="delta_lm_loss", group="label")
    save_figure(fig, "08_pareto_delta_lm_loss", scale=scale)     # figures/08_pareto_delta_lm_loss.png/.pdf
    plot_frequency_histogram(ax, metrics["feature_frequencies"], label="jumprelu", n_tokens=32768)
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Mapping

import matplotlib.pyplot as plt

from saelib.files import atomic_write
from saelib.lab.paths import figures_dir

# one colour per family, used by every figure
COLORS = {
    "standard": "#1f77b4", "relu": "#1f77b4", "april_update": "#17becf",
    "gated": "#d62728", "jumprelu": "#2ca02c", "topk": "#9467bd",
}
_CYCLE = plt.rcParams["axes.prop_cycle"].by_key()["color"]


def color_for(name: str, index: int = 0) -> str:
    return COLORS.get(str(name).split(" ")[0].split("+")[0].lower(), _CYCLE[index % len(_CYCLE)])


def new_figure(ncols: int = 1, nrows: int = 1, width: float = 4.6, height: float = 3.4, **kwargs):
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False,
                             constrained_layout=True, **kwargs)
    for ax in axes.flat:
        ax.grid(True, alpha=0.3)
    return fig, (axes[0, 0] if ncols * nrows == 1 else axes.flatten())


def save_figure(fig, name: str, scale: str = "default", pdf: bool = True) -> Path:
    """Write figures/<name>.png (and .pdf) — or outputs/smoke/figures/ at smoke scale — and return the PNG path."""
    out = figures_dir(scale)
    out.mkdir(parents=True, exist_ok=True)
    png = out / f"{name}.png"
    atomic_write(png, lambda tmp: fig.savefig(tmp, dpi=130, format="png"))     # never half a figure
    if pdf:
        atomic_write(out / f"{name}.pdf", lambda tmp: fig.savefig(tmp, format="pdf"))
    return png


def plain_log_ticks(axis) -> None:
    """Ticks at 1, 2, 5 x 10^n labelled as plain numbers ("2", "50") on a log-scaled axis, no minor labels
    (matplotlib's default labels every minor tick "2x10^0" when the data span less than a decade or two)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def plot_frontier(ax, rows: Iterable[Mapping], x: str, y: str, group: str = "label",
                  logx: bool = False, logy: bool = False, marker: str = "o", annotate: str | None = None):
    """One line per group through the (x, y) points of `rows` (dicts), sorted by x."""
    groups: dict[str, list[Mapping]] = {}
    for row in rows:
        groups.setdefault(str(row[group]), []).append(row)
    for i, (name, pts) in enumerate(groups.items()):
        pts = sorted(pts, key=lambda r: r[x])
        ax.plot([p[x] for p in pts], [p[y] for p in pts], marker=marker, label=name, color=color_for(name, i))
        if annotate:
            for p in pts:
                ax.annotate(f"{p[annotate]:.3g}", (p[x], p[y]), fontsize=6, alpha=0.7)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    if logx:
        ax.set_xscale("log")
        plain_log_ticks(ax.xaxis)
    if logy:
        ax.set_yscale("log")
    ax.legend(fontsize=7)
    return ax


def plot_frequency_histogram(ax, frequencies, label: str, n_tokens: int | None = None, bins: int = 40,
                             dense_threshold: float = 0.1):
    """Histogram of log10 feature frequencies (fraction of tokens on which each feature fires), one step line.

    Dead features (frequency 0) have no logarithm: they are counted in the legend instead. With `n_tokens`
    (the tokens the frequencies were measured on) the axis starts at the rarest measurable frequency
    1 / n_tokens. A dotted line marks the dense threshold. Returns the bin counts (alive features only).
    """
    import numpy as np

    freq = np.asarray(frequencies, dtype=float)                    # [d_sae]
    alive = np.log10(freq[freq > 0])
    low = math.log10(1.0 / n_tokens) if n_tokens else (alive.min() if alive.size else -6.0)
    edges = np.linspace(min(low, alive.min(initial=low)) - 1e-9, 0.0, bins + 1)
    counts, _, _ = ax.hist(alive, bins=edges, histtype="step", lw=1.5, color=color_for(label),
                           label=f"{label}: {int((freq == 0).sum())} dead")
    ax.axvline(math.log10(dense_threshold), color="k", ls=":", lw=0.8)
    ax.set_xlabel("log10 feature frequency")
    ax.set_ylabel("features")
    ax.legend(fontsize=7)
    return counts
