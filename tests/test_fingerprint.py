"""The run cache key follows the library code (saelib.lab.fingerprint), force_retrain retrains once per
process, and Settings prints as one readable line."""
from types import SimpleNamespace

import pytest

from saelib.lab import experiments
from saelib.lab.fingerprint import code_files, code_fingerprint, normalized_source
from saelib.lab.scales import get_scale

CODE = '''
def f(x):
    """Doc."""
    # a comment
    return x + 1
'''


def test_docstrings_comments_and_layout_do_not_count_but_code_does():
    same = CODE.replace('"""Doc."""', '"""Another docstring."""').replace("# a comment", "# other").replace(
        "return x + 1", "return (x\n            + 1)")
    assert normalized_source(same) == normalized_source(CODE)
    assert normalized_source(CODE.replace("x + 1", "x + 2")) != normalized_source(CODE)


def test_fingerprint_covers_models_fast_training_and_metrics_only():
    names = {p.relative_to(p.parents[1]).as_posix() for p in code_files()}
    assert {"models/gated.py", "models/jumprelu.py", "training/loop.py", "eval/metrics.py"} <= names
    assert not any(n.startswith("lab/") or n.endswith("checkpoint.py") for n in names)


def test_fingerprint_changes_with_the_code(tmp_path):
    (tmp_path / "models").mkdir()
    module = tmp_path / "models" / "relu.py"
    module.write_text(CODE)
    before = code_fingerprint(tmp_path)
    module.write_text(CODE.replace('"""Doc."""', '"""Edited doc."""'))
    code_fingerprint.cache_clear()
    assert code_fingerprint(tmp_path) == before
    module.write_text(CODE.replace("x + 1", "x - 1"))
    code_fingerprint.cache_clear()
    assert code_fingerprint(tmp_path) != before
    code_fingerprint.cache_clear()


def test_run_key_includes_the_code_fingerprint(monkeypatch):
    site = SimpleNamespace(key={"synthetic": {}, "seed": 0})
    spec = experiments.SAESpec("gated", 0.1)
    cfg = experiments.train_config(spec, get_scale("smoke"))
    key = experiments.run_key(site, spec, cfg)
    monkeypatch.setattr("saelib.lab.fingerprint.code_fingerprint", lambda *a: "0123456789abcdef")
    assert experiments.run_key(site, spec, cfg) != key


def test_force_retrain_retrains_each_run_once_per_process(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SAELIB_OUTPUT_DIR", str(tmp_path))
    site = experiments.SyntheticSite(get_scale("smoke", train_steps=5, train_tokens=2048, eval_tokens=256))
    spec = experiments.SAESpec("standard", 0.1, d_sae=32)
    first = experiments.run(site, spec, verbose=True)
    assert not first.loaded and "trained" in capsys.readouterr().out
    assert experiments.run(site, spec).loaded
    monkeypatch.setattr(experiments, "_RETRAINED", set())
    experiments.set_force_retrain(True)
    try:
        assert not experiments.run(site, spec).loaded            # retrained once...
        assert experiments.run(site, spec).loaded                # ...then loaded again
        rows = experiments.sweep(site, [spec], verbose=True)
        assert rows[0].loaded and "1 loaded from the run cache, 0 trained" in capsys.readouterr().out
    finally:
        experiments.set_force_retrain(False)


def test_settings_print_as_one_readable_line():
    from saelib.lab.notebook import check_parameters

    text = repr(check_parameters(scale="smoke", seed=3))
    assert "Settings(" not in text and "Scale(" not in text and "seed 3" in text and "\n" not in text
    with pytest.raises(ValueError, match="force_retrain"):
        check_parameters(scale="smoke", seed=0, force_retrain="yes")
    experiments.set_force_retrain(False)
