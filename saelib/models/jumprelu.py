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

Successors of the 2024 recipe (options; the defaults keep the paper's loss exactly):
    sparsity_mode "l0" (eq. 6) | "l1" (same as penalty="l1") |
              "tanh"       Anthropic, Circuits Updates January 2025:
                           lambda * sum_i tanh(c * |f_i| * ||W_dec[i]||),  c = tanh_scale
              "quadratic"  Gemma Scope 2 technical report: per token, L0(x) = sum_i H(pi_i - theta_i) and
                           lambda * (2 / L0*) * (L0(x) - L0*)^2,  L0* = target_l0  (batch mean; as SAELens)
    pre_act_loss_coeff lambda_P (Anthropic, January 2025): aux = lambda_P * sum_i ReLU(theta_i - pi_i) ||W_dec[i]||
              (batch mean), which pulls pre-activations that never reach their threshold back up to it.
              pre_act_on="all" (the update's equation) or "dead" (SAELens: only latents that have not fired
              for `dead_tokens` tokens; counted here in tokens, by SAELens in steps)
    encoder_ste straight-through gradients that also reach pi (and so the encoder) through the jump:
              d/dpi H(pi - theta) := +(1/eps) K((pi - theta)/eps), d/dpi JumpReLU := H + (theta/eps) K(...)
              (SAELens's jumprelu_ste_to_input, "True matches Anthropic's setup"; the paper trains theta only).
              Caveat: the January-2025 update itself, as far as we could read it, writes
              dJumpReLU/dx = 1[x > exp(t)] (no kernel term); we follow SAELens's reading, as an option.
Any of them makes loss() take the dense successor path (saelib/models/ste.py: jumprelu_ste, heaviside_ste);
`paper_recipe` says whether the loss is still the 2024 paper's (saelib.fast's sparse step handles only that).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from saelib.models.base import SAE, LossOutput, check_sparsity_coeff
from saelib.models.kernels import KERNEL_SUPPORT, KERNELS
from saelib.models.ste import heaviside_ste, jumprelu_ste, jumprelu_with_l0
from saelib.validation import check_choice, check_positive

PENALTIES = ("l0", "l1")
SPARSITY_MODES = ("l0", "l1", "tanh", "quadratic")
PRE_ACT_ON = ("all", "dead")


class JumpReLUSAE(SAE):
    architecture = "jumprelu"
    bandwidths: torch.Tensor
    tokens_since_fired: torch.Tensor          # only with pre_act_on="dead" and pre_act_loss_coeff > 0

    def __init__(self, d_in: int, d_sae: int, kernel: str = "rectangle", bandwidth: float | str = 1e-3,
                 theta_init: float = 1e-3, penalty: str = "l0", normalize_decoder: bool = True,
                 decoder_init_norm: float = 1.0, adaptive_window_count: float = 16.0,
                 adaptive_rate: float = 0.05, *, sparsity_mode: str | None = None, tanh_scale: float = 4.0,
                 target_l0: float | None = None, pre_act_loss_coeff: float = 0.0, pre_act_on: str = "all",
                 dead_tokens: int = 1_000_000, encoder_ste: bool = False):
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
        self._init_successor_options(penalty, sparsity_mode, tanh_scale, target_l0, pre_act_loss_coeff,
                                     pre_act_on, dead_tokens, encoder_ste)
        self.kernel, self.penalty = kernel, "l1" if self.sparsity_mode == "l1" else "l0"
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
                "adaptive_window_count": self.adaptive_window_count, "adaptive_rate": self.adaptive_rate,
                "sparsity_mode": self.sparsity_mode, "tanh_scale": self.tanh_scale, "target_l0": self.target_l0,
                "pre_act_loss_coeff": self.pre_act_loss_coeff, "pre_act_on": self.pre_act_on,
                "dead_tokens": self.dead_tokens, "encoder_ste": self.encoder_ste}

    def _init_successor_options(self, penalty, sparsity_mode, tanh_scale, target_l0, pre_act_loss_coeff,
                                pre_act_on, dead_tokens, encoder_ste) -> None:
        check_choice("sparsity_mode", sparsity_mode, (None, *SPARSITY_MODES))
        mode = penalty if sparsity_mode is None else sparsity_mode
        if penalty != "l0" and mode != penalty:
            raise ValueError(f"penalty={penalty!r} conflicts with sparsity_mode={sparsity_mode!r}; allowed: "
                             f"penalty='l0' with any sparsity_mode in {SPARSITY_MODES}, or sparsity_mode=None")
        check_positive("tanh_scale", tanh_scale)
        if mode == "quadratic":
            if target_l0 is None:
                raise ValueError("target_l0=None: sparsity_mode='quadratic' needs target_l0, a number in "
                                 f"(0, d_sae={self.d_sae}]")
            check_positive("target_l0", target_l0)
            if target_l0 > self.d_sae:
                raise ValueError(f"target_l0={target_l0!r} is out of range; allowed: (0, d_sae={self.d_sae}]")
        elif target_l0 is not None:
            raise ValueError(f"target_l0={target_l0!r} is used only by sparsity_mode='quadratic'; allowed with "
                             f"sparsity_mode={mode!r}: None")
        check_positive("pre_act_loss_coeff", pre_act_loss_coeff, allow_zero=True)
        check_choice("pre_act_on", pre_act_on, PRE_ACT_ON)
        check_positive("dead_tokens", dead_tokens, integer=True)
        if not isinstance(encoder_ste, bool):                 # (1 == True would pass check_choice)
            raise ValueError(f"encoder_ste={encoder_ste!r} is not allowed; allowed values: True, False")
        self.sparsity_mode, self.tanh_scale = mode, float(tanh_scale)
        self.target_l0 = None if target_l0 is None else float(target_l0)
        self.pre_act_loss_coeff, self.pre_act_on = float(pre_act_loss_coeff), pre_act_on
        self.dead_tokens, self.encoder_ste = dead_tokens, encoder_ste
        if self.pre_act_loss_coeff > 0 and pre_act_on == "dead":
            # tokens since each latent last fired (training state, in state_dict and checkpoints)
            self.register_buffer("tokens_since_fired", torch.zeros(self.d_sae, dtype=torch.long))

    @property
    def paper_recipe(self) -> bool:
        """Whether loss() is the 2024 paper's: L0 or L1 penalty, threshold-only pseudo-derivatives, no
        pre-activation loss (the only case saelib.fast's sparse step computes)."""
        return self.sparsity_mode in PENALTIES and not self.encoder_ste and self.pre_act_loss_coeff == 0

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
        if not self.paper_recipe:
            return self._successor_loss(x, pi, theta, eps, sparsity_coeff)
        # f = pi * H(pi - theta) (eq. 4) and the batch mean of sum_i H(pi_i - theta_i) (eq. 6), with the
        # pseudo-derivatives of eqs. 11-12 for theta
        f, l0 = jumprelu_with_l0(pi, theta, eps, self.kernel)               # [batch, d_sae], scalar
        x_hat = self.decode(f)                                              # f W_dec + b_dec  [batch, d_in]
        reconstruction = (x - x_hat).pow(2).sum(-1).mean()                 # ||x - x_hat||^2, batch mean
        sparsity = l0 if self.penalty == "l0" else f.sum(-1).mean()         # L0 (eq. 6) or ||f||_1 (§5)
        loss = reconstruction + sparsity_coeff * sparsity                   # eq. 6
        return LossOutput(loss, reconstruction, sparsity, self.zero_aux(x), f, x_hat)

    def _successor_loss(self, x: torch.Tensor, pi: torch.Tensor, theta: torch.Tensor, eps: torch.Tensor,
                        sparsity_coeff: float | torch.Tensor) -> LossOutput:
        """The loss with the 2025 options (see the module docstring), computed densely."""
        ste = self.encoder_ste
        f = jumprelu_ste(pi, theta, eps, self.kernel, to_input=ste)         # eq. 4  [batch, d_sae]
        x_hat = self.decode(f)                                              # [batch, d_in]
        reconstruction = (x - x_hat).pow(2).sum(-1).mean()
        norms = self.decoder_norms()                                        # ||W_dec[i]||  [d_sae]
        if self.sparsity_mode == "tanh":          # Anthropic 2025; |f| = f (f >= 0), written without abs so
            sparsity = torch.tanh(self.tanh_scale * f * norms).sum(-1).mean()   # f's STE sees tanh'(0) = 1
        elif self.sparsity_mode == "l1":
            sparsity = f.sum(-1).mean()
        else:
            l0 = heaviside_ste(pi, theta, eps, self.kernel, to_input=ste).sum(-1)   # per token  [batch]
            if self.sparsity_mode == "quadratic":                                    # Gemma Scope 2
                target = float(self.target_l0 or 0.0)                                  # set (checked)
                sparsity = (2.0 / target * (l0 - target).pow(2)).mean()
            else:
                sparsity = l0.mean()                                                 # eq. 6
        aux = self.zero_aux(x)
        if self.pre_act_loss_coeff > 0:           # Anthropic 2025: sum_i ReLU(theta_i - pi_i) ||W_dec[i]||
            below = torch.relu(theta - pi) * norms                          # [batch, d_sae]
            if self.pre_act_on == "dead":
                below = below * (self.tokens_since_fired >= self.dead_tokens)
            aux = self.pre_act_loss_coeff * below.sum(-1).mean()
        if self.pre_act_loss_coeff > 0 and self.pre_act_on == "dead" and self.training and torch.is_grad_enabled():
            with torch.no_grad():
                fired = torch.count_nonzero(f, dim=0) > 0
                self.tokens_since_fired.add_(x.shape[0]).masked_fill_(fired, 0)
        loss = reconstruction + sparsity_coeff * sparsity + aux
        return LossOutput(loss, reconstruction, sparsity, aux, f, x_hat)

    @torch.no_grad()
    def _adapt_bandwidths(self, pi: torch.Tensor, theta: torch.Tensor) -> None:
        """Move log eps_i towards the bandwidth that puts `adaptive_window_count` pre-activations of the
        batch inside feature i's window (multiplicative update, clamped to [1e-5, 1]), in pi's dtype."""
        half_width = KERNEL_SUPPORT[self.kernel] if math.isfinite(KERNEL_SUPPORT[self.kernel]) else 1.0
        eps = self.bandwidths.to(pi.dtype)                                  # [d_sae]
        inside = torch.count_nonzero((pi - theta).abs() < half_width * eps, dim=0).to(pi.dtype)
        step = self.adaptive_rate * (math.log1p(self.adaptive_window_count) - torch.log1p(inside))
        self.bandwidths.copy_((eps * torch.exp(step)).clamp_(1e-5, 1.0))
