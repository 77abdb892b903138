"""One training loop for every SAE variant.

    history = train_sae(sae, batches, TrainConfig(total_steps=..., sparsity_coeff=...))

Each step:  x = next batch -> out = sae.loss(x, lambda_t) -> out.loss.backward()
            -> sae.before_optimizer_step()  (e.g. drop the gradient parallel to unit-norm decoder rows)
            -> clip the gradient norm (optional) -> Adam step with lr_t
            -> sae.after_optimizer_step()   (e.g. renormalise decoder rows)
and, every so often: log (history row), resample dead features, check for NaN/inf, checkpoint.

`batches` is a Tensor [N, d_in] (shuffled minibatches drawn here), an object with next_batch() /
state_dict() / load_state_dict() (e.g. saelib.data.activations.ActivationBuffer), or any iterator of
tensors (which a resumed run cannot rewind). See saelib/batches.py.

Host synchronisation happens only on log, check, resample and checkpoint steps: the hot loop never
calls .item(). On CPU a sync is free, so NaN/inf checks run every step; on CUDA they run every
`log_every` steps (set `check_finite_every` to change that) and always before a checkpoint is written,
so a checkpoint never holds non-finite weights.

Under torchrun the loss is wrapped in DistributedDataParallel; each rank computes the mean loss over
its batch_size / world_size rows and DDP averages the gradients, which therefore equal the gradient of
the mean loss over the global batch. Rank 0 writes checkpoints and shows progress.
"""
from __future__ import annotations

import contextlib
import math
import re
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from saelib.progress import tqdm

from saelib.training import distributed as D
from saelib.validation import check_choice, check_positive, check_range
from saelib.training.batches import IteratorBatches, as_batch_source
from saelib.training.checkpoint import (CheckpointError, capture_optimizer_state, capture_rng_state, flatten_state,
                         latest_checkpoint, load_checkpoint, load_optimizer_state, restore_rng_state,
                         save_checkpoint, unflatten_state)
from saelib.fast import training_loss
from saelib.training.resampling import DeadFeatureTracker, resample_dead_features, sample_inputs_by_loss
from saelib.training.schedules import lr_multiplier, sparsity_coeff_at

# Config fields that may differ between a run and its resumption (they do not change the weights).
_RESUMABLE_CHANGES = {"log_every", "progress", "checkpoint_dir", "checkpoint_every", "keep_checkpoints",
                      "resume_from", "device", "check_finite_every"}
_TERMS = ("reconstruction", "sparsity", "aux", "loss")


class NonFiniteError(FloatingPointError):
    """Training met a NaN or inf (in a loss term or a parameter); the message names the step and term."""


@dataclass(kw_only=True)
class TrainConfig:
    """How to train. Defaults follow the GDM papers (Adam(0, 0.999), batch 4096) unless noted.

    Length (give exactly one):
      total_steps, total_tokens     total_tokens -> ceil(total_tokens / batch_size) steps
    Optimisation:
      batch_size                    global batch (split evenly across ranks under torchrun)
      lr, adam_betas, adam_eps      Adam
      grad_clip_norm                max gradient norm (April update: 1.0); None = no clipping
      lr_warmup_steps               linear LR warm-up, re-applied after each resample
      lr_decay_frac                 linear LR decay to 0 over this final fraction (April update: 0.2)
      sparsity_coeff                lambda; required except for TopK (which ignores it)
      sparsity_warmup_steps / _frac linear lambda warm-up over N steps or a fraction (April: 0.05)
    Resampling dead features (Anthropic):
      resample                      None = ask the SAE (sae.wants_resampling); True / False force it
      resample_every                steps between resamples
      resample_window               a feature is dead if it did not fire during the last N steps
                                    before a resample (default resample_every // 2)
      resample_pool                 inputs scored to choose the new directions (Anthropic: 819,200)
    Bookkeeping:
      log_every, progress           history row every N steps (and at the end); tqdm bar
      checkpoint_dir, checkpoint_every, keep_checkpoints, resume_from
      device                        "auto" (CUDA when present), "cpu", "cuda", "cuda:N"
      precision                     "fp32", or "bf16" (autocast for the forward pass; weights stay fp32)
      check_finite_every            None = every step on CPU, every log_every steps on CUDA
      seed                          seeds torch and the batch shuffling
    """

    total_steps: int | None = None
    total_tokens: int | None = None
    batch_size: int = 4096
    lr: float = 3e-4
    adam_betas: tuple[float, float] = (0.0, 0.999)
    adam_eps: float = 1e-8
    grad_clip_norm: float | None = None
    lr_warmup_steps: int = 0
    lr_decay_frac: float = 0.0
    sparsity_coeff: float | None = None
    sparsity_warmup_steps: int = 0
    sparsity_warmup_frac: float = 0.0
    resample: bool | None = None
    resample_every: int = 25_000
    resample_window: int | None = None
    resample_pool: int = 819_200
    log_every: int = 100
    progress: bool = True
    checkpoint_dir: str | None = None
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2
    resume_from: str | None = None
    device: str = "auto"
    precision: str = "fp32"
    check_finite_every: int | None = None
    seed: int = 0

    def __post_init__(self):
        if (self.total_steps is None) == (self.total_tokens is None):
            raise ValueError(f"give exactly one of total_steps={self.total_steps!r} and "
                             f"total_tokens={self.total_tokens!r}; allowed: one positive integer, the other None")
        for name in ("total_steps", "total_tokens"):
            if getattr(self, name) is not None:
                check_positive(name, getattr(self, name), integer=True)
        for name in ("batch_size", "resample_every", "resample_pool", "log_every", "checkpoint_every",
                     "keep_checkpoints"):
            check_positive(name, getattr(self, name), integer=True)
        for name in ("lr_warmup_steps", "sparsity_warmup_steps"):
            check_positive(name, getattr(self, name), allow_zero=True, integer=True)
        check_positive("lr", self.lr)
        check_positive("adam_eps", self.adam_eps)
        if not isinstance(self.adam_betas, (tuple, list)) or len(self.adam_betas) != 2:
            raise ValueError(f"adam_betas={self.adam_betas!r} must be a pair (beta1, beta2), each in [0, 1)")
        self.adam_betas = tuple(float(b) for b in self.adam_betas)
        for i, beta in enumerate(self.adam_betas):
            check_range(f"adam_betas[{i}]", beta, 0.0, 1.0)
            if beta == 1.0:
                raise ValueError(f"adam_betas[{i}]=1.0 is out of range; allowed: [0, 1)")
        if self.grad_clip_norm is not None:
            check_positive("grad_clip_norm", self.grad_clip_norm)
        check_range("lr_decay_frac", self.lr_decay_frac, 0.0, 1.0)
        check_range("sparsity_warmup_frac", self.sparsity_warmup_frac, 0.0, 1.0)
        if self.sparsity_warmup_steps and self.sparsity_warmup_frac:
            raise ValueError(f"give sparsity_warmup_steps={self.sparsity_warmup_steps} or sparsity_warmup_frac="
                             f"{self.sparsity_warmup_frac}, not both; allowed: at most one non-zero")
        if self.sparsity_coeff is not None:
            check_positive("sparsity_coeff", self.sparsity_coeff, allow_zero=True)
        check_choice("resample", self.resample, (None, True, False))
        if self.resample_window is not None:
            check_positive("resample_window", self.resample_window, integer=True)
            if self.resample_window > self.resample_every:
                raise ValueError(f"resample_window={self.resample_window} is out of range; allowed: "
                                 f"1..resample_every ({self.resample_every})")
        check_choice("progress", self.progress, (True, False))
        for name in ("checkpoint_dir", "resume_from"):
            value = getattr(self, name)
            if value is not None:
                if not isinstance(value, (str, Path)) or str(value) == "":
                    raise ValueError(f"{name}={value!r} must be a path (str or pathlib.Path) or None")
                setattr(self, name, str(value))
        if not (isinstance(self.device, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device)):
            raise ValueError(f"device={self.device!r} is not allowed; allowed values: 'auto', 'cpu', 'cuda', "
                             "'cuda:N'")
        check_choice("precision", self.precision, ("fp32", "bf16"))
        if self.check_finite_every is not None:
            check_positive("check_finite_every", self.check_finite_every, integer=True)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed={self.seed!r} must be an integer >= 0")

    @property
    def n_steps(self) -> int:
        if self.total_steps is not None:
            return self.total_steps
        return math.ceil(self.total_tokens / self.batch_size)

    @property
    def lr_decay_steps(self) -> int:
        return round(self.lr_decay_frac * self.n_steps)

    @property
    def sparsity_warmup(self) -> int:
        return self.sparsity_warmup_steps or round(self.sparsity_warmup_frac * self.n_steps)

    @property
    def window(self) -> int:
        return self.resample_window or max(1, self.resample_every // 2)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["adam_betas"] = list(self.adam_betas)
        return d


# ----------------------------------------------------------------------------- helpers

class _Objective(nn.Module):
    """sae.loss as a forward(), so that DistributedDataParallel sees (and synchronises) the backward."""

    def __init__(self, sae: nn.Module, loss_fn):
        super().__init__()
        self.sae = sae
        self.loss_fn = loss_fn              # saelib.fast.training_loss(sae, device), chosen once

    def forward(self, x: torch.Tensor, sparsity_coeff: float):
        return self.loss_fn(x, sparsity_coeff)


@dataclass
class _Progress:
    """What the loop carries from step to step besides model, optimiser and data (all checkpointed)."""
    step: int = 0                              # optimiser steps taken
    last_resample_step: int | None = None      # for the LR warm-up after a resample
    n_resampled: int = 0                       # since the last history row
    history: list = field(default_factory=list)


def _resolve_device(name: str, info: D.DistInfo) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device={name!r} but CUDA is not available; allowed here: 'auto' or 'cpu'")
        if name == "cuda":
            name = f"cuda:{info.local_rank}"
    return torch.device(name)


def _loss_terms(out) -> torch.Tensor:  # [4]: reconstruction, sparsity, aux, loss (no host sync)
    return torch.stack([torch.as_tensor(getattr(out, t), device=out.loss.device).detach().float().reshape(())
                        for t in _TERMS])


def _check_finite(step: int, last_ok: int, where: str, out=None, params: dict | None = None) -> None:
    """Raise NonFiniteError naming the step and the first non-finite loss term or parameter.

    One host sync; under torchrun the flags are combined over ranks so that every rank stops together.
    """
    if out is not None:
        names, flags = [f"{t} loss term" for t in _TERMS], ~torch.isfinite(_loss_terms(out))      # [4]
    else:
        names = [f"parameter {n}" for n in params]
        flags = torch.stack([~torch.isfinite(p).all() for p in params.values()])               # [n_params]
    flags = D.all_reduce(flags.float(), op="max").tolist()
    bad = [n for n, flag in zip(names, flags) if flag]
    if bad:
        since = "" if last_ok == step - 1 else f" (the previous check, after step {last_ok}, passed)"
        raise NonFiniteError(f"non-finite value (NaN or inf) in the {bad[0]} at step {step}{since}; "
                             f"all non-finite: {', '.join(bad)}. Training stopped; {where}")


# ----------------------------------------------------------------------------- checkpoints

def _save(sae, optimizer, names, source, tracker, progress: _Progress, cfg: TrainConfig,
          info: D.DistInfo) -> None:
    data_states = D.all_gather_objects(source.state_dict())        # every rank takes part
    if not info.is_main:
        return
    tensors = {f"model.{k}": v for k, v in sae.state_dict().items()}
    if tracker is not None:
        tensors["train.max_act"] = tracker.max_act
    meta = {"step": progress.step, "total_steps": cfg.n_steps, "config": cfg.to_dict(),
            "sae": {"class": type(sae).__name__, "architecture": getattr(sae, "architecture", None),
                    "config": sae.config() if hasattr(sae, "config") else None},
            "last_resample_step": progress.last_resample_step, "n_resampled": progress.n_resampled,
            "history": progress.history, "world_size": info.world_size,
            "optim": capture_optimizer_state(optimizer, names, tensors),
            "rng": capture_rng_state(tensors),
            "data": flatten_state(data_states, "data", tensors)}
    save_checkpoint(cfg.checkpoint_dir, progress.step, tensors, meta, keep=cfg.keep_checkpoints)


def _restore(path, sae, optimizer, names, source, tracker, cfg: TrainConfig, info: D.DistInfo) -> _Progress:
    tensors, manifest = load_checkpoint(path)
    meta = manifest["meta"]
    saved, mine = meta["config"], cfg.to_dict()
    changed = [f"{k}: {saved.get(k)!r} -> {mine[k]!r}" for k in mine
               if k not in _RESUMABLE_CHANGES and saved.get(k) != mine[k]]
    if changed:
        raise ValueError(f"cannot resume from {path}: the config differs in fields that change the result "
                         f"({'; '.join(changed)}); allowed changes: {', '.join(sorted(_RESUMABLE_CHANGES))}")
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
    return _Progress(step=manifest["step"], last_resample_step=meta["last_resample_step"],
                     n_resampled=meta["n_resampled"], history=meta["history"])


# ----------------------------------------------------------------------------- the loop

def train_sae(sae: nn.Module, batches, cfg: TrainConfig, *, resume: bool = False) -> list[dict]:
    """Train `sae` in place; return the history (a list of dicts, one every cfg.log_every steps).

    resume=True continues from the latest checkpoint in cfg.checkpoint_dir when there is one (and starts
    afresh otherwise); cfg.resume_from names a checkpoint (manifest .json or directory) explicitly.
    A resumed CPU run ends bitwise identical to an uninterrupted one.
    """
    if not isinstance(cfg, TrainConfig):
        raise ValueError(f"cfg must be a TrainConfig, got {type(cfg).__name__}")
    if not (isinstance(sae, nn.Module) and hasattr(sae, "loss") and hasattr(sae, "d_sae")):
        raise ValueError(f"sae must be a saelib SAE (an nn.Module with loss() and d_sae), got {type(sae).__name__}")
    info = D.init_distributed()
    device = _resolve_device(cfg.device, info)
    if cfg.batch_size % info.world_size:
        raise ValueError(f"batch_size={cfg.batch_size} must be divisible by the number of ranks "
                         f"({info.world_size}); allowed: a multiple of {info.world_size}")
    if resume and cfg.checkpoint_dir is None and cfg.resume_from is None:
        raise ValueError("resume=True needs cfg.checkpoint_dir (or cfg.resume_from)")
    coeff = cfg.sparsity_coeff
    if coeff is None:
        if getattr(sae, "architecture", None) != "topk":
            raise ValueError(f"sparsity_coeff is required to train a {type(sae).__name__} "
                             "(allowed: a number >= 0; only TopK ignores it)")
        coeff = 0.0
    if cfg.checkpoint_dir is not None and info.is_main:
        try:                                   # fail now, not at the first checkpoint hours from now
            Path(cfg.checkpoint_dir).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ValueError(f"checkpoint_dir={cfg.checkpoint_dir!r} cannot be used as a directory: {e}") from None
    total, local_bs = cfg.n_steps, cfg.batch_size // info.world_size
    sae.to(device)
    sae.train()
    source = as_batch_source(batches, cfg.batch_size, cfg.seed, info.rank, info.world_size)
    if isinstance(source, IteratorBatches) and cfg.checkpoint_dir is not None and info.is_main:
        warnings.warn("training from a plain iterator: checkpoints cannot record its position, so a resumed "
                      "run will not see the same batches", stacklevel=2)

    params = {n: p for n, p in sae.named_parameters() if p.requires_grad}
    names = list(params)
    optimizer = torch.optim.Adam(params.values(), lr=cfg.lr, betas=cfg.adam_betas, eps=cfg.adam_eps,
                                 fused=device.type == "cuda")
    resample = sae.wants_resampling if cfg.resample is None else cfg.resample
    tracker = DeadFeatureTracker(sae.d_sae, device) if resample else None

    path = cfg.resume_from
    if path is None and resume:
        found = latest_checkpoint(cfg.checkpoint_dir)
        path = None if found is None else str(found)
    path = D.broadcast_object(path)
    if path is not None:
        progress = _restore(path, sae, optimizer, names, source, tracker, cfg, info)
    else:
        torch.manual_seed(cfg.seed)
        progress = _Progress()

    objective = _Objective(sae, training_loss(sae, device))
    if info.enabled:
        objective = nn.parallel.DistributedDataParallel(
            objective, device_ids=[device.index] if device.type == "cuda" else None)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if cfg.precision == "bf16"
                else contextlib.nullcontext())
    check_every = cfg.check_finite_every or (1 if device.type == "cpu" else cfg.log_every)
    where = (f"the latest checkpoint in {cfg.checkpoint_dir} (if one was written) holds the last good state"
             if cfg.checkpoint_dir else "no checkpoint_dir was set, so there is no checkpoint to go back to")
    last_ok = progress.step
    grad_norm = None
    bar = tqdm(total=total, initial=progress.step, disable=not (cfg.progress and info.is_main),
               desc=f"train {type(sae).__name__}", dynamic_ncols=True)

    for t in range(progress.step, total):       # t: steps already taken; this is update t + 1
        s = t + 1
        lr = cfg.lr * lr_multiplier(t, total, cfg.lr_warmup_steps, cfg.lr_decay_steps, progress.last_resample_step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        lam = sparsity_coeff_at(t, coeff, cfg.sparsity_warmup)
        track = tracker is not None and t % cfg.resample_every >= cfg.resample_every - cfg.window
        if track and t % cfg.resample_every == cfg.resample_every - cfg.window:
            tracker.reset()                      # start of the window before the next resample

        x = source.next_batch()                  # [batch / world, d_in]
        if x.ndim != 2 or x.shape[0] != local_bs or x.shape[1] != sae.d_in:
            raise ValueError(f"batch at step {s} has shape {tuple(x.shape)}; expected ({local_bs}, {sae.d_in}) "
                             f"(batch_size={cfg.batch_size} over {info.world_size} rank(s), d_in={sae.d_in})")
        if x.device != device:
            x = x.to(device, non_blocking=True)
        with autocast:
            out = objective(x, lam)
        out.loss.backward()

        is_log = s % cfg.log_every == 0 or s == total
        is_ckpt = cfg.checkpoint_dir is not None and (s % cfg.checkpoint_every == 0 or s == total)
        is_check = is_log or is_ckpt or s % check_every == 0
        if is_check:                             # before the step: the weights in memory stay good
            _check_finite(s, last_ok, where, out=out)

        sae.before_optimizer_step()
        if cfg.grad_clip_norm is not None:
            grad_norm = nn.utils.clip_grad_norm_(params.values(), cfg.grad_clip_norm)
        optimizer.step()
        sae.after_optimizer_step()
        optimizer.zero_grad(set_to_none=True)
        if track:
            tracker.update(out.feature_max())
        progress.step = s

        if is_check:
            _check_finite(s, last_ok, where, params=params)
            last_ok = s
        if is_log:
            _log(out, progress, lr, lam, grad_norm, cfg, bar)
        if tracker is not None and s % cfg.resample_every == 0 and s < total:
            n = _resample(sae, optimizer, source, tracker, cfg, info, s, device)
            if n:
                progress.last_resample_step = s
                progress.n_resampled += n
        if is_ckpt:
            _save(sae, optimizer, names, source, tracker, progress, cfg, info)
        bar.update(1)
    bar.close()
    return progress.history


def _log(out, progress: _Progress, lr: float, lam: float, grad_norm, cfg: TrainConfig, bar) -> None:
    """Append a history row; the one host sync of a log step. Values are means over the global batch."""
    with torch.no_grad():
        l0 = (torch.count_nonzero(out.f) / out.f.shape[0]).float().reshape(1)       # mean over tokens
        stats = torch.cat([_loss_terms(out), l0])
        if grad_norm is not None:
            stats = torch.cat([stats, grad_norm.detach().float().reshape(1)])
        stats = D.all_reduce(stats, op="mean").tolist()
    row = {"step": progress.step, "tokens": progress.step * cfg.batch_size,
           **dict(zip(_TERMS + ("l0",), stats[:5])), "lr": lr, "sparsity_coeff": lam,
           "n_resampled": progress.n_resampled}
    if grad_norm is not None:
        row["grad_norm"] = stats[5]
    progress.history.append(row)
    progress.n_resampled = 0
    bar.set_postfix(loss=f"{row['loss']:.4g}", l0=f"{row['l0']:.1f}", refresh=False)


def _resample(sae, optimizer, source, tracker, cfg: TrainConfig, info: D.DistInfo, step: int,
              device: torch.device) -> int:
    dead = tracker.dead_mask()                                      # [d_sae] bool, same on all ranks
    n_dead = int(dead.sum())
    if n_dead == 0:
        return 0
    g = torch.Generator(device=device).manual_seed(cfg.seed * 1_000_003 + step * 101 + info.rank)
    n_batches = math.ceil(cfg.resample_pool / cfg.batch_size)
    inputs = sample_inputs_by_loss(sae, source.next_batch, n_batches, n_dead, g)
    return resample_dead_features(sae, optimizer, dead, inputs)
