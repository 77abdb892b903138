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
A kernel with compact support (rectangle, triangular, Epanechnikov) is zero outside the window
|z - theta| < support * eps, which holds only a few pre-activations per feature; on CPU the kernel is
evaluated there only (no [batch, d_sae] temporaries). On GPU, and for the Gaussian kernels, it is
evaluated densely (a sparse gather would cost a host synchronisation there).
"""
from __future__ import annotations

import math

import torch

from saelib.models.kernels import KERNEL_SUPPORT, get_kernel


class JumpReLUWithL0(torch.autograd.Function):
    """(z, theta, eps) -> (f = JumpReLU_theta(z) [batch, d_sae], mean L0 per token (scalar))."""

    @staticmethod
    def forward(ctx, z, theta, eps, kernel_name: str, inplace: bool, batch: int | None):
        u = z - theta                                        # [batch, d_sae]; H(z - theta) = H(u), exactly
        fires = torch.gt(u, 0, out=torch.empty_like(u))      # H(z - theta) as 0./1. (a float mask:
                                                             #  multiplying by it is vectorised)
        if inplace:                                          # eq. 4: z * H(z - theta), written over z
            ctx.mark_dirty(z)
            f = z.mul_(fires)
        else:
            f = z * fires                                    # eq. 4: z * H(z - theta)
        ctx.batch = z.shape[0] if batch is None else batch
        l0 = torch.count_nonzero(fires).to(f.dtype) / ctx.batch   # eq. 6, mean over the batch
        ctx.save_for_backward(u, theta, eps)                 # z itself is not needed again
        ctx.kernel_name = kernel_name
        return f, l0

    @staticmethod
    def backward(ctx, grad_f, grad_l0):
        u, theta, eps = ctx.saved_tensors
        grad_z = grad_theta = None
        if grad_f is not None and ctx.needs_input_grad[0]:
            grad_z = grad_f * torch.gt(u, 0, out=torch.empty_like(grad_f))   # d/dz JumpReLU := H(z - theta)
        if ctx.needs_input_grad[1]:
            batch, d_sae = ctx.batch, u.shape[1]
            theta, eps = theta.expand(d_sae), eps.expand(d_sae)                  # [d_sae]
            support = KERNEL_SUPPORT[ctx.kernel_name]
            if u.device.type == "cpu" and math.isfinite(support):
                # the pre-activations inside the kernel's window (a hair wider: K itself decides the edge)
                half = window_half_width(ctx.kernel_name, eps)
                b, i = ((u > -half) & (u < half)).nonzero(as_tuple=True)
                u, theta, eps = u[b, i], theta[i], eps[i]                        # [n_window]
                if grad_f is not None:
                    grad_f = grad_f[b, i]
            k = get_kernel(ctx.kernel_name)(u / eps)         # K((z - theta) / eps), centred on the threshold
            # per-element weight on K(u): -(theta/eps) * grad_f  (eq. 11)  -(1/eps) * grad_l0/batch (eq. 12)
            g = torch.zeros((), dtype=u.dtype, device=u.device)
            if grad_f is not None:
                g = g - (theta / eps) * grad_f
            if grad_l0 is not None:
                g = g - grad_l0 / (eps * batch)
            if u.dim() == 1:                                 # window entries: add each to its feature
                grad_theta = torch.zeros(d_sae, dtype=u.dtype, device=u.device).index_add_(0, i, k * g)
            else:
                grad_theta = (k * g).sum(0)                  # [d_sae]
        return grad_z, grad_theta, None, None, None, None


def window_half_width(kernel: str, eps: torch.Tensor) -> torch.Tensor:
    """How far from the threshold K((z - theta) / eps) can be non-zero: support * eps, a hair wider (the
    kernel itself decides the edge). Infinite for the Gaussian kernels."""
    return 1.001 * KERNEL_SUPPORT[kernel] * eps


def jumprelu_with_l0(z: torch.Tensor, theta: torch.Tensor, eps: torch.Tensor | float,
                     kernel: str = "rectangle", inplace: bool = False,
                     batch: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """f = JumpReLU_theta(z) and the batch-mean L0, both with the paper's pseudo-derivatives.

    inplace=True writes f over z, which must be a temporary that nothing else uses (a freshly computed
    pre-activation): one [batch, d_sae] tensor less per training step.
    batch: the number of tokens the L0 is averaged over, if not z.shape[0] (a sparse step passes the
    selected pre-activations as one [1, nnz] row, with theta and eps gathered to match).
    """
    eps = torch.as_tensor(eps, dtype=z.dtype, device=z.device)
    return JumpReLUWithL0.apply(z, theta, eps, kernel, inplace, batch)


def jumprelu(z, theta, eps, kernel: str = "rectangle") -> torch.Tensor:
    """JumpReLU_theta(z) with the pseudo-derivative of eq. 11 for theta."""
    return jumprelu_with_l0(z, theta, eps, kernel)[0]


def step_l0(z, theta, eps, kernel: str = "rectangle") -> torch.Tensor:
    """Batch-mean of sum_i H(z_i - theta_i) with the pseudo-derivative of eq. 12 for theta."""
    return jumprelu_with_l0(z, theta, eps, kernel)[1]


# ----------------------------------------------------------------------------- successors (2025)
# Dense pseudo-derivatives with an option the 2024 paper does not have: `to_input`, straight-through
# gradients that also reach the pre-activations z (and so the encoder) through the jump. The step depends on
# z only through z - theta, so its pseudo-derivative in z is minus the one in theta (SAELens's
# `jumprelu_ste_to_input`, which its docs attribute to Anthropic's January-2025 recipe):
#     d/dz H(z - theta)      := +(1 / eps)     K((z - theta) / eps)
#     d/dz JumpReLU_theta(z) := H(z - theta) + (theta / eps) K((z - theta) / eps)
# With to_input=False these are the paper's eqs. 11-12 (d/dz H := 0, d/dz JumpReLU := H).


class JumpReLUSTE(torch.autograd.Function):
    """f = z * H(z - theta) [batch, d_sae]; theta gets eq. 11, z gets H (+ the jump if to_input)."""

    @staticmethod
    def forward(ctx, z, theta, eps, kernel_name: str, to_input: bool):
        ctx.save_for_backward(z, theta, eps)
        ctx.kernel_name, ctx.to_input = kernel_name, to_input
        return torch.where(z > theta, z, 0)

    @staticmethod
    def backward(ctx, grad_f):
        z, theta, eps = ctx.saved_tensors
        u = z - theta
        jump = (theta / eps) * get_kernel(ctx.kernel_name)(u / eps) * grad_f       # [batch, d_sae]
        grad_z = torch.where(u > 0, grad_f, 0)
        if ctx.to_input:
            grad_z = grad_z + jump
        grad_theta = -jump.sum(0) if ctx.needs_input_grad[1] else None
        return grad_z, grad_theta, None, None, None


class HeavisideSTE(torch.autograd.Function):
    """H(z - theta) as 0/1 in z's dtype [batch, d_sae]; theta gets eq. 12, z gets the jump if to_input."""

    @staticmethod
    def forward(ctx, z, theta, eps, kernel_name: str, to_input: bool):
        ctx.save_for_backward(z, theta, eps)
        ctx.kernel_name, ctx.to_input = kernel_name, to_input
        return (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx, grad_h):
        z, theta, eps = ctx.saved_tensors
        jump = get_kernel(ctx.kernel_name)((z - theta) / eps) * grad_h / eps         # [batch, d_sae]
        grad_z = jump if ctx.to_input else None
        grad_theta = -jump.sum(0) if ctx.needs_input_grad[1] else None
        return grad_z, grad_theta, None, None, None


def jumprelu_ste(z: torch.Tensor, theta: torch.Tensor, eps: torch.Tensor, kernel: str = "rectangle",
                 to_input: bool = False) -> torch.Tensor:
    """JumpReLU_theta(z) (eq. 4), computed densely, with eq. 11 for theta and, if to_input, the jump for z."""
    return JumpReLUSTE.apply(z, theta, torch.as_tensor(eps, dtype=z.dtype, device=z.device), kernel, to_input)


def heaviside_ste(z: torch.Tensor, theta: torch.Tensor, eps: torch.Tensor, kernel: str = "rectangle",
                  to_input: bool = False) -> torch.Tensor:
    """H(z - theta) [batch, d_sae] with eq. 12 for theta and, if to_input, the jump for z."""
    return HeavisideSTE.apply(z, theta, torch.as_tensor(eps, dtype=z.dtype, device=z.device), kernel, to_input)
