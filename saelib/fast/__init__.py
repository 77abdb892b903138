"""Speed-ups kept beside the models, never inside them.

`training_loss(sae)` is chosen once by the trainer: it returns the function a training step calls,
`loss_fn(x, sparsity_coeff) -> LossOutput`, equal in value and gradient to the model's dense
`sae.loss` (tested in float64, tests/test_sparse.py):
    ReLU, JumpReLU (the paper's       on a CPU: the sparse step of saelib/fast/steps.py, which finishes
    recipe, a compact kernel)         densely (reusing the encoder product) when the batch is not sparse
                                      enough; elsewhere `sae.loss`
    Gated (tied weights)              GatedActivations (fewer temporaries) on any device, plus the sparse
                                      step on a CPU (saelib/fast/gated.py)
    TopK                              the sparse step on any device (its support is always B*k, so
                                      there is no density test)
    anything else                     `sae.loss` (so also a subclass, or an SAE whose instance has its own
                                      `loss`, e.g. a wrapper)
With gradients disabled (evaluation) every function calls `sae.loss`.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from saelib.fast.gated import GatedActivations, gated_has_fast_step, gated_step
from saelib.fast.sparse import SPARSE_MAX_DENSITY
from saelib.fast.steps import TopKStep, jumprelu_has_sparse_step, jumprelu_step, relu_step
from saelib.models.base import SAE, LossOutput
from saelib.models.gated import GatedSAE
from saelib.models.jumprelu import JumpReLUSAE
from saelib.models.relu import ReLUSAE
from saelib.models.topk import TopKSAE

__all__ = ["SPARSE_MAX_DENSITY", "GatedActivations", "LossFn", "training_loss"]

LossFn = Callable[[torch.Tensor, float | torch.Tensor], LossOutput]
Step = Callable[[Any, torch.Tensor, float | torch.Tensor, float], LossOutput]


def training_loss(sae: SAE, device: torch.device | str | None = None, *,
                  max_density: float = SPARSE_MAX_DENSITY) -> LossFn:
    """The loss function a training step should call for `sae` on `device` (default: the SAE's device).

    max_density: take the sparse step (CPU) when at most this fraction of the batch x d_sae entries can
    carry a gradient; 0 = never."""
    device = torch.device(device) if device is not None else sae.W_dec.device
    cpu = device.type == "cpu"
    if "loss" in vars(sae):                   # a loss set on the instance (a wrapper) is always honoured
        return sae.loss
    # by exact type: a subclass may change the equations
    if type(sae) is TopKSAE:
        return TopKStep(sae)
    step: Step | None = None
    if type(sae) is ReLUSAE and cpu:
        step = relu_step
    elif type(sae) is JumpReLUSAE and cpu and jumprelu_has_sparse_step(sae) and sae.paper_recipe:  # no 2025 options
        step = jumprelu_step
    elif type(sae) is GatedSAE and gated_has_fast_step(sae):
        step = gated_step
        max_density = max_density if cpu else 0.0
    if step is None:
        return sae.loss
    return _Fast(sae, step, max_density)


class _Fast:
    """loss_fn(x, sparsity_coeff): the fast step while gradients are wanted, else the model's loss."""

    def __init__(self, sae: SAE, step: Step, max_density: float):
        self.sae, self.step, self.max_density = sae, step, float(max_density)

    def __call__(self, x: torch.Tensor, sparsity_coeff: float | torch.Tensor) -> LossOutput:
        if not torch.is_grad_enabled():
            return self.sae.loss(x, sparsity_coeff)
        return self.step(self.sae, x, sparsity_coeff, self.max_density)

    def __repr__(self) -> str:
        return f"{self.step.__name__}(max_density={self.max_density})"
