"""JumpReLU sparse autoencoder (Rajamanoharan et al. 2024, "Jumping Ahead").

    x' = x - b_dec
    pi = x' W_enc + b_enc                                          # pre-activations [batch, d_sae]
    f  = JumpReLU_theta(pi) = pi * H(pi - theta),  theta = exp(log_threshold) > 0      # eq. 4
    x_hat = f W_dec + b_dec
    L = ||x - x_hat||^2 + lambda * sum_i H(pi_i - theta_i)                              # eq. 6 (L0)
H has zero gradient almost everywhere, so theta is trained with straight-through pseudo-derivatives
(saelib/models/ste.py, eqs. 11-12): a kernel density estimate, with kernel K and bandwidth eps, of the
gradient of the *expected* loss with respect to theta.

Paper defaults: rectangle kernel, eps = 0.001, theta_init = 0.001, W_enc = W_dec^T at init, zero biases,
inputs scaled to unit mean squared norm. Options:
    penalty   "l0" (default) | "l1": lambda * ||f||_1, the ablation of the paper's §5
    bandwidth a float > 0, or "adaptive": a per-feature bandwidth eps_i adapted during training so that
              about `adaptive_window_count` pre-activations of each batch fall in feature i's window
              (a k-nearest-neighbour style bandwidth; an extension, not in the paper)
"""
from __future__ import annotations

import math

import torch
from torch import nn

from saelib.models.base import SAE, LossOutput, check_sparsity_coeff
from saelib.models.kernels import KERNEL_SUPPORT, KERNELS
from saelib.models.ste import jumprelu_with_l0
from saelib.validation import check_choice, check_positive

PENALTIES = ("l0", "l1")


class JumpReLUSAE(SAE):
    architecture = "jumprelu"
    bandwidths: torch.Tensor

    def __init__(self, d_in: int, d_sae: int, kernel: str = "rectangle", bandwidth: float | str = 1e-3,
                 theta_init: float = 1e-3, penalty: str = "l0", normalize_decoder: bool = True,
                 decoder_init_norm: float = 1.0, adaptive_window_count: float = 16.0,
                 adaptive_rate: float = 0.05):
        super().__init__(d_in, d_sae)
        check_choice("kernel", kernel, KERNELS)
        check_choice("penalty", penalty, PENALTIES)
        check_choice("normalize_decoder", normalize_decoder, (True, False))
        if bandwidth != "adaptive":
            check_positive("bandwidth", bandwidth)   # a number > 0, or "adaptive"
        check_positive("theta_init", theta_init)
        check_positive("decoder_init_norm", decoder_init_norm)
        check_positive("adaptive_window_count", adaptive_window_count)
        check_positive("adaptive_rate", adaptive_rate)
        self.kernel, self.penalty = kernel, penalty
        self.adaptive = bandwidth == "adaptive"
        self.bandwidth: float | str = bandwidth if self.adaptive else float(bandwidth)
        self.theta_init = float(theta_init)
        self.normalize_decoder = normalize_decoder
        self.decoder_init_norm = float(decoder_init_norm)
        self.adaptive_window_count, self.adaptive_rate = float(adaptive_window_count), float(adaptive_rate)

        self.init_weights(self.decoder_init_norm)            # W_dec, W_enc = W_dec^T, b_enc = 0, b_dec = 0
        self.log_threshold = nn.Parameter(torch.full((d_sae,), math.log(self.theta_init)))   # [d_sae]
        # per-feature bandwidths eps [d_sae]: constant unless bandwidth="adaptive" (then updated in loss()).
        # Held in float64 so that a float64 SAE uses the exact eps (a float32 buffer would round 1e-3 by
        # ~5e-8 relative); loss() casts it to the SAE's dtype.
        start = 1e-3 if self.adaptive else float(bandwidth)
        self.register_buffer("bandwidths", torch.full((d_sae,), start, dtype=torch.float64))

    @property
    def threshold(self) -> torch.Tensor:                                    # theta [d_sae]
        return torch.exp(self.log_threshold)

    def config(self) -> dict:
        return {**super().config(), "kernel": self.kernel, "bandwidth": self.bandwidth,
                "theta_init": self.theta_init, "penalty": self.penalty,
                "normalize_decoder": self.normalize_decoder, "decoder_init_norm": self.decoder_init_norm,
                "adaptive_window_count": self.adaptive_window_count, "adaptive_rate": self.adaptive_rate}

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        pi = self.pre_activations(x)                                        # [batch, d_sae]
        return pi * (pi > self.threshold)                                   # eq. 4

    def loss(self, x: torch.Tensor, sparsity_coeff: float | torch.Tensor) -> LossOutput:
        check_sparsity_coeff(sparsity_coeff)
        pi = self.pre_activations(x)                                        # x' W_enc + b_enc  [batch, d_sae]
        theta = self.threshold                                              # [d_sae]
        if self.adaptive and self.training:
            self._adapt_bandwidths(pi.detach(), theta.detach())
        eps = self.bandwidths.to(pi.dtype)                                  # [d_sae]
        # f = pi * H(pi - theta) (eq. 4) and the batch mean of sum_i H(pi_i - theta_i) (eq. 6), with the
        # pseudo-derivatives of eqs. 11-12 for theta
        f, l0 = jumprelu_with_l0(pi, theta, eps, self.kernel)               # [batch, d_sae], scalar
        x_hat = self.decode(f)                                              # f W_dec + b_dec  [batch, d_in]
        reconstruction = (x - x_hat).pow(2).sum(-1).mean()                 # ||x - x_hat||^2, batch mean
        sparsity = l0 if self.penalty == "l0" else f.sum(-1).mean()         # L0 (eq. 6) or ||f||_1 (§5)
        loss = reconstruction + sparsity_coeff * sparsity                   # eq. 6
        return LossOutput(loss, reconstruction, sparsity, self.zero_aux(x), f, x_hat)

    @torch.no_grad()
    def _adapt_bandwidths(self, pi: torch.Tensor, theta: torch.Tensor) -> None:
        """Move log eps_i towards the bandwidth that puts `adaptive_window_count` pre-activations of the
        batch inside feature i's window (multiplicative update, clamped to [1e-5, 1]), in pi's dtype."""
        half_width = KERNEL_SUPPORT[self.kernel] if math.isfinite(KERNEL_SUPPORT[self.kernel]) else 1.0
        eps = self.bandwidths.to(pi.dtype)                                  # [d_sae]
        inside = torch.count_nonzero((pi - theta).abs() < half_width * eps, dim=0).to(pi.dtype)
        step = self.adaptive_rate * (math.log1p(self.adaptive_window_count) - torch.log1p(inside))
        self.bandwidths.copy_((eps * torch.exp(step)).clamp_(1e-5, 1.0))
