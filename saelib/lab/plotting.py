"""Shared plotting helpers: one look for every figure, one way to save it.

    fig, ax = new_figure()                                   # the shared style, applied once
    plot_frontier(ax, rows, x="l0", y="delta_lm_loss", logx=True)   # axis labels in words with units;
                                                             # error bars where rows carry <metric>_sd
    save_figure(fig, "08_pareto", scale=scale)               # figures/08_pareto.png/.pdf, byte-stable
    plot_frequency_histogram(ax, metrics["feature_frequencies"], label="jumprelu", n_tokens=32768)

Metric names are snake_case in the code and in tables; on a figure they appear as words with units through
`label_for` (METRIC_LABELS). Rows averaged over seeds by saelib.lab.pareto.seed_summary carry `<metric>_sd`,
which plot_frontier draws as error bars (mean ± 1 sd). `log_axis` sets a log scale whose ticks are plain
numbers and never collide.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt

from saelib.files import atomic_write
from saelib.lab.paths import REPO_ROOT, figures_dir

# one colour per family, used by every figure
COLORS = {
    "standard": "#1f77b4", "relu": "#1f77b4", "april_update": "#17becf",
    "gated": "#d62728", "jumprelu": "#2ca02c", "topk": "#9467bd",
}
_CYCLE = plt.rcParams["axes.prop_cycle"].by_key()["color"]

# The shared style (applied by new_figure): small, paper-like figures that read the same in every notebook.
STYLE: dict[str, Any] = {
    "font.size": 8.5, "axes.titlesize": 9, "axes.labelsize": 8.5, "legend.fontsize": 7,
    "xtick.labelsize": 7.5, "ytick.labelsize": 7.5, "axes.spines.top": False, "axes.spines.right": False,
    "axes.grid": True, "grid.alpha": 0.3, "grid.linewidth": 0.6, "lines.linewidth": 1.4, "lines.markersize": 4,
    "legend.frameon": False, "errorbar.capsize": 2, "figure.dpi": 100, "savefig.dpi": 130,
    "pdf.fonttype": 42, "svg.hashsalt": "saelib",            # deterministic SVG ids, embedded TrueType in PDF
}

# snake_case metric -> what a reader sees on an axis (words, with units)
METRIC_LABELS: dict[str, str] = {
    "l0": "L0 (active latents per token)",
    "fvu": "FVU (fraction of variance unexplained)",
    "mse": "MSE per dimension",
    "explained_variance": "explained variance (1 − FVU)",
    "cosine_similarity": "cos(x, x̂)",
    "delta_lm_loss": "ΔLM loss (nats/token)",
    "loss_recovered": "loss recovered (fraction)",
    "ce_clean": "LM loss, clean (nats/token)",
    "ce_sae": "LM loss, SAE spliced in (nats/token)",
    "ce_zero": "LM loss, zero-ablated (nats/token)",
    "gamma": "γ, relative reconstruction bias",
    "gamma_v1": "γ_v1 (first version's eq. 10)",
    "relative_reconstruction_bias": "γ, relative reconstruction bias",
    "relative_reconstruction_bias_v1": "γ_v1 (first version's eq. 10)",
    "dead_fraction": "dead latents (fraction)",
    "dense_fraction": "dense latents (fraction, > 10% of tokens)",
    "n_dead": "dead latents (count)",
    "n_dense": "dense latents (count, > 10% of tokens)",
    "dead_features": "dead latents (count)",
    "dense_features": "dense latents (count, > 10% of tokens)",
    "shrinkage": "shrinkage |1 − γ|",
    "gamma_gap": "γ_v1 − γ (first version's error)",
    "log_threshold": "log threshold log θ",
    "pi_gate": "gate pre-activation π_gate",
    "activation": "latent activation f",
    "decoder_norm": "decoder norm ‖W_dec[:, i]‖",
    "latents": "latents (count)",
    "sparsity_ratio": "λ / final λ",
    "l0_batch": "L0 on the training batch (active latents per token)",
    "ste_over_fd": "STE / finite difference (ratio)",
    "correlation": "correlation across latents",
    "slope": "slope of STE on finite difference",
    "step_snr": "signal-to-noise of one step (median |mean| / rms)",
    "feature_recovery": "feature recovery (mean max cosine)",
    "true_l0": "true L0 (active features per sample)",
    "sparsity_coeff": "sparsity coefficient λ",
    "k": "k (latents kept per token)",
    "batch_size": "batch size (tokens)",
    "lr": "learning rate",
    "tokens": "training tokens",
    "step": "training step",
    "bandwidth": "bandwidth ε",
    "theta": "threshold θ",
    "accuracy": "accuracy",
    "train_accuracy": "train accuracy",
    "test_accuracy": "test accuracy",
    "label_purity": "label purity of top activations",
    "purity_lift": "purity above the base rate",
    "objective": "held-out training objective\n(reconstruction + λ · sparsity)",
    "median_theta": "threshold θ at the end (median over latents)",
    "active_features": "active latents (count)",
    "probe_accuracy": "probe test accuracy",
    "median_decoder_norm": "decoder row norm ‖W_dec[i]‖ (median over latents)",
}


def label_for(name: str) -> str:
    """The axis label for a metric name: METRIC_LABELS, else the name with spaces for underscores."""
    return METRIC_LABELS.get(name, str(name).replace("_", " "))


def use_style() -> None:
    """Apply the shared style (idempotent); new_figure calls it."""
    plt.rcParams.update(STYLE)  # type: ignore[arg-type]


def color_for(name: str, index: int = 0) -> str:
    return COLORS.get(str(name).split(" ")[0].split("+")[0].lower(), _CYCLE[index % len(_CYCLE)])


def new_figure(ncols: int = 1, nrows: int = 1, width: float = 4.6, height: float = 3.4, **kwargs):
    use_style()
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False,
                             constrained_layout=True, **kwargs)
    for ax in axes.flat:
        ax.grid(True, alpha=0.3)
    return fig, (axes[0, 0] if ncols * nrows == 1 else axes.flatten())


class FigurePath(type(Path())):  # type: ignore[misc]
    """The path of a saved figure; shows as the path relative to the repository (no PosixPath(...) repr,
    no machine-specific prefix) when a notebook cell ends with save_figure(...)."""

    def __repr__(self) -> str:
        return f"saved {display_path(self)}"


def display_path(path: str | Path) -> str:
    """`path` relative to the repository root when it lies inside it, else as given (a str, never a repr)."""
    path = Path(path)
    try:
        return path.resolve().relative_to(REPO_ROOT).as_posix()
    except ValueError:
        return path.as_posix()


# Metadata that would change on every save: creation dates (PDF) and the software string (PNG).
PDF_METADATA = {"CreationDate": None, "ModDate": None}
PNG_METADATA = {"Software": None}


def save_figure(fig, name: str, scale: str = "default", pdf: bool = True) -> Path:
    """Write figures/<name>.png (and .pdf) — or outputs/smoke/figures/ at smoke scale — and return the PNG path.

    The files carry no dates or version strings, so the same figure gives the same bytes on every run."""
    from saelib.lab.timing import timed

    out = figures_dir(scale)
    out.mkdir(parents=True, exist_ok=True)
    png = out / f"{name}.png"
    with timed("plotting", scale=scale):        # atomically (saelib.files): a crash never leaves half a figure
        atomic_write(png, lambda tmp: fig.savefig(tmp, dpi=130, format="png", metadata=PNG_METADATA))
        if pdf:
            atomic_write(out / f"{name}.pdf", lambda tmp: fig.savefig(tmp, format="pdf", metadata=PDF_METADATA))
    return FigurePath(png)


def plain_log_ticks(axis, span_decades: float | None = None) -> None:
    """Plain-number labels ("2", "50", "0.01") on a log-scaled axis, no minor labels, and few enough major
    ticks that labels never collide: 1-2-5 per decade below 2.5 decades, 1-3 up to 5 decades, powers of ten
    beyond (matplotlib's default labels minor ticks "2x10^0" when the data span little, and its 1-2-5 labels
    run into each other over many decades). `span_decades` defaults to the axis's current view."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    if span_decades is None:
        low, high = sorted(axis.get_view_interval())
        span_decades = math.log10(high / low) if low > 0 and high > 0 else 1.0
    subs = (1.0, 2.0, 5.0) if span_decades <= 2.5 else (1.0, 3.0) if span_decades <= 5 else (1.0,)
    axis.set_major_locator(LogLocator(base=10, subs=subs))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def log_axis(ax, which: str = "x") -> None:
    """Log scale on `which` ("x", "y" or "both") with plain, non-colliding tick labels (call after plotting)."""
    if which not in ("x", "y", "both"):
        raise ValueError(f"which={which!r} is not allowed; allowed: 'x', 'y', 'both'")
    for name in ("x", "y") if which == "both" else (which,):
        getattr(ax, f"set_{name}scale")("log")
        plain_log_ticks(getattr(ax, f"{name}axis"))


def count_axis(ax, which: str = "y") -> None:
    """A symmetric-log axis for counts that run from 0 to hundreds (dead or dense latents): linear below 1, log
    above, starting at 0, ticks 0, 1, 3, 10, 30, ... with plain labels (call after plotting)."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    if which not in ("x", "y"):
        raise ValueError(f"which={which!r} is not allowed; allowed: 'x', 'y'")
    getattr(ax, f"set_{which}scale")("symlog", linthresh=1, linscale=0.4)
    low, high = getattr(ax, f"get_{which}lim")()
    top = max(high, 1.0) * 1.2                                   # headroom above the largest count
    ticks = [0.0] + [m * 10 ** e for e in range(0, int(math.log10(top)) + 2) for m in (1, 3) if m * 10 ** e <= top]
    getattr(ax, f"set_{which}lim")(0, top)
    axis = getattr(ax, f"{which}axis")
    axis.set_major_locator(FixedLocator(ticks))
    axis.set_minor_locator(NullLocator())
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def plot_frontier(ax, rows: Iterable[Mapping], x: str, y: str, group: str = "label",
                  logx: bool = False, logy: bool = False, marker: str = "o", annotate: str | None = None,
                  errors: bool = True, linestyle: str = "-", colors: Mapping[str, str] | None = None):
    """One line per group through the (x, y) points of `rows` (dicts), sorted by x (`linestyle` and `marker`
    tell apart two sets of the same groups, e.g. two budgets). Colours come from color_for (a family's own colour,
    else the cycle), or from `colors` (group name -> colour) for the groups it names.

    With `errors`, rows that carry `<y>_sd` (and/or `<x>_sd`), e.g. from saelib.lab.pareto.seed_summary, get
    error bars of ± 1 sd. Axis labels come from label_for (words with units)."""
    groups: dict[str, list[Mapping]] = {}
    for row in rows:
        groups.setdefault(str(row[group]), []).append(row)
    for i, (name, pts) in enumerate(groups.items()):
        pts = sorted(pts, key=lambda r: r[x])
        xs, ys = [p[x] for p in pts], [p[y] for p in pts]
        color = (colors or {}).get(name) or color_for(name, i)
        yerr = [p.get(f"{y}_sd") for p in pts] if errors else []
        xerr = [p.get(f"{x}_sd") for p in pts] if errors else []
        has_y, has_x = any(_finite(e) for e in yerr), any(_finite(e) for e in xerr)
        if has_y or has_x:
            ax.errorbar(xs, ys, yerr=[e if _finite(e) else 0.0 for e in yerr] if has_y else None,
                        xerr=[e if _finite(e) else 0.0 for e in xerr] if has_x else None,
                        marker=marker, label=name, color=color, ls=linestyle)
        else:
            ax.plot(xs, ys, marker=marker, label=name, color=color, ls=linestyle)
        if annotate:
            for p in pts:
                ax.annotate(f"{p[annotate]:.3g}", (p[x], p[y]), fontsize=6, alpha=0.7)
    ax.set_xlabel(label_for(x))
    ax.set_ylabel(label_for(y))
    if logx:
        log_axis(ax, "x")
    if logy:
        log_axis(ax, "y")
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
    ax.set_xlabel("log10 latent frequency (fraction of tokens)")
    ax.set_ylabel("latents")
    ax.legend(fontsize=7)
    return counts


def plot_gaps(ax, gaps: Mapping[str, Any], margins: Mapping[str, float] | None = None, ylabel: str | None = None,
              zero_label: str = "reference"):
    """What an "at equal L0" claim tests: each variant's paired gap to a reference frontier.

    `gaps` maps a label to a list of saelib.lab.verdicts.Paired (one per compared L0, e.g. from
    saelib.lab.pareto.paired_at_points): each seed's difference (log ratio, or plain difference) is a small dot,
    the mean ± sd over seeds a marker with error bars (no bar with one seed). A line marks 0 (the reference);
    `margins` (label -> margin, or a list with one per compared L0) draws an equivalence band ± margin around 0
    behind that variant. The x axis lists the variants (and the L0 of each compared point)."""
    ticks, names = [], []
    for i, (name, paired) in enumerate(gaps.items()):
        for j, p in enumerate(paired):
            xpos = i + (j - (len(paired) - 1) / 2) * 0.25
            diffs = p.differences
            color = _CYCLE[i % len(_CYCLE)]                      # one colour per variant (pairs may share a family)
            ax.scatter([xpos] * len(diffs), diffs, s=9, color=color, alpha=0.45, zorder=2)
            mean = sum(diffs) / len(diffs)
            sd = p.sd if len(diffs) > 1 and _finite(p.sd) else None
            ax.errorbar([xpos], [mean], yerr=None if sd is None else [sd], marker="o", color=color, ls="none",
                        zorder=3, ms=5)
            m = (margins or {}).get(name)
            m = m[j] if isinstance(m, (list, tuple)) else m                  # one margin per compared L0, or one
            if m is not None and _finite(m):
                ax.fill_between([xpos - 0.12, xpos + 0.12], [-m, -m], [m, m], color="0.5", alpha=0.18, lw=0,
                                zorder=1)
        ticks.append(i)
        l0s = ", ".join(f"{p.l0:.1f}" for p in paired)
        names.append(f"{name}\n(L0 {l0s})" if paired else f"{name}\n(not compared)")
    ax.axhline(0.0, color="k", lw=0.9, ls="-", zorder=1, label=zero_label)
    ax.set_xticks(ticks, names, rotation=30, ha="right", fontsize=6.5)
    ax.set_xlim(-0.6, len(ticks) - 0.4)
    log = any(p.log_ratio for paired in gaps.values() for p in paired)
    ax.set_ylabel(ylabel or ("gap to the reference at equal L0\n(log ratio; < 0: better)" if log
                             else "gap to the reference at equal L0\n(difference; < 0: better)"))
    return ax
