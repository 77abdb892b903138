import matplotlib

matplotlib.use("Agg")

import numpy as np

from saelib.lab.plotting import new_figure, plot_frequency_histogram


def test_frequency_histogram_counts_alive_features_and_names_the_dead():
    freqs = [0.0, 0.0, 0.0, 1e-3, 1e-3, 0.02, 0.5]          # 3 dead, 4 alive
    fig, ax = new_figure()
    counts = plot_frequency_histogram(ax, freqs, label="relu", n_tokens=10_000, bins=20)
    assert counts.sum() == 4
    assert "3 dead" in ax.get_legend().get_texts()[0].get_text()
    assert ax.get_xlim()[0] <= np.log10(1e-4)                # axis starts at the rarest measurable frequency


def test_frequency_histogram_with_only_dead_features_draws_an_empty_histogram():
    fig, ax = new_figure()
    counts = plot_frequency_histogram(ax, np.zeros(8), label="gated", n_tokens=100)
    assert counts.sum() == 0
    assert "8 dead" in ax.get_legend().get_texts()[0].get_text()


def test_frequency_histogram_without_n_tokens_starts_at_the_rarest_feature():
    fig, ax = new_figure()
    counts = plot_frequency_histogram(ax, [1e-5, 0.3], label="topk", bins=5)
    assert counts.sum() == 2
    assert counts[0] == 1 and counts[-1] == 1


def test_log_x_frontier_labels_ticks_as_plain_numbers():
    from saelib.lab.plotting import plot_frontier

    fig, ax = new_figure()
    rows = [{"label": "relu", "l0": 1.4, "fvu": 0.5}, {"label": "relu", "l0": 53.0, "fvu": 0.03}]
    plot_frontier(ax, rows, x="l0", y="fvu", logx=True)
    fig.canvas.draw()
    labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    assert {"2", "5", "10", "20", "50"} <= set(labels)
    assert not [t.get_text() for t in ax.xaxis.get_minorticklabels() if t.get_text()]


def test_frontier_colors_override_the_family_colour_for_the_groups_they_name():
    from matplotlib.colors import to_hex

    from saelib.lab.plotting import COLORS, plot_frontier

    fig, ax = new_figure()
    rows = [{"label": name, "l0": l0, "fvu": 0.1 / l0} for name in ("gated", "gated variant") for l0 in (2, 8)]
    plot_frontier(ax, rows, x="l0", y="fvu", colors={"gated variant": "#ff7f0e"})
    colors = {line.get_label(): to_hex(line.get_color()) for line in ax.get_lines()}
    assert colors == {"gated": COLORS["gated"], "gated variant": "#ff7f0e"}
