"""Checkpoints that survive faults: safetensors + JSON only, written atomically, verified on load.

A checkpoint of step s is two files in the checkpoint directory:

    step_000000s-<sha>.safetensors   every tensor (model, optimiser moments, RNG states, ...)
    step_000000s.json                the manifest: step, SHA-256 and size of the tensor file, and
                                     everything that is not a tensor (config, history, positions)

Writing order: tensors to a temporary file in the same directory, flush + fsync, os.replace, then
the manifest the same way, then fsync the directory. The manifest is the commit point: until it has
been renamed into place the previous checkpoint is the latest one, so a process killed at any moment
(SIGKILL included) leaves the previous checkpoint intact. Only then are older checkpoints beyond
`keep` removed. Loading checks the SHA-256 of the tensor file against the manifest, so a truncated or
modified file is refused with an error naming it; nothing is ever unpickled.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from saelib.files import atomic_write_bytes  # the one atomic writer (saelib/files.py); still importable from here
from saelib.files import fsync_dir as _fsync_dir
from saelib.training import distributed as D
from saelib.training.batches import IteratorBatches
from saelib.training.config import RESUMABLE_CHANGES, TrainConfig

FORMAT = "saelib-checkpoint/1"
_MANIFEST = re.compile(r"^step_(\d{9})\.json$")
_TENSORS = re.compile(r"^step_(\d{9})-[0-9a-f]{16}\.safetensors$")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, modified, or not in saelib's safetensors + JSON format."""


# ----------------------------------------------------------------------------- nested state <-> tensors + JSON

def flatten_state(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Move every tensor of a nested dict/list into `tensors` (keyed `prefix.path`); return the JSON rest.

    Tuples come back as lists; dictionary keys must be strings.
    """
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj.detach().to("cpu").contiguous().clone()
        return {"__tensor__": prefix}
    if isinstance(obj, dict):
        for key in obj:
            if not isinstance(key, str):
                raise TypeError(f"state key {key!r} under {prefix!r} is not a string; only string keys "
                                "can be stored in a checkpoint")
        return {k: flatten_state(v, f"{prefix}.{k}", tensors) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [flatten_state(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} at {prefix!r} in a checkpoint; "
                    "allowed: tensors, dicts with string keys, lists, tuples, numbers, strings, None")


def unflatten_state(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of `flatten_state`."""
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            return tensors[obj["__tensor__"]]
        return {k: unflatten_state(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [unflatten_state(v, tensors) for v in obj]
    return obj


# ----------------------------------------------------------------------------- RNG and optimiser state

def capture_rng_state(tensors: dict[str, torch.Tensor]) -> dict:
    """Global RNG states (torch CPU and CUDA, numpy, python): tensors into `tensors`, the rest returned."""
    tensors["rng.torch"] = torch.get_rng_state()
    n_cuda = 0
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
        n_cuda = torch.cuda.device_count()
    kind, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    tensors["rng.numpy_keys"] = torch.from_numpy(np.asarray(keys).astype(np.int64))
    version, py_state, py_gauss = random.getstate()
    return {"n_cuda": n_cuda, "numpy": [kind, int(pos), int(has_gauss), float(gauss)],
            "python": [version, list(py_state), py_gauss]}


def restore_rng_state(meta: dict, tensors: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    if meta["n_cuda"] and torch.cuda.is_available():
        states = [tensors[f"rng.cuda.{i}"] for i in range(meta["n_cuda"])]
        torch.cuda.set_rng_state_all(states[:torch.cuda.device_count()])
    kind, pos, has_gauss, gauss = meta["numpy"]
    np.random.set_state((kind, tensors["rng.numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, py_state, py_gauss = meta["python"]
    random.setstate((version, tuple(py_state), py_gauss))


def capture_optimizer_state(optimizer: torch.optim.Optimizer, names: list[str],
                            tensors: dict[str, torch.Tensor]) -> dict:
    """Per-parameter optimiser state as tensors named `optim.<param name>.<key>` (e.g. exp_avg).

    `names[i]` is the name of the i-th parameter handed to the optimiser. Returns the JSON part
    (the hyper-parameters of each parameter group).
    """
    sd = optimizer.state_dict()
    state = {names[index]: flatten_state(st, f"optim.{names[index]}", tensors)
             for index, st in sd["state"].items()}
    groups = [{k: v for k, v in g.items() if k != "params"} for g in sd["param_groups"]]
    return {"names": list(names), "state": state,
            "param_groups": flatten_state(groups, "optim_groups", tensors)}


def load_optimizer_state(optimizer: torch.optim.Optimizer, names: list[str], meta: dict,
                         tensors: dict[str, torch.Tensor]) -> None:
    if list(meta["names"]) != list(names):
        raise CheckpointError(f"the checkpoint's optimiser covers parameters {meta['names']} "
                              f"but this model has {names}")
    state = {names.index(name): unflatten_state(st, tensors) for name, st in meta["state"].items()}
    # hyper-parameters stay those of the optimiser built from the (checked) config; lr is set every step
    optimizer.load_state_dict({"state": state, "param_groups": optimizer.state_dict()["param_groups"]})


# ----------------------------------------------------------------------------- save / find / load

def save_checkpoint(directory: str | os.PathLike, step: int, tensors: dict[str, torch.Tensor],
                    meta: dict, keep: int = 2) -> Path:
    """Write the checkpoint of `step` atomically; keep the newest `keep` checkpoints. Returns the manifest."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob(".step_*.tmp-*"):        # left behind by a process killed mid-write
        stale.unlink(missing_ok=True)
    blob = st_save({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()},
                   metadata={"format": FORMAT, "step": str(step)})
    sha = hashlib.sha256(blob).hexdigest()
    tensor_name = f"step_{step:09d}-{sha[:16]}.safetensors"
    atomic_write_bytes(directory / tensor_name, blob)
    manifest = {"format": FORMAT, "step": step, "tensor_file": tensor_name, "sha256": sha,
                "n_bytes": len(blob), "meta": meta}
    manifest_path = directory / f"step_{step:09d}.json"
    atomic_write_bytes(manifest_path, json.dumps(manifest, indent=1).encode())   # the commit point
    _prune(directory, keep)
    return manifest_path


def _prune(directory: Path, keep: int) -> None:
    manifests = list_checkpoints(directory)
    for old in manifests[:-keep]:
        old.unlink(missing_ok=True)
    live = set()
    for m in manifests[-keep:]:
        try:
            live.add(json.loads(m.read_text())["tensor_file"])
        except (OSError, ValueError, KeyError):
            return                                        # be conservative: delete nothing more
    for f in directory.iterdir():
        if _TENSORS.match(f.name) and f.name not in live:
            f.unlink(missing_ok=True)
    _fsync_dir(directory)


def list_checkpoints(directory: str | os.PathLike) -> list[Path]:
    """Manifests in `directory`, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted((p for p in directory.iterdir() if _MANIFEST.match(p.name)), key=lambda p: p.name)


def latest_checkpoint(directory: str | os.PathLike) -> Path | None:
    found = list_checkpoints(directory)
    return found[-1] if found else None


def _refuse_if_pickle(path: Path, head: bytes) -> None:
    if head[:1] == b"\x80" or head[:4] == b"PK\x03\x04":
        raise CheckpointError(f"{path} looks like a pickle / torch.save file; saelib never unpickles "
                              "(it loads only safetensors + JSON checkpoints)")


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """Read and verify a checkpoint: `path` is a manifest (.json) or a directory (its latest one).

    Returns (tensors, manifest). Raises CheckpointError naming the file when anything is wrong.
    """
    path = Path(path)
    if path.is_dir():
        found = latest_checkpoint(path)
        if found is None:
            raise CheckpointError(f"no checkpoint (step_*.json) in {path}")
        path = found
    if not path.is_file():
        raise CheckpointError(f"checkpoint manifest {path} does not exist")
    raw = path.read_bytes()
    _refuse_if_pickle(path, raw[:4])
    try:
        manifest = json.loads(raw)
        if manifest.get("format") != FORMAT:
            raise ValueError(f"format is {manifest.get('format')!r}, expected {FORMAT!r}")
        tensor_path = path.parent / manifest["tensor_file"]
        sha, n_bytes = manifest["sha256"], manifest["n_bytes"]
    except (ValueError, KeyError, AttributeError, TypeError) as e:
        raise CheckpointError(f"checkpoint manifest {path} is unreadable (truncated or not a saelib "
                              f"checkpoint): {e}") from None
    if not tensor_path.is_file():
        raise CheckpointError(f"checkpoint tensor file {tensor_path} (named in {path}) is missing")
    blob = tensor_path.read_bytes()
    _refuse_if_pickle(tensor_path, blob[:4])
    if len(blob) != n_bytes or hashlib.sha256(blob).hexdigest() != sha:
        raise CheckpointError(f"checkpoint tensor file {tensor_path} is truncated or modified: its size or "
                              f"SHA-256 differs from the one recorded in {path} ({len(blob)} bytes, "
                              f"expected {n_bytes}); refusing to load it")
    try:
        tensors = st_load(blob)
    except Exception as e:  # safetensors raises its own error type
        raise CheckpointError(f"checkpoint tensor file {tensor_path} is not a valid safetensors file: {e}") \
            from None
    return tensors, manifest


# ----------------------------------------------------------------------------- a training run

@dataclass
class RunState:
    """What the loop carries from step to step besides model, optimiser and data (all checkpointed)."""
    step: int = 0                              # optimiser steps taken
    last_resample_step: int | None = None      # for the LR warm-up after a resample
    n_resampled: int = 0                       # since the last history row
    history: list = field(default_factory=list)


def save_run(sae, optimizer, names: list[str], source, tracker, state: RunState, cfg: TrainConfig,
             info: D.DistInfo) -> None:
    """Checkpoint a run at state.step: model, optimiser moments, RNG states, data positions (every rank
    takes part; rank 0 writes)."""
    data_states = D.all_gather_objects(source.state_dict())
    if not info.is_main:
        return
    tensors = {f"model.{k}": v for k, v in sae.state_dict().items()}
    if tracker is not None:
        tensors["train.max_act"] = tracker.max_act
    meta = {"step": state.step, "total_steps": cfg.n_steps, "config": cfg.to_dict(),
            "sae": {"class": type(sae).__name__, "architecture": getattr(sae, "architecture", None),
                    "config": sae.config() if hasattr(sae, "config") else None},
            "last_resample_step": state.last_resample_step, "n_resampled": state.n_resampled,
            "history": state.history, "world_size": info.world_size,
            "optim": capture_optimizer_state(optimizer, names, tensors),
            "rng": capture_rng_state(tensors),
            "data": flatten_state(data_states, "data", tensors)}
    assert cfg.checkpoint_dir is not None
    save_checkpoint(cfg.checkpoint_dir, state.step, tensors, meta, keep=cfg.keep_checkpoints)


def restore_run(path, sae, optimizer, names: list[str], source, tracker, cfg: TrainConfig,
                info: D.DistInfo) -> RunState:
    """Put model, optimiser, RNGs, dead-feature tracker and data source back where checkpoint `path` left
    them; refuse a config that differs in a field that changes the result."""
    tensors, manifest = load_checkpoint(path)
    meta = manifest["meta"]
    saved, mine = meta["config"], cfg.to_dict()
    changed = [f"{k}: {saved.get(k)!r} -> {mine[k]!r}" for k in mine
               if k not in RESUMABLE_CHANGES and saved.get(k) != mine[k]]
    if changed:
        raise ValueError(f"cannot resume from {path}: the config differs in fields that change the result "
                         f"({'; '.join(changed)}); allowed changes: {', '.join(sorted(RESUMABLE_CHANGES))}")
    model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        sae.load_state_dict(model_state)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path} does not fit this {type(sae).__name__} "
                              f"(it holds a {meta['sae']['class']} with {meta['sae']['config']}): {e}") from None
    load_optimizer_state(optimizer, names, meta["optim"], tensors)
    restore_rng_state(meta["rng"], tensors)
    if tracker is not None:
        tracker.max_act.copy_(tensors["train.max_act"])
    data_states = unflatten_state(meta["data"], tensors)
    if isinstance(source, IteratorBatches):
        warnings.warn("resuming with a plain iterator of batches: its position cannot be restored, so the "
                      "resumed run continues from wherever the iterator is now (pass a Tensor or an object "
                      "with next_batch()/state_dict()/load_state_dict() for an exact resume)", stacklevel=3)
    elif len(data_states) == info.world_size:
        source.load_state_dict(data_states[info.rank])
    elif all(s == data_states[0] for s in data_states):
        source.load_state_dict(data_states[0])
    else:
        raise ValueError(f"cannot resume from {path}: it was written by {len(data_states)} ranks with "
                         f"different data positions, this run has world_size={info.world_size}")
    return RunState(step=manifest["step"], last_resample_step=meta["last_resample_step"],
                    n_resampled=meta["n_resampled"], history=meta["history"])
