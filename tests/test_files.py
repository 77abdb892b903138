"""Atomic writes (saelib.files) and what they buy: a training process killed while it writes its cache
entry leaves nothing the next run trips over; a damaged entry (truncated by hand) is retrained."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from saelib.files import atomic_write, atomic_write_bytes, atomic_write_json, read_json

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- the helper itself

def test_atomic_write_replaces_whole_files_and_leaves_no_temp(tmp_path):
    target = tmp_path / "sub" / "a.json"
    atomic_write_json(target, {"x": 1})                      # creates the folder
    assert read_json(target) == {"x": 1}
    atomic_write_json(target, {"x": 2}, indent=1, trailing_newline=True)
    assert target.read_text() == '{\n "x": 2\n}\n'
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.json"]
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~_umask())   # usual permissions, not 0600


def test_a_failing_writer_leaves_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "w.bin"
    atomic_write_bytes(target, b"old")

    def half_then_fail(tmp: Path) -> None:
        tmp.write_bytes(b"ne")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        atomic_write(target, half_then_fail)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["w.bin"]


def test_unserialisable_json_never_touches_the_disk(tmp_path):
    target = tmp_path / "m.json"
    atomic_write_json(target, {"ok": True})
    with pytest.raises(TypeError):
        atomic_write_json(target, {"bad": object()})
    assert read_json(target) == {"ok": True}


def test_temp_name_keeps_the_suffix_for_writers_that_need_it(tmp_path):
    seen = []
    atomic_write(tmp_path / "a.npy", lambda tmp: (seen.append(tmp), np.save(tmp, np.arange(3))))
    assert seen[0].name.startswith(".a.npy.tmp-") and seen[0].suffix == ".npy"
    assert np.load(tmp_path / "a.npy").tolist() == [0, 1, 2]   # np.save did not append a second .npy


def test_read_json_names_the_damaged_file(tmp_path):
    bad = tmp_path / "metrics.json"
    bad.write_text('{"metrics": {"l0": 1.')
    with pytest.raises(ValueError, match="metrics.json"):
        read_json(bad)
    with pytest.raises(ValueError, match="not found"):
        read_json(tmp_path / "missing.json")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ----------------------------------------------------------------------------- the run cache

def _tiny_site_and_spec():
    from saelib.lab.experiments import SAESpec, SyntheticSite
    from saelib.lab.scales import get_scale

    scale = get_scale("smoke", train_tokens=2048, eval_tokens=512, batch_size=64, train_steps=8, expansion=2)
    site = SyntheticSite(scale, d_in=16, n_features=32, target_l0=3.0)
    return site, SAESpec("standard", sparsity_coeff=0.1)


def _entry(site, spec) -> Path:
    from saelib.lab.experiments import run_key, train_config
    from saelib.lab.paths import output_dir

    return output_dir(site.scale.name) / "runs" / run_key(site, spec, train_config(spec, site.scale, 0))


@pytest.fixture
def counted_training(monkeypatch, tmp_path):
    """Runs cached under tmp_path; returns a list that grows by one for every SAE actually trained."""
    from saelib.lab import experiments

    monkeypatch.setenv("SAELIB_OUTPUT_DIR", str(tmp_path / "outputs"))
    trained = []
    real = experiments.train_sae

    def counting(*args, **kwargs):
        trained.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(experiments, "train_sae", counting)
    return trained


# The child trains one SAE; its atomic writer writes half of metrics.json, tells the parent, and hangs
# there until the parent SIGKILLs it: the kill lands in the middle of writing the cache entry.
_CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import saelib.files as files

    marker = Path(sys.argv[1])
    real = files.atomic_write

    def atomic_write_then_hang(path, write):
        if Path(path).name != "metrics.json":
            return real(path, write)

        def half_then_hang(tmp):
            write(tmp)
            data = tmp.read_bytes()
            tmp.write_bytes(data[: len(data) // 2])      # half of the entry is on disk ...
            marker.write_text(str(tmp))                  # ... the parent may kill us now
            time.sleep(300)

        return real(path, half_then_hang)

    files.atomic_write = atomic_write_then_hang
    sys.path.insert(0, sys.argv[2])
    from test_files import _tiny_site_and_spec
    from saelib.lab.experiments import run

    run(*_tiny_site_and_spec())
    print("finished without being killed")
""")


@pytest.mark.slow                                            # a second process (~10 s)
def test_sigkill_while_writing_the_cache_entry_then_the_next_run_retrains(tmp_path, counted_training):
    from saelib.lab.experiments import run

    marker = tmp_path / "writing"
    env = {**os.environ, "SAELIB_OUTPUT_DIR": str(tmp_path / "outputs"), "CUDA_VISIBLE_DEVICES": "",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(marker), str(REPO / "tests")], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 240
        while not marker.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert marker.exists(), f"the child never reached the write:\n{child.communicate(timeout=30)[0]}"
        os.kill(child.pid, signal.SIGKILL)                   # mid-write
        assert child.wait(timeout=60) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()

    site, spec = _tiny_site_and_spec()
    entry = _entry(site, spec)
    half_written = Path(marker.read_text())
    assert half_written.parent == entry and half_written.exists()     # the kill left only a temp file
    assert not (entry / "metrics.json").exists()                      # ... never a torn metrics.json

    first = run(site, spec)                                  # the next run: retrains, no crash
    assert counted_training == [1]
    assert read_json(entry / "metrics.json")["metrics"]["l0"] == pytest.approx(first.metrics["l0"])
    again = run(site, spec)                                  # and the entry is now a good one: loaded
    assert counted_training == [1]
    assert (again.metrics["l0"], again.metrics["fvu"]) == (first.metrics["l0"], first.metrics["fvu"])


@pytest.mark.parametrize("damage", ["truncated_metrics", "garbage_metrics", "metrics_without_history",
                                    "truncated_weights", "missing_cfg"])
def test_a_damaged_cache_entry_is_retrained_with_a_warning(tmp_path, counted_training, damage):
    from saelib.lab.experiments import run

    site, spec = _tiny_site_and_spec()
    first = run(site, spec)
    assert counted_training == [1]
    metrics_file, weights = first.path / "metrics.json", first.path / "sae" / "sae_weights.safetensors"
    if damage == "truncated_metrics":
        text = metrics_file.read_text()
        metrics_file.write_text(text[: len(text) // 2])
    elif damage == "garbage_metrics":
        metrics_file.write_bytes(b"\x00\xff" * 10)
    elif damage == "metrics_without_history":
        metrics_file.write_text(json.dumps({"metrics": {"l0": 1.0}}))
    elif damage == "truncated_weights":
        weights.write_bytes(weights.read_bytes()[:100])
    else:
        (first.path / "sae" / "cfg.json").unlink()

    with pytest.warns(RuntimeWarning, match="damaged"):
        second = run(site, spec)
    assert counted_training == [1, 1]
    assert second.metrics["l0"] == pytest.approx(first.metrics["l0"])   # same seed, same SAE
    run(site, spec)                                                     # repaired: loads, no warning
    assert counted_training == [1, 1]


# ----------------------------------------------------------------------------- the activation cache

def test_an_interrupted_or_damaged_activation_cache_is_not_complete(tmp_path):
    from saelib.data.activations import ActivationCache, activation_cache_complete

    path = tmp_path / "acts"
    path.mkdir()
    np.save(path / "activations.npy", np.ones((100, 8), dtype=np.float32))
    assert not activation_cache_complete(path)                         # no meta.json: interrupted
    meta = {"hook_name": "h", "n_tokens": 100, "d_in": 8, "dtype": "float32", "model": None,
            "exclude_token_ids": []}
    atomic_write_json(path / "meta.json", meta)
    assert activation_cache_complete(path)
    assert len(ActivationCache(path, batch_size=10)) == 100

    (path / "meta.json").write_text(json.dumps(meta)[:20])                # truncated meta.json
    assert not activation_cache_complete(path)
    with pytest.raises(ValueError, match="meta.json"):
        ActivationCache(path, batch_size=10)

    atomic_write_json(path / "meta.json", meta)
    blob = (path / "activations.npy").read_bytes()
    (path / "activations.npy").write_bytes(blob[: len(blob) // 2])        # truncated array
    assert not activation_cache_complete(path)

    atomic_write_json(path / "meta.json", {**meta, "n_tokens": 50})       # array disagrees with meta.json
    np.save(path / "activations.npy", np.ones((100, 8), dtype=np.float32))
    assert not activation_cache_complete(path)
    with pytest.raises(ValueError, match="shape"):
        ActivationCache(path, batch_size=10)


# ----------------------------------------------------------------------------- one writer

_DIRECT_WRITE = re.compile(r"\.write_text\(|\.write_bytes\(|\bopen\([^)]*[\"'][wax]b?\+?[\"']|json\.dump\(|np\.save\(|"
                           r"torch\.save\(|\.savefig\(|save_file\(|open_memmap\(")


def _direct_writes(source: str) -> list[int]:
    """Line numbers that write a file directly. Writers of the temporary file that atomic_write hands
    out (`tmp`, by convention) and lines that call atomic_write are fine."""
    found = []
    for number, line in enumerate(source.splitlines(), 1):
        code = line.split("#", 1)[0]
        if _DIRECT_WRITE.search(code) and "atomic_write" not in code and not re.search(r"\btmp\b", code):
            found.append(number)
    return found


def test_the_direct_write_detector():
    assert _direct_writes("path.write_text(text)\nfig.savefig(out / 'a.png')\nopen(p, 'wb')\n") == [1, 2, 3]
    assert _direct_writes("atomic_write(p, lambda tmp: fig.savefig(tmp))\nopen(p, 'rb')\nx = 1  # .write_text(\n") == []


def test_the_library_writes_files_only_through_saelib_files():
    """Every file saelib writes goes through saelib.files.atomic_write: a direct write leaves half a file
    behind when the process dies mid-write."""
    offenders = [f"{path.relative_to(REPO)}:{n}" for path in sorted((REPO / "saelib").rglob("*.py"))
                 if path.name != "files.py" for n in _direct_writes(path.read_text(encoding="utf-8"))]
    assert not offenders, f"write through saelib.files.atomic_write instead: {offenders}"
