"""saelib.lab.timing: per-notebook time per category, written atomically; the run_all.sh table."""
import json

import pytest

from saelib.lab import timing


@pytest.fixture
def outputs(tmp_path, monkeypatch):
    monkeypatch.setenv("SAELIB_OUTPUT_DIR", str(tmp_path))
    monkeypatch.setattr(timing, "_totals", {})
    return tmp_path


def test_nothing_is_recorded_outside_a_notebook_run(outputs, monkeypatch):
    monkeypatch.delenv(timing.ENV, raising=False)
    with timing.timed("sae_training", scale="smoke", saes=1, tokens=100):
        pass
    assert not (outputs / "smoke" / "timing").exists()


def test_records_accumulate_per_notebook_and_the_table_sums_them(outputs, monkeypatch):
    monkeypatch.setenv(timing.ENV, "01_x")
    timing.record("sae_training", 6.0, scale="smoke", saes=1, tokens=3000)
    timing.record("sae_training", 4.0, scale="smoke", saes=1, tokens=3000)
    timing.record("plotting", 1.0, scale="smoke")
    monkeypatch.setenv(timing.ENV, "02_y")
    timing.record("activation_extraction", 5.0, scale="smoke")
    saved = json.loads((outputs / "smoke" / "timing" / "01_x.json").read_text())
    assert saved["saes_trained"] == 2 and saved["sae_tokens"] == 6000
    assert saved["seconds"] == {"sae_training": 10.0, "activation_extraction": 0.0, "lm_evaluation": 0.0,
                                "plotting": 1.0, "waiting": 0.0}
    text = timing.table("smoke", {"01_x": 20.0, "02_y": 10.0, "03_none": 5.0})
    rows = {line.split()[0]: line.split() for line in text.splitlines()[2:]}
    assert rows["01_x"][1:4] == ["20", "2", "300"]                   # 6000 tokens / 20 s
    assert rows["01_x"][4] == "50.0%" and rows["01_x"][7] == "5.0%" and rows["01_x"][9] == "45.0%"
    assert rows["03_none"][2] == "0"
    assert rows["total"][1:4] == ["35", "2", "171"] and rows["total"][5] == "14.3%"


def test_unknown_category_is_refused(outputs, monkeypatch):
    monkeypatch.setenv(timing.ENV, "01_x")
    with pytest.raises(ValueError, match="category"):
        timing.record("training", 1.0, scale="smoke")


def test_cli_prints_the_table(outputs, monkeypatch, capsys):
    monkeypatch.setenv(timing.ENV, "01_x")
    timing.record("lm_evaluation", 2.0, scale="smoke")
    timing.main(["--scale", "smoke", "--wall", "01_x=4"])
    out = capsys.readouterr().out
    assert "01_x" in out and "50.0%" in out and "total" in out


def test_elapsed_row_for_notebooks_run_side_by_side(outputs, monkeypatch):
    monkeypatch.setenv(timing.ENV, "01_x")
    timing.record("sae_training", 8.0, scale="smoke", saes=1, tokens=4000)
    timing.record("waiting", 2.0, scale="smoke")
    text = timing.table("smoke", {"01_x": 10.0, "02_y": 10.0}, elapsed=12.0, lanes=2)
    lines = text.splitlines()
    assert lines[-2].startswith("sum over notebooks") and lines[-2].split()[3:6] == ["20", "1", "200"]
    assert lines[-1].split()[:6] == ["elapsed", "(2", "at", "a", "time)", "12"]
    assert lines[-1].split()[6:] == ["1", "333"]                   # 4000 tokens / 12 s elapsed
    assert lines[2].split()[8] == "20.0%"                           # the waiting column
