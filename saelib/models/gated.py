"""Gated sparse autoencoder (Rajamanoharan et al. 2024, "Improving Dictionary Learning with Gated SAEs").

The encoder separates *which* features fire (gate) from *how much* (magnitude):
    x' = x - b_dec
    pi_gate = x' W_gate + b_gate                                  # eq. 5
    f_gate  = 1[pi_gate > 0]
    f_mag   = ReLU(x' W_mag + b_mag),  W_mag = exp(r_mag) * W_gate   (row-wise tying)  # eqs. 6, 8
    f       = f_gate * f_mag                                      # eq. 7
    x_hat   = f W_dec + b_dec
Loss (eq. 9):
    L = ||x - x_hat(f)||^2 + lambda * ||ReLU(pi_gate)||_1 + ||x - x_hat_frozen(ReLU(pi_gate))||^2
where x_hat_frozen uses stop-gradient copies of W_dec and b_dec: the auxiliary term trains the gate to
reconstruct on its own without pulling the decoder towards a shrunken solution.

Options (the paper's ablations and the April-2024 penalty study):
    mag_weights     "r_mag" (tied, default) | "no_r_mag" (r_mag = 0: W_mag = W_gate) | "untied"
    aux_decoder     "frozen" (default) | "unfrozen"  (the aux term's decoder trains too)
    penalty         "l1" (default) | "decoder_norm": lambda * sum_i ReLU(pi_gate)_i ||W_dec[i]||
    penalty_decoder "unfrozen" | "frozen": with "decoder_norm", whether W_dec is stop-gradient inside the
                    penalty
    mag_bias        "free" (default) | "tied": b_mag = exp(r_mag) * b_gate, not a parameter. Then pi_mag =
                    exp(r_mag) * pi_gate, theta = 0 and f = exp(r_mag) * ReLU(pi_gate): a ReLU SAE with a learned
                    per-feature rescale, trained from scratch with the Gated loss (compare "baseline + rescale &
                    shift", which learns the rescale and a shift after the fact)
    encoder_init    "transpose" (default: W_gate = W_dec^T at init) | "independent" (see SAE.init_weights)
With tying, a Gated SAE is exactly a JumpReLU SAE (see to_jumprelu).

loss() is the plain dense computation; training calls saelib.fast.training_loss(sae), its faster twin
(equal values and gradients, tests/test_sparse.py).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from saelib.models.base import SAE, LossOutput, centred_matmul, check_sparsity_coeff
from saelib.validation import check_choice, check_positive

if TYPE_CHECKING:
    from saelib.models.jumprelu import JumpReLUSAE
    from saelib.models.relu import ReLUSAE

MAG_WEIGHTS = ("r_mag", "no_r_mag", "untied")
MAG_BIAS = ("free", "tied")
AUX_DECODER = ("frozen", "unfrozen")
PENALTIES = ("l1", "decoder_norm")
PENALTY_DECODER = ("unfrozen", "frozen")


class GatedSAE(SAE):
    architecture = "gated"
    _input_weights: tuple[str, ...] = ("W_gate",)
    W_gate: torch.Tensor
    b_gate: torch.Tensor
    b_mag: torch.Tensor
    r_mag: torch.Tensor
    W_mag: torch.Tensor

    def __init__(self, d_in: int, d_sae: int, mag_weights: str = "r_mag", aux_decoder: str = "frozen",
                 penalty: str = "l1", penalty_decoder: str = "unfrozen",
                 normalize_decoder: bool | None = None, decoder_init_norm: float | None = None,
                 resample: bool | None = None, mag_bias: str = "free", encoder_init: str = "transpose"):
        super().__init__(d_in, d_sae)
        check_choice("mag_weights", mag_weights, MAG_WEIGHTS)
        check_choice("aux_decoder", aux_decoder, AUX_DECODER)
        check_choice("penalty", penalty, PENALTIES)
        check_choice("penalty_decoder", penalty_decoder, PENALTY_DECODER)
        check_choice("mag_bias", mag_bias, MAG_BIAS)
        if mag_bias == "tied" and mag_weights == "untied":
            raise ValueError("mag_bias='tied' needs W_mag tied to W_gate; allowed mag_weights with it: "
                             "'r_mag', 'no_r_mag'")
        l1 = penalty == "l1"
        if normalize_decoder is None:
            normalize_decoder = l1          # unit-norm decoder with L1; free norms with the April penalty
        check_choice("normalize_decoder", normalize_decoder, (True, False))
        if decoder_init_norm is None:
            decoder_init_norm = 1.0 if normalize_decoder else 0.1
        check_positive("decoder_init_norm", decoder_init_norm)
        self.mag_weights, self.aux_decoder = mag_weights, aux_decoder
        self.penalty, self.penalty_decoder = penalty, penalty_decoder
        self.normalize_decoder = bool(normalize_decoder)
        self.decoder_init_norm = float(decoder_init_norm)
        self.resample = l1 if resample is None else bool(resample)
        self.mag_bias, self.encoder_init = mag_bias, encoder_init

        self.init_weights(self.decoder_init_norm, encoders=("W_gate",),     # W_gate = W_dec^T at init,
                          biases=("b_gate", "b_mag") if mag_bias == "free" else ("b_gate",),   # zero biases
                          encoder_init=encoder_init)
        if mag_weights == "r_mag":
            self.r_mag = nn.Parameter(torch.zeros(d_sae))                   # [d_sae]
        elif mag_weights == "no_r_mag":
            self.register_buffer("r_mag", torch.zeros(d_sae))              # fixed at 0: W_mag = W_gate
        else:
            self.W_mag = nn.Parameter(self.W_gate.detach().clone())         # = W_gate at init  [d_in, d_sae]
            self._input_weights = ("W_gate", "W_mag")

    @property
    def wants_resampling(self) -> bool:
        return self.resample

    def config(self) -> dict:
        return {**super().config(), "mag_weights": self.mag_weights, "aux_decoder": self.aux_decoder,
                "penalty": self.penalty, "penalty_decoder": self.penalty_decoder,
                "normalize_decoder": self.normalize_decoder, "decoder_init_norm": self.decoder_init_norm,
                "resample": self.resample, "mag_bias": self.mag_bias, "encoder_init": self.encoder_init}

    def pre_activations(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        """(pi_gate, pi_mag), each [batch, d_sae]; the tied variants share one encoder matmul."""
        self.check_input(x)
        if self.mag_weights == "untied":
            return (centred_matmul(x, self.W_gate, self.b_gate, self.b_dec),     # eq. 5
                    centred_matmul(x, self.W_mag, self.b_mag, self.b_dec))
        z = centred_matmul(x, self.W_gate, None, self.b_dec)               # x' W_gate  [batch, d_sae]
        pi_gate = z + self.b_gate                                           # eq. 5
        pi_mag = z * torch.exp(self.r_mag) + self.magnitude_bias()          # eqs. 6, 8: W_mag = exp(r_mag) W_gate
        return pi_gate, pi_mag

    def magnitude_bias(self) -> torch.Tensor:                               # [d_sae]
        """b_mag: the parameter, or exp(r_mag) * b_gate with mag_bias="tied"."""
        return torch.exp(self.r_mag) * self.b_gate if self.mag_bias == "tied" else self.b_mag

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        pi_gate, pi_mag = self.pre_activations(x)
        return (pi_gate > 0) * torch.relu(pi_mag)                           # eq. 7

    def loss(self, x: torch.Tensor, sparsity_coeff: float | torch.Tensor) -> LossOutput:
        check_sparsity_coeff(sparsity_coeff)
        pi_gate, pi_mag = self.pre_activations(x)                           # eqs. 5, 6, 8  [batch, d_sae] each
        f_gate = (pi_gate > 0).to(pi_mag.dtype)                             # 1[pi_gate > 0]: no gradient
        f_mag = torch.relu(pi_mag)                                          # eq. 6
        f = f_gate * f_mag                                                  # eq. 7  [batch, d_sae]
        x_hat = self.decode(f)                                              # f W_dec + b_dec  [batch, d_in]
        reconstruction = (x - x_hat).pow(2).sum(-1).mean()                 # ||x - x_hat(f)||^2

        gate_relu = torch.relu(pi_gate)                                     # ReLU(pi_gate)  [batch, d_sae]
        if self.penalty == "l1":
            sparsity = gate_relu.sum(-1).mean()                             # ||ReLU(pi_gate)||_1
        else:
            norms = self.decoder_norms()                                    # [d_sae]
            if self.penalty_decoder == "frozen":
                norms = norms.detach()
            sparsity = (gate_relu * norms).sum(-1).mean()                   # sum_i ReLU(pi_gate)_i ||W_dec[i]||

        W_aux, b_aux = self.W_dec, self.b_dec
        if self.aux_decoder == "frozen":
            W_aux, b_aux = W_aux.detach(), b_aux.detach()                   # stop-gradient copies
        x_hat_frozen = torch.addmm(b_aux, gate_relu, W_aux)                 # x_hat_frozen(ReLU(pi_gate))
        aux = (x - x_hat_frozen).pow(2).sum(-1).mean()                     # ||x - x_hat_frozen||^2

        loss = reconstruction + sparsity_coeff * sparsity + aux             # eq. 9
        return LossOutput(loss, reconstruction, sparsity, aux, f, x_hat)

    @torch.no_grad()
    def jumprelu_threshold(self) -> torch.Tensor:
        """theta = b_mag - exp(r_mag) * b_gate, the threshold of the equivalent JumpReLU SAE."""
        if self.mag_weights == "untied":
            raise ValueError("mag_weights='untied' has no equivalent JumpReLU SAE; "
                             "allowed for to_jumprelu: 'r_mag', 'no_r_mag'")
        return self.magnitude_bias() - torch.exp(self.r_mag) * self.b_gate    # exactly 0 with mag_bias="tied"

    @torch.no_grad()
    def to_jumprelu(self) -> JumpReLUSAE:
        """The JumpReLU SAE with identical codes and reconstructions.

        pi_gate > 0  <=>  x'W_gate > -b_gate  <=>  exp(r_mag) x'W_gate + b_mag > b_mag - exp(r_mag) b_gate,
        so f = JumpReLU_theta(x' W_enc + b_enc) with W_enc = exp(r_mag) W_gate, b_enc = b_mag and
        theta = b_mag - exp(r_mag) b_gate (clamped at 0: a negative threshold acts like 0 behind the ReLU).
        """
        from saelib.models.jumprelu import JumpReLUSAE

        theta = self.jumprelu_threshold().clamp_min(0.0)
        sae = JumpReLUSAE(self.d_in, self.d_sae, normalize_decoder=self.normalize_decoder)
        sae = sae.to(device=self.W_dec.device, dtype=self.W_dec.dtype)
        sae.W_enc.copy_(self.W_gate * torch.exp(self.r_mag))
        sae.b_enc.copy_(self.magnitude_bias())
        sae.log_threshold.copy_(torch.log(theta))                           # log 0 = -inf -> theta = 0
        sae.W_dec.copy_(self.W_dec)
        sae.b_dec.copy_(self.b_dec)
        return sae

    @classmethod
    @torch.no_grad()
    def rescale_and_shift(cls, relu_sae: ReLUSAE) -> GatedSAE:
        """"Baseline + rescale & shift": freeze a trained ReLU SAE and learn only a per-feature rescale
        (exp(r_mag)) and shift (b_mag) of its pre-activations. The gate is the baseline's own ReLU gate.

        Train the result with sparsity_coeff = 0: only r_mag and b_mag require gradients.
        """
        sae = cls(relu_sae.d_in, relu_sae.d_sae, normalize_decoder=False, resample=False)
        sae = sae.to(device=relu_sae.W_dec.device, dtype=relu_sae.W_dec.dtype)
        sae.W_gate.copy_(relu_sae.W_enc)
        sae.b_gate.copy_(relu_sae.b_enc)
        sae.b_mag.copy_(relu_sae.b_enc)                                    # starts equal to the baseline
        sae.W_dec.copy_(relu_sae.W_dec)
        sae.b_dec.copy_(relu_sae.b_dec)
        for p in (sae.W_gate, sae.b_gate, sae.W_dec, sae.b_dec):
            p.requires_grad_(False)
        return sae
