"""Checkpoints: atomic, verified, never unpickled; a SIGKILLed run resumes bitwise identically."""
import json
import os
import pickle
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from saelib import ReLUSAE
from saelib.training.checkpoint import (
    CheckpointError,
    atomic_write_bytes,
    flatten_state,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
    unflatten_state,
)
from saelib.training.loop import TrainConfig, train_sae

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "train_worker.py"


def _save(directory, step, value=1.0, keep=2):
    tensors = {"model.w": torch.full((4, 3), value), "rng.torch": torch.get_rng_state()}
    return save_checkpoint(directory, step, tensors, {"note": f"step {step}"}, keep=keep)


# ----------------------------------------------------------------------------- format

def test_nested_state_round_trips_through_tensors_and_json():
    state = {"a": torch.arange(3), "b": [1, 2.5, None, "x", (torch.ones(2), True)], "c": {"d": torch.zeros(1)}}
    tensors = {}
    meta = flatten_state(state, "data", tensors)
    json.dumps(meta)                                                        # the rest is plain JSON
    back = unflatten_state(json.loads(json.dumps(meta)), tensors)
    assert torch.equal(back["a"], state["a"]) and back["b"][:4] == [1, 2.5, None, "x"]
    assert torch.equal(back["b"][4][0], torch.ones(2)) and back["b"][4][1] is True
    with pytest.raises(TypeError, match="string"):
        flatten_state({1: torch.ones(1)}, "data", {})
    with pytest.raises(TypeError, match="set"):
        flatten_state({"s": {1, 2}}, "data", {})


def test_save_load_round_trip_and_pruning(tmp_path):
    for step in (3, 6, 9):
        _save(tmp_path, step, value=step)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_000000006.json", "step_000000009.json"]
    assert len(list(tmp_path.glob("*.safetensors"))) == 2                   # old tensor files removed too
    tensors, manifest = load_checkpoint(tmp_path)                           # directory -> latest
    assert manifest["step"] == 9 and manifest["meta"] == {"note": "step 9"}
    assert torch.equal(tensors["model.w"], torch.full((4, 3), 9.0))
    assert load_checkpoint(tmp_path / "step_000000006.json")[1]["step"] == 6


# ----------------------------------------------------------------------------- faults while writing

def test_atomic_write_keeps_the_old_file_when_the_write_fails(tmp_path, monkeypatch):
    target = tmp_path / "f.bin"
    atomic_write_bytes(target, b"old")

    def broken_replace(src, dst):
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(target, b"new contents")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]                # no temporary file left


def test_a_crash_before_the_manifest_leaves_the_previous_checkpoint_latest(tmp_path, monkeypatch):
    _save(tmp_path, 5, value=5)
    import saelib.training.checkpoint as ck
    real = ck.atomic_write_bytes

    def die_at_manifest(path, data):
        if str(path).endswith(".json"):
            raise KeyboardInterrupt("killed between the tensor file and the manifest")
        real(path, data)
    monkeypatch.setattr(ck, "atomic_write_bytes", die_at_manifest)
    with pytest.raises(KeyboardInterrupt):
        _save(tmp_path, 10, value=10)
    monkeypatch.setattr(ck, "atomic_write_bytes", real)
    assert latest_checkpoint(tmp_path).name == "step_000000005.json"
    assert torch.equal(load_checkpoint(tmp_path)[0]["model.w"], torch.full((4, 3), 5.0))
    (tmp_path / ".step_000000010.json.tmp-999").write_bytes(b"{partial")  # debris of a killed writer
    _save(tmp_path, 15, value=15, keep=1)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".safetensors")) == \
        ["step_000000015.json"]
    assert len(list(tmp_path.glob("*.safetensors"))) == 1                   # the orphan was cleaned up


# ----------------------------------------------------------------------------- refusing bad files

def test_truncated_tensor_file_is_refused_naming_the_file(tmp_path):
    manifest = _save(tmp_path, 4)
    tensor_file = tmp_path / json.loads(manifest.read_text())["tensor_file"]
    tensor_file.write_bytes(tensor_file.read_bytes()[:-50])
    with pytest.raises(CheckpointError, match=rf"{tensor_file.name} is truncated or modified"):
        load_checkpoint(manifest)


def test_modified_tensor_file_is_refused(tmp_path):
    manifest = _save(tmp_path, 4)
    tensor_file = tmp_path / json.loads(manifest.read_text())["tensor_file"]
    blob = bytearray(tensor_file.read_bytes())
    blob[-1] ^= 0xFF                                                        # one flipped byte in a weight
    tensor_file.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_checkpoint(manifest)


def test_truncated_manifest_is_refused_naming_the_file(tmp_path):
    manifest = _save(tmp_path, 4)
    manifest.write_bytes(manifest.read_bytes()[:40])
    with pytest.raises(CheckpointError, match=rf"{manifest.name} is unreadable"):
        load_checkpoint(manifest)


class _Payload:
    """Unpickling this would create a file: proof that nothing was unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_pickle_bearing_files_are_refused_and_never_unpickled(tmp_path):
    marker = tmp_path / "unpickled"
    evil = pickle.dumps(_Payload(str(marker)))
    # 1. a pickle / torch.save file handed over as the checkpoint
    pt = tmp_path / "model.pt"
    torch.save({"w": torch.ones(2), "payload": _Payload(str(marker))}, pt)
    with pytest.raises(CheckpointError, match="pickle"):
        load_checkpoint(pt)
    with pytest.raises(CheckpointError, match="pickle"):
        train_sae(ReLUSAE(4, 8), torch.randn(64, 4),
                  TrainConfig(total_steps=2, batch_size=8, sparsity_coeff=0.0, progress=False,
                              resume_from=str(pt)))
    # 2. a checkpoint whose tensor file was replaced by a pickle, with the manifest's hash forged to match
    manifest_path = _save(tmp_path / "ck", 2)
    manifest = json.loads(manifest_path.read_text())
    (manifest_path.parent / manifest["tensor_file"]).write_bytes(evil)
    import hashlib
    manifest.update(sha256=hashlib.sha256(evil).hexdigest(), n_bytes=len(evil))
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="pickle"):
        load_checkpoint(manifest_path)
    assert not marker.exists()


def test_missing_checkpoint_gives_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "step_000000001.json")


# ----------------------------------------------------------------------------- SIGKILL at a random step

def _worker(out, ckpt, *extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, str(WORKER), str(out), str(ckpt), *extra], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigkill_at_a_random_step_then_resume_is_bitwise_identical(tmp_path):
    kill_at = random.Random().randrange(4, 50)                  # a random batch of the 60-step run
    reference = _worker(tmp_path / "ref", tmp_path / "ref_ckpt")  # uninterrupted, runs alongside
    victim = _worker(tmp_path / "run", tmp_path / "ckpt")
    for line in victim.stdout:
        if line.strip() == f"batch {kill_at}":
            victim.send_signal(signal.SIGKILL)
            break
    victim.wait(timeout=120)
    assert victim.returncode == -signal.SIGKILL, f"worker was not killed: {victim.stderr.read()}"
    assert not (tmp_path / "run" / "final.safetensors").exists()

    resumed = _worker(tmp_path / "run", tmp_path / "ckpt", "--resume")
    out, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err
    reference.communicate(timeout=120)
    assert reference.returncode == 0
    ref, got = load_file(tmp_path / "ref" / "final.safetensors"), load_file(tmp_path / "run" / "final.safetensors")
    assert ref.keys() == got.keys()
    for k in ref:
        assert torch.equal(ref[k], got[k]), f"{k} differs after SIGKILL at batch {kill_at} and resume"
    ref_hist = json.loads((tmp_path / "ref" / "history.json").read_text())
    assert json.loads((tmp_path / "run" / "history.json").read_text()) == ref_hist
    assert sum(h["n_resampled"] for h in ref_hist) > 0                    # resampling was part of the run
