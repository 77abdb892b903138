"""plotting.plot_gaps: the paired gaps an equal-L0 claim tests, per variant, with seeds, mean ± sd and a zero line."""
import matplotlib

matplotlib.use("Agg")

from saelib.lab.plotting import new_figure, plot_gaps  # noqa: E402
from saelib.lab.verdicts import Paired  # noqa: E402


def test_plot_gaps_draws_seeds_means_zero_and_margins():
    gaps = {"a": [Paired(3.0, (0, 1, 2), (1.0, 1.1, 1.2), (1.0, 1.0, 1.0), True)],
            "b": [Paired(2.0, (0,), (2.0,), (1.0,), True)],            # one seed: a dot, no error bar
            "c": []}                                                     # not compared
    fig, ax = new_figure()
    plot_gaps(ax, gaps, margins={"a": 0.2})
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels[0].startswith("a\n(L0 3.0") and labels[2] == "c\n(not compared)"
    assert any(list(line.get_ydata()) == [0.0, 0.0] for line in ax.lines)          # the zero line
    assert "log ratio" in ax.get_ylabel()
    assert len(ax.collections) >= 3                 # seed dots of a and b, a's margin band
