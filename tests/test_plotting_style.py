"""The shared figure style: labels in words, error bars from seed summaries, byte-stable files."""
import matplotlib

matplotlib.use("Agg")

import hashlib  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

from saelib.lab.plotting import (  # noqa: E402
    FigurePath,
    label_for,
    log_axis,
    new_figure,
    plot_frontier,
    save_figure,
)

_SCRIPT = """
import matplotlib; matplotlib.use("Agg")
from saelib.lab.plotting import new_figure, plot_frontier, save_figure
fig, ax = new_figure()
plot_frontier(ax, [{"label": "gated", "l0": 5, "fvu": 0.2}, {"label": "gated", "l0": 50, "fvu": 0.02}], "l0", "fvu",
              logx=True)
save_figure(fig, "stable", scale="default")
"""


def test_metric_names_become_words_with_units():
    assert label_for("delta_lm_loss") == "ΔLM loss (nats/token)"
    assert label_for("l0") == "L0 (active latents per token)"
    assert label_for("some_new_metric") == "some new metric"


def test_frontier_uses_word_labels_and_draws_seed_error_bars():
    fig, ax = new_figure()
    rows = [{"label": "gated", "l0": 5.0, "fvu": 0.2, "fvu_sd": 0.01},
            {"label": "gated", "l0": 50.0, "fvu": 0.02, "fvu_sd": 0.002}]
    plot_frontier(ax, rows, x="l0", y="fvu", logx=True)
    assert ax.get_xlabel() == label_for("l0") and ax.get_ylabel() == label_for("fvu")
    assert ax.containers, "rows with fvu_sd should be drawn with error bars"


def test_log_axis_over_many_decades_keeps_one_tick_per_decade():
    fig, ax = new_figure()
    ax.plot([1e-4, 1e2], [1, 2])
    log_axis(ax, "x")
    fig.canvas.draw()
    labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    assert "0.001" in labels and "10" in labels and "2" not in labels and "5" not in labels


def test_saved_figures_are_byte_identical_across_processes(tmp_path, monkeypatch):
    digests = []
    for i in range(2):
        out = tmp_path / str(i)
        env = {"SAELIB_FIGURES_DIR": str(out), "PATH": "/usr/bin:/bin"}
        subprocess.run([sys.executable, "-c", _SCRIPT], check=True, env=env, timeout=120)
        digests.append({p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.iterdir())})
    assert set(digests[0]) == {"stable.png", "stable.pdf"}
    assert digests[0] == digests[1]


def test_save_figure_returns_a_path_that_prints_readably(tmp_path, monkeypatch):
    monkeypatch.setenv("SAELIB_FIGURES_DIR", str(tmp_path))
    fig, ax = new_figure()
    path = save_figure(fig, "x", scale="default", pdf=False)
    assert isinstance(path, FigurePath) and path.exists()
    assert "PosixPath" not in repr(path) and repr(path).startswith("saved ")


def test_count_axis_is_symlog_from_zero_with_plain_ticks():
    import pytest

    from saelib.lab.plotting import count_axis

    fig, ax = new_figure()
    ax.plot([1, 2, 3], [0, 4, 250])
    count_axis(ax, "y")
    assert ax.get_yscale() == "symlog" and ax.get_ylim()[0] == 0 and ax.get_ylim()[1] >= 250
    assert [t.get_text() for t in ax.get_yticklabels()][:4] == ["0", "1", "3", "10"]
    with pytest.raises(ValueError, match="which"):
        count_axis(ax, "z")
