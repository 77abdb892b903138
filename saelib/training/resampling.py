"""Resampling dead features (Anthropic, "Towards Monosemanticity" and its 2023 updates).

Every `resample_every` steps, features that did not fire once during the last `resample_window`
steps are given new directions:

  1. draw a pool of inputs and compute each one's reconstruction loss  l(x) = ||x - x_hat||^2
  2. pick one input per dead feature, without replacement, with probability proportional to l(x)^2
  3. decoder row    W_dec[i]    = x / ||x||
     encoder column W_enc[:, i] = 0.2 * (mean encoder norm of the alive features) * x / ||x||
     encoder bias   b_enc[i]    = 0
  4. reset the Adam moments of every row/column that changed

Works on the standard ReLU SAE (W_enc, b_enc) and on the Gated SAE (W_gate, b_gate; r_mag and b_mag
reset to 0, so W_mag = W_gate for the new feature; an untied W_mag copies the new gate column).
The training loop re-applies the learning-rate warm-up after each resample (Gated paper).

Sampling proportional to l^2 without replacement over a stream of batches uses the Gumbel-top-k
trick: key = log(l^2) + Gumbel noise, keep the k largest keys seen so far. Only k inputs are ever held.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from saelib.training import distributed as D

ENCODER_SCALE = 0.2

# feature dimension of each parameter a resample touches (W_enc is [d_in, d_sae], W_dec [d_sae, d_in])
_FEATURE_DIM = {"W_enc": 1, "W_gate": 1, "W_mag": 1, "W_dec": 0,
                "b_enc": 0, "b_gate": 0, "r_mag": 0, "b_mag": 0}


class DeadFeatureTracker:
    """Largest activation of each feature since the last reset; a feature is dead if it stayed <= 0."""

    def __init__(self, d_sae: int, device: torch.device):
        self.max_act = torch.zeros(d_sae, device=device)   # [d_sae]

    def reset(self) -> None:
        self.max_act.zero_()

    def update(self, feature_max: torch.Tensor) -> None:  # [d_sae], LossOutput.feature_max(); no host sync
        torch.maximum(self.max_act, feature_max.detach().float(), out=self.max_act)

    def dead_mask(self) -> torch.Tensor:  # [d_sae] bool, the same on every rank
        return D.all_reduce(self.max_act.clone(), op="max") <= 0


def tracking(t: int, every: int, window: int) -> tuple[bool, bool]:
    """(track, reset) for the update numbered t (0-based): the tracker watches the last `window` updates
    before each resample (every `every` updates) and is reset when that window opens."""
    phase = t % every
    return phase >= every - window, phase == every - window


def resample_now(sae: Any, optimizer: torch.optim.Optimizer, next_batch: Callable[[], torch.Tensor],
                 tracker: DeadFeatureTracker, *, seed: int, step: int, rank: int, pool: int, batch_size: int,
                 device: torch.device) -> int:
    """One resample after update `step`: the dead features get directions drawn from about `pool` inputs
    (ceil(pool / batch_size) batches of this rank's source). Returns how many were resampled.

    The one host sync here is the count of dead features. The generator is seeded from (seed, step, rank),
    so a resumed run resamples exactly as an uninterrupted one."""
    dead = tracker.dead_mask()                                      # [d_sae] bool, same on all ranks
    n_dead = int(dead.sum())
    if n_dead == 0:
        return 0
    g = torch.Generator(device=device).manual_seed(seed * 1_000_003 + step * 101 + rank)
    inputs = sample_inputs_by_loss(sae, next_batch, math.ceil(pool / batch_size), n_dead, g)
    return resample_dead_features(sae, optimizer, dead, inputs)


def encoder_names(sae: Any) -> tuple[str, str]:
    """(encoder weight, encoder bias) names of the features a resample rewrites."""
    for w, b in (("W_enc", "b_enc"), ("W_gate", "b_gate")):
        if hasattr(sae, w) and hasattr(sae, b):
            return w, b
    raise ValueError(f"{type(sae).__name__} cannot be resampled: it has neither W_enc/b_enc (standard) nor "
                     "W_gate/b_gate (Gated) parameters")


@torch.no_grad()
def sample_inputs_by_loss(sae: Any, next_batch: Callable[[], torch.Tensor], n_batches: int,
                          k: int, generator: torch.Generator) -> torch.Tensor:
    """k inputs [k, d_in] drawn without replacement, P(x) proportional to ||x - sae(x)||^4.

    Each rank scores `n_batches` of its own batches; the candidates are gathered so that every rank
    returns the same k inputs (rows repeat only when the pool holds fewer than k inputs).
    """
    keys: torch.Tensor | None = None
    xs: torch.Tensor | None = None
    for _ in range(n_batches):
        x = next_batch()
        x = x.to(sae.W_dec.device, sae.W_dec.dtype)                           # [batch, d_in]
        loss = (x - sae(x)).pow(2).sum(-1)                                    # [batch]
        u = torch.rand(loss.shape, generator=generator, device=generator.device).to(loss.device)
        key = 2 * loss.log() - torch.log(-torch.log(u.clamp_min(1e-20)))     # log(l^2) + Gumbel
        keys = key if keys is None else torch.cat([keys, key])
        xs = x if xs is None else torch.cat([xs, x])
        if keys.numel() > k:
            top = keys.topk(k).indices
            keys, xs = keys[top], xs[top]
    assert keys is not None and xs is not None, "n_batches must be >= 1"
    keys, xs = D.all_gather_cat(keys), D.all_gather_cat(xs)
    top = keys.topk(min(k, keys.numel())).indices
    chosen = xs[top]                                                          # [<=k, d_in]
    return chosen[torch.arange(k, device=chosen.device) % chosen.shape[0]]


@torch.no_grad()
def resample_dead_features(sae: Any, optimizer: torch.optim.Optimizer, dead: torch.Tensor,
                           inputs: torch.Tensor, encoder_scale: float = ENCODER_SCALE) -> int:
    """Give each dead feature (dead: [d_sae] bool) a direction from `inputs` [n_dead, d_in]. Returns n_dead."""
    idx = dead.nonzero().squeeze(1)                                           # [n_dead]
    n_dead = idx.numel()
    if n_dead == 0:
        return 0
    w_name, b_name = encoder_names(sae)
    W_enc, W_dec = getattr(sae, w_name), sae.W_dec                            # [d_in, d_sae], [d_sae, d_in]
    alive = ~dead
    alive_norm = W_enc[:, alive].norm(dim=0).mean() if alive.any() else torch.tensor(1.0)
    x = inputs[:n_dead].to(W_dec.dtype)
    direction = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)             # [n_dead, d_in]

    W_dec[idx] = direction
    W_enc[:, idx] = (encoder_scale * alive_norm * direction).T.to(W_enc.dtype)
    getattr(sae, b_name)[idx] = 0
    touched = ["W_dec", w_name, b_name]
    for name in ("r_mag", "b_mag"):                                           # Gated magnitude path
        if isinstance(getattr(sae, name, None), torch.Tensor):
            getattr(sae, name)[idx] = 0
            touched.append(name)
    if w_name == "W_gate" and isinstance(getattr(sae, "W_mag", None), nn.Parameter):   # untied Gated
        sae.W_mag[:, idx] = W_enc[:, idx]
        touched.append("W_mag")

    for name in touched:                                                      # fresh Adam moments
        param = getattr(sae, name)
        for value in optimizer.state.get(param, {}).values():
            if isinstance(value, torch.Tensor) and value.shape == param.shape:
                value.index_fill_(_FEATURE_DIM[name], idx, 0)
    return n_dead
