"""Input normalisation: one scalar s, estimated once from data, so that SAEs train on s * x.

Activation norms differ by orders of magnitude between models and sites, so the papers rescale the
inputs by a single constant before training (which keeps one sparsity coefficient meaningful across
sites). Two conventions:

  "unit_mean_squared_norm"  (GDM, Gated / JumpReLU papers)   E||s x||^2 = 1       ->  s = 1 / sqrt(E||x||^2)
  "sqrt_d_in_mean_norm"     (Anthropic, April 2024 update)    E||s x||  = sqrt(n)  ->  s = sqrt(n) / E||x||
  "none"                                                                          ->  s = 1

The SAE then sees s * x and reconstructs s * x; divide its output by s to return to the model's
space. `SAE.fold_input_scaling(s)` (saelib/models/base.py) folds s into the weights when saving, so a saved
SAE acts directly on raw activations.
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from saelib.validation import check_choice

NORMALIZATIONS = ("none", "unit_mean_squared_norm", "sqrt_d_in_mean_norm")


def estimate_scale(x: torch.Tensor | Iterable[torch.Tensor], normalization: str, chunk_rows: int = 4096) -> float:
    """The scalar s for `normalization`, estimated from activations x: [n, d_in] (or an iterable of
    such chunks, so large sets never need one float32 copy in memory). Norms accumulate in float64."""
    check_choice("normalization", normalization, NORMALIZATIONS)
    if normalization == "none":
        return 1.0
    chunks = x.split(chunk_rows) if isinstance(x, torch.Tensor) else x
    n, sum_norm, sum_sq_norm, d_in = 0, 0.0, 0.0, 0
    for chunk in chunks:
        sq_norm = chunk.to(torch.float64).pow(2).sum(dim=-1)  # [rows]
        sum_sq_norm += sq_norm.sum().item()
        sum_norm += sq_norm.sqrt().sum().item()
        n += sq_norm.numel()
        d_in = chunk.shape[-1]
    if n == 0:
        raise ValueError("cannot estimate an input scale from zero activations")
    if sum_sq_norm == 0.0:
        raise ValueError("cannot estimate an input scale: every activation is exactly zero")
    if normalization == "unit_mean_squared_norm":
        return 1.0 / math.sqrt(sum_sq_norm / n)  # E||s x||^2 = 1
    return math.sqrt(d_in) / (sum_norm / n)  # E||s x|| = sqrt(d_in)
