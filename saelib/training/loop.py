"""One training loop for every SAE variant.

    history = train_sae(sae, batches, TrainConfig(total_steps=..., sparsity_coeff=...))

Each step:  x = next batch -> out = loss_fn(x, lambda_t) -> out.loss.backward()
            -> sae.before_optimizer_step()  (e.g. drop the gradient parallel to unit-norm decoder rows)
            -> clip the gradient norm (optional) -> Adam step with lr_t
            -> sae.after_optimizer_step()   (e.g. renormalise decoder rows)
and, every so often: log (history row), resample dead features, check for NaN/inf, checkpoint.
`loss_fn = saelib.fast.training_loss(sae, device)` is chosen once: the model's own `sae.loss`, or a
faster step equal to it in value and gradient (the CPU sparse steps).

`batches` is a Tensor [N, d_in] (shuffled minibatches drawn here), an object with next_batch() /
state_dict() / load_state_dict() (e.g. saelib.data.activations.ActivationBuffer), or any iterator of
tensors (which a resumed run cannot rewind). See saelib/training/batches.py. The settings are
saelib/training/config.py; checkpoints saelib/training/checkpoint.py; resampling
saelib/training/resampling.py; history rows and NaN/inf guards saelib/training/stats.py.

Host synchronisation happens only on log, check, resample and checkpoint steps: the hot loop never
calls .item(). On CPU a sync is free, so NaN/inf checks run every step; elsewhere (CUDA) they run every
`log_every` steps (set `check_finite_every` to change that) and always before a checkpoint is written,
so a checkpoint never holds non-finite weights.

Under torchrun the loss is wrapped in DistributedDataParallel; each rank computes the mean loss over
its batch_size / world_size rows and DDP averages the gradients, which therefore equal the gradient of
the mean loss over the global batch. Rank 0 writes checkpoints and shows progress.
"""
from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import torch
from torch import nn

from saelib.fast import training_loss
from saelib.models.base import SAE
from saelib.progress import tqdm
from saelib.training import distributed as D
from saelib.training.batches import IteratorBatches, as_batch_source
from saelib.training.checkpoint import RunState, latest_checkpoint, restore_run, save_run
from saelib.training.config import TrainConfig
from saelib.training.resampling import DeadFeatureTracker, resample_now, tracking
from saelib.training.schedules import lr_multiplier, sparsity_coeff_at
from saelib.training.stats import NonFiniteError, check_finite, history_row

__all__ = ["NonFiniteError", "TrainConfig", "train_sae"]


class _Objective(nn.Module):
    """The loss function as a forward(), so that DistributedDataParallel sees (and synchronises) the backward."""

    def __init__(self, sae: nn.Module, loss_fn):
        super().__init__()
        self.sae = sae
        self.loss_fn = loss_fn              # saelib.fast.training_loss(sae, device), chosen once

    def forward(self, x: torch.Tensor, sparsity_coeff: float):
        return self.loss_fn(x, sparsity_coeff)


def host_sync_is_free(device: torch.device) -> bool:
    """True on a CPU: reading a tensor's value costs nothing, so the NaN/inf guard runs every step."""
    return device.type == "cpu"


def train_sae(sae: SAE, batches, cfg: TrainConfig, *, resume: bool = False) -> list[dict]:
    """Train `sae` in place; return the history (a list of dicts, one every cfg.log_every steps).

    resume=True continues from the latest checkpoint in cfg.checkpoint_dir when there is one (and starts
    afresh otherwise); cfg.resume_from names a checkpoint (manifest .json or directory) explicitly.
    A resumed CPU run ends bitwise identical to an uninterrupted one.
    """
    # ---- checks that fail now, not hours from now
    if not isinstance(cfg, TrainConfig):
        raise ValueError(f"cfg must be a TrainConfig, got {type(cfg).__name__}")
    if not (isinstance(sae, nn.Module) and hasattr(sae, "loss") and hasattr(sae, "d_sae")):
        raise ValueError(f"sae must be a saelib SAE (an nn.Module with loss() and d_sae), got {type(sae).__name__}")
    info = D.init_distributed()
    device = D.resolve_device(cfg.device, info.local_rank)
    if cfg.batch_size % info.world_size:
        raise ValueError(f"batch_size={cfg.batch_size} must be divisible by the number of ranks "
                         f"({info.world_size}); allowed: a multiple of {info.world_size}")
    if resume and cfg.checkpoint_dir is None and cfg.resume_from is None:
        raise ValueError("resume=True needs cfg.checkpoint_dir (or cfg.resume_from)")
    coeff = cfg.sparsity_coeff
    if coeff is None:
        if getattr(sae, "architecture", None) not in ("topk", "batchtopk"):
            raise ValueError(f"sparsity_coeff is required to train a {type(sae).__name__} "
                             "(allowed: a number >= 0; only TopK and BatchTopK ignore it)")
        coeff = 0.0
    if cfg.checkpoint_dir is not None and info.is_main:
        try:
            Path(cfg.checkpoint_dir).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ValueError(f"checkpoint_dir={cfg.checkpoint_dir!r} cannot be used as a directory: {e}") from None

    # ---- model, data, optimiser, resampling
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

    # ---- a fresh start, or the state of a checkpoint
    path = cfg.resume_from
    if path is None and resume:
        found = latest_checkpoint(cfg.checkpoint_dir) if cfg.checkpoint_dir is not None else None
        path = None if found is None else str(found)
    path = D.broadcast_object(path)
    if path is not None:
        state = restore_run(path, sae, optimizer, names, source, tracker, cfg, info)
    else:
        torch.manual_seed(cfg.seed)
        state = RunState()

    objective: nn.Module = _Objective(sae, training_loss(sae, device))
    if info.enabled:
        objective = nn.parallel.DistributedDataParallel(
            objective, device_ids=[device.index] if device.type == "cuda" else None)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if cfg.precision == "bf16"
                else contextlib.nullcontext())
    check_every = cfg.check_finite_every or (1 if host_sync_is_free(device) else cfg.log_every)
    where = (f"the latest checkpoint in {cfg.checkpoint_dir} (if one was written) holds the last good state"
             if cfg.checkpoint_dir else "no checkpoint_dir was set, so there is no checkpoint to go back to")
    last_ok = state.step
    grad_norm = None
    bar = tqdm(total=total, initial=state.step, disable=not (cfg.progress and info.is_main),
               desc=f"train {type(sae).__name__}", dynamic_ncols=True)

    # ---- the loop
    for t in range(state.step, total):          # t: steps already taken; this is update t + 1
        s = t + 1
        lr = cfg.lr * lr_multiplier(t, total, cfg.lr_warmup_steps, cfg.lr_decay_steps, state.last_resample_step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        lam = sparsity_coeff_at(t, coeff, cfg.sparsity_warmup)
        track, reset = tracking(t, cfg.resample_every, cfg.window) if tracker is not None else (False, False)
        if reset and tracker is not None:
            tracker.reset()                      # the window before the next resample opens

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
            check_finite(s, last_ok, where, out=out)

        sae.before_optimizer_step()
        if cfg.grad_clip_norm is not None:
            grad_norm = nn.utils.clip_grad_norm_(params.values(), cfg.grad_clip_norm)
        optimizer.step()
        sae.after_optimizer_step()
        optimizer.zero_grad(set_to_none=True)
        if track and tracker is not None:
            tracker.update(out.feature_max())
        state.step = s

        if is_check:
            check_finite(s, last_ok, where, params=params)
            last_ok = s
        if is_log:
            row = history_row(out, s, cfg.batch_size, lr, lam, grad_norm, state.n_resampled)
            state.history.append(row)
            state.n_resampled = 0
            bar.set_postfix(loss=f"{row['loss']:.4g}", l0=f"{row['l0']:.1f}", refresh=False)
        if tracker is not None and s % cfg.resample_every == 0 and s < total:
            n = resample_now(sae, optimizer, source.next_batch, tracker, seed=cfg.seed, step=s, rank=info.rank,
                             pool=cfg.resample_pool, batch_size=cfg.batch_size, device=device)
            if n:
                state.last_resample_step = s
                state.n_resampled += n
        if is_ckpt:
            save_run(sae, optimizer, names, source, tracker, state, cfg, info)
        bar.update(1)
    bar.close()
    return state.history
