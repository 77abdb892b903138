"""Kernels K(u) for the JumpReLU straight-through estimator (JumpReLU paper, §4 and appendix).

The pseudo-derivative of the threshold is a kernel density estimate: with bandwidth eps,
    d/dtheta H(z - theta) := -(1/eps) K((z - theta) / eps)
so K must be a density: integrate to 1 over the real line. `support` is the half-width of the region
where K is non-zero (inf for Gaussian kernels); only pre-activations with |z - theta| < support * eps
receive a threshold gradient.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch

from saelib.validation import check_choice

_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def rectangle_kernel(u: torch.Tensor) -> torch.Tensor:
    """K(u) = 1[|u| < 1/2]  (the paper's default)."""
    return (u.abs() < 0.5).to(u.dtype)


def triangular_kernel(u: torch.Tensor) -> torch.Tensor:
    """K(u) = max(0, 1 - |u|)."""
    return (1.0 - u.abs()).clamp_min(0.0)


def gaussian_kernel(u: torch.Tensor) -> torch.Tensor:
    """K(u) = exp(-u^2 / 2) / sqrt(2 pi)."""
    return torch.exp(-0.5 * u * u) * _INV_SQRT_2PI


def epanechnikov_kernel(u: torch.Tensor) -> torch.Tensor:
    """K(u) = 3/4 (1 - u^2) on |u| <= 1."""
    return (0.75 * (1.0 - u * u)).clamp_min(0.0)


def quartic_gaussian_kernel(u: torch.Tensor) -> torch.Tensor:
    """Fourth-order Gaussian kernel K(u) = (3 - u^2)/2 * phi(u): integrates to 1, second moment 0.

    A "higher-order" kernel: it takes negative values for |u| > sqrt(3), trading positivity for lower bias.
    """
    return 0.5 * (3.0 - u * u) * gaussian_kernel(u)


KERNELS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "rectangle": rectangle_kernel,
    "triangular": triangular_kernel,
    "gaussian": gaussian_kernel,
    "epanechnikov": epanechnikov_kernel,
    "quartic_gaussian": quartic_gaussian_kernel,
}

# half-width of each kernel's support, in units of the bandwidth
KERNEL_SUPPORT: dict[str, float] = {
    "rectangle": 0.5,
    "triangular": 1.0,
    "gaussian": math.inf,
    "epanechnikov": 1.0,
    "quartic_gaussian": math.inf,
}


def get_kernel(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """Return K(u) by name; ValueError listing the allowed names otherwise."""
    check_choice("kernel", name, KERNELS)
    return KERNELS[name]


def fraction_in_window(z: torch.Tensor, theta: torch.Tensor, eps, kernel: str = "rectangle") -> torch.Tensor:
    """Per feature [d_sae]: the fraction of pre-activations z [batch, d_sae] inside the kernel window
    |z - theta| < support * eps (one bandwidth for the unbounded Gaussian kernels). These are the only
    pre-activations that give the threshold a gradient (exactly so for the compact kernels)."""
    check_choice("kernel", kernel, KERNELS)
    half_width = KERNEL_SUPPORT[kernel] if math.isfinite(KERNEL_SUPPORT[kernel]) else 1.0
    return ((z - theta).abs() < half_width * torch.as_tensor(eps, dtype=z.dtype)).to(z.dtype).mean(0)
