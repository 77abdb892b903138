"""Straight-through estimators for JumpReLU SAEs (JumpReLU paper, §4, eqs. 11-12).

Forward, with pre-activations z [batch, d_sae] and thresholds theta [d_sae]:
    JumpReLU_theta(z) = z * H(z - theta)                       # eq. 4
    L0 term           = sum_i H(z_i - theta_i)                 # eq. 6, averaged over the batch
Backward (pseudo-derivatives; K a kernel, eps the bandwidth):
    d/dz     JumpReLU_theta(z) := H(z - theta)
    d/dtheta JumpReLU_theta(z) := -(theta / eps) K((z - theta) / eps)   # eq. 11
    d/dz     H(z - theta)      := 0          (the L0 term trains theta only)
    d/dtheta H(z - theta)      := -(1 / eps) K((z - theta) / eps)       # eq. 12
The kernel window is centred on the *pre-activation* z at the threshold, u = (z - theta) / eps.

Both outputs come from one autograd function so the kernel is evaluated once per backward pass:
    grad_theta_i = sum_b K(u_bi) * ( -(theta_i / eps_i) * grad_f_bi  -  (1 / eps_i) * grad_l0 / batch )
"""
from __future__ import annotations

import torch

from .kernels import get_kernel


class JumpReLUWithL0(torch.autograd.Function):
    """(z, theta, eps) -> (f = JumpReLU_theta(z) [batch, d_sae], mean L0 per token (scalar))."""

    @staticmethod
    def forward(ctx, z, theta, eps, kernel_name: str):
        active = z > theta                                   # H(z - theta)   [batch, d_sae]
        f = z * active                                       # eq. 4
        l0 = active.sum(dtype=z.dtype) / z.shape[0]          # eq. 6, mean over the batch
        ctx.save_for_backward(z, theta, eps)
        ctx.kernel_name = kernel_name
        return f, l0

    @staticmethod
    def backward(ctx, grad_f, grad_l0):
        z, theta, eps = ctx.saved_tensors
        grad_z = grad_theta = None
        if grad_f is not None and ctx.needs_input_grad[0]:
            grad_z = grad_f * (z > theta)                    # d/dz JumpReLU := H(z - theta)
        if ctx.needs_input_grad[1]:
            k = get_kernel(ctx.kernel_name)((z - theta) / eps)   # K(u), u centred on the threshold
            # per-element weight on K(u): -(theta/eps) * grad_f  (eq. 11)  -(1/eps) * grad_l0/batch (eq. 12)
            g = torch.zeros((), dtype=z.dtype, device=z.device)
            if grad_f is not None:
                g = g - (theta / eps) * grad_f
            if grad_l0 is not None:
                g = g - grad_l0 / (eps * z.shape[0])
            grad_theta = (k * g).sum(0)                      # [d_sae]
        return grad_z, grad_theta, None, None


def jumprelu_with_l0(z: torch.Tensor, theta: torch.Tensor, eps: torch.Tensor | float,
                     kernel: str = "rectangle") -> tuple[torch.Tensor, torch.Tensor]:
    """f = JumpReLU_theta(z) and the batch-mean L0, both with the paper's pseudo-derivatives."""
    eps = torch.as_tensor(eps, dtype=z.dtype, device=z.device)
    return JumpReLUWithL0.apply(z, theta, eps, kernel)


def jumprelu(z, theta, eps, kernel: str = "rectangle") -> torch.Tensor:
    """JumpReLU_theta(z) with the pseudo-derivative of eq. 11 for theta."""
    return jumprelu_with_l0(z, theta, eps, kernel)[0]


def step_l0(z, theta, eps, kernel: str = "rectangle") -> torch.Tensor:
    """Batch-mean of sum_i H(z_i - theta_i) with the pseudo-derivative of eq. 12 for theta."""
    return jumprelu_with_l0(z, theta, eps, kernel)[1]
