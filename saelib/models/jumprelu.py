"""JumpReLU sparse autoencoder (Rajamanoharan et al. 2024, "Jumping Ahead").

    x' = x - b_dec
    pi = x' W_enc + b_enc                                          # pre-activations [batch, d_sae]
    f  = JumpReLU_theta(pi) = pi * H(pi - theta),  theta = exp(log_threshold) > 0      # eq. 4
    x_hat = f W_dec + b_dec
    L = ||x - x_hat||^2 + lambda * sum_i H(pi_i - theta_i)                              # eq. 6 (L0)
H has zero gradient almost everywhere, so theta is trained with straight-through pseudo-derivatives
(saelib/ste.py, eqs. 11-12): a kernel density estimate, with kernel K and bandwidth eps, of the gradient
of the *expected* loss with respect to theta.

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

from saelib.models.base import SAE, LossOutput, centred_matmul, check_sparsity_coeff, random_directions
from saelib.validation import check_choice, check_positive
from saelib.models.kernels import KERNEL_SUPPORT, KERNELS
from saelib.fast.sparse import SPARSE_MAX_DENSITY, SparseCodes, select_pre_activations, sparse_decode, support_above
from saelib.models.ste import jumprelu_with_l0, window_half_width

PENALTIES = ("l0", "l1")


class JumpReLUSAE(SAE):
    architecture = "jumprelu"

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
        self.bandwidth = bandwidth if self.adaptive else float(bandwidth)
        self.theta_init = float(theta_init)
        self.normalize_decoder = normalize_decoder
        self.decoder_init_norm = float(decoder_init_norm)
        self.adaptive_window_count, self.adaptive_rate = float(adaptive_window_count), float(adaptive_rate)

        W_dec = random_directions(d_sae, d_in, self.decoder_init_norm)       # [d_sae, d_in]
        self.W_dec = nn.Parameter(W_dec)
        self.W_enc = nn.Parameter(W_dec.T.clone())                          # [d_in, d_sae]
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        self.log_threshold = nn.Parameter(torch.full((d_sae,), math.log(self.theta_init)))
        # per-feature bandwidths: constant unless bandwidth="adaptive" (then updated in loss())
        start = 1e-3 if self.adaptive else self.bandwidth
        self.register_buffer("bandwidths", torch.full((d_sae,), start))
        # a speed setting, not part of the model: take the sparse training step when at most this fraction
        # of the batch x d_sae pre-activations can matter (CPU, compact kernels); 0 = always dense
        self.sparse_max_density = SPARSE_MAX_DENSITY

    @property
    def threshold(self) -> torch.Tensor:                                    # theta [d_sae]
        return torch.exp(self.log_threshold)

    def config(self) -> dict:
        return {**super().config(), "kernel": self.kernel, "bandwidth": self.bandwidth,
                "theta_init": self.theta_init, "penalty": self.penalty,
                "normalize_decoder": self.normalize_decoder, "decoder_init_norm": self.decoder_init_norm,
                "adaptive_window_count": self.adaptive_window_count, "adaptive_rate": self.adaptive_rate}

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:           # pi [batch, d_sae]
        self.check_input(x)
        return centred_matmul(x, self.W_enc, self.b_enc, self.b_dec)     # (x - b_dec) W_enc + b_enc

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        f, _ = jumprelu_with_l0(self.pre_activations(x), self.threshold, self.bandwidths, self.kernel)
        return f

    def loss(self, x: torch.Tensor, sparsity_coeff: float) -> LossOutput:
        check_sparsity_coeff(sparsity_coeff)
        pi = self.pre_activations(x)
        theta = self.threshold
        if self.adaptive and self.training:
            self._adapt_bandwidths(pi.detach(), theta.detach())
        # a sparse step when few pre-activations reach the kernel window's lower edge (saelib/sparse.py)
        sparse_ok = torch.is_grad_enabled() and math.isfinite(KERNEL_SUPPORT[self.kernel])
        support = support_above(pi, theta - window_half_width(self.kernel, self.bandwidths),
                                self.sparse_max_density if sparse_ok else 0.0)
        if support is None:
            f, l0 = jumprelu_with_l0(pi, theta, self.bandwidths, self.kernel,   # eqs. 4, 6 with eqs. 11-12
                                     inplace=True)                              # (f overwrites pi)
            l1 = f.sum() if self.penalty == "l1" else None                      # (before the decoder, see
            x_hat = self.decode(f)                                              #  ReLUSAE)
        else:                               # the same equations on the support only, as one [1, nnz] row
            z = select_pre_activations(pi, support, x, self.W_enc, self.b_enc, self.b_dec)        # [nnz]
            f, l0 = jumprelu_with_l0(z[None], theta.index_select(0, support.cols),   # (index_select:
                                     self.bandwidths[support.cols],                 #  a deterministic
                                     self.kernel, batch=x.shape[0])                 #  backward) eqs. 4, 6
            f = f[0]                                                                          # [nnz]
            l1 = f.sum() if self.penalty == "l1" else None
            x_hat = sparse_decode(f, support, self.W_dec) + self.b_dec
            f = SparseCodes(f, support, self.d_sae)                  # dense [batch, d_sae] if read
        sparsity = l0 if self.penalty == "l0" else l1 / x.shape[0]
        reconstruction = (x_hat - x).pow(2).sum(-1).mean()
        loss = reconstruction + sparsity_coeff * sparsity
        zero = torch.zeros((), device=x.device, dtype=x.dtype)
        return LossOutput(loss, reconstruction, sparsity, zero, f, x_hat)

    @torch.no_grad()
    def _adapt_bandwidths(self, pi: torch.Tensor, theta: torch.Tensor) -> None:
        """Move log eps_i towards the bandwidth that puts `adaptive_window_count` pre-activations of the
        batch inside feature i's window (multiplicative update, clamped to [1e-5, 1])."""
        half_width = KERNEL_SUPPORT[self.kernel] if math.isfinite(KERNEL_SUPPORT[self.kernel]) else 1.0
        inside = torch.count_nonzero((pi - theta).abs() < half_width * self.bandwidths, dim=0).to(pi.dtype)
        step = self.adaptive_rate * (math.log1p(self.adaptive_window_count) - torch.log1p(inside))
        self.bandwidths.mul_(torch.exp(step)).clamp_(1e-5, 1.0)
