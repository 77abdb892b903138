"""Standard (ReLU) sparse autoencoder, in two flavours.

variant="standard"  (Bricken et al. 2023; the Gated paper's baseline, its §2)
    x' = x - b_dec
    f = ReLU(x' W_enc + b_enc)                                   # eq. 1 (Gated paper)
    x_hat = f W_dec + b_dec                                      # eq. 2
    L = ||x - x_hat||^2 + lambda * ||f||_1                       # eq. 4
    with unit-norm decoder rows (renormalised after each step, parallel gradient removed) and
    resampling of dead features.

variant="april_update"  (Anthropic, April 2024 training update)
    L = ||x - x_hat||^2 + lambda * sum_i f_i ||W_dec[i]||         # penalty weighted by decoder norms
    free decoder norms, decoder rows initialised to a small norm (0.1), no resampling.

Both initialise W_enc = W_dec^T (at init only) and zero biases.

loss() is the plain dense computation; training calls saelib.fast.training_loss(sae), its faster twin
(equal values and gradients, tests/test_sparse.py).
"""
from __future__ import annotations

import torch

from saelib.models.base import SAE, LossOutput, check_sparsity_coeff
from saelib.validation import check_choice, check_positive

VARIANTS = ("standard", "april_update")


class ReLUSAE(SAE):
    architecture = "standard"

    def __init__(self, d_in: int, d_sae: int, variant: str = "standard",
                 decoder_init_norm: float | None = None, resample: bool | None = None):
        super().__init__(d_in, d_sae)
        check_choice("variant", variant, VARIANTS)
        april = variant == "april_update"
        if decoder_init_norm is None:
            decoder_init_norm = 0.1 if april else 1.0
        check_positive("decoder_init_norm", decoder_init_norm)
        self.variant = variant
        self.decoder_init_norm = float(decoder_init_norm)
        self.normalize_decoder = not april
        self.resample = (not april) if resample is None else bool(resample)
        self.init_weights(self.decoder_init_norm)            # W_dec, W_enc = W_dec^T, b_enc = 0, b_dec = 0

    @property
    def wants_resampling(self) -> bool:
        return self.resample

    def config(self) -> dict:
        return {**super().config(), "variant": self.variant,
                "decoder_init_norm": self.decoder_init_norm, "resample": self.resample}

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.pre_activations(x))                     # eq. 1  [batch, d_sae]

    def loss(self, x: torch.Tensor, sparsity_coeff: float | torch.Tensor) -> LossOutput:
        check_sparsity_coeff(sparsity_coeff)
        f = torch.relu(self.pre_activations(x))                        # eq. 1: ReLU(x' W_enc + b_enc)  [batch, d_sae]
        x_hat = self.decode(f)                                         # eq. 2: f W_dec + b_dec         [batch, d_in]
        reconstruction = (x - x_hat).pow(2).sum(-1).mean()             # ||x - x_hat||^2, batch mean
        if self.variant == "april_update":
            sparsity = (f * self.decoder_norms()).sum(-1).mean()       # sum_i f_i ||W_dec[i]||
        else:
            sparsity = f.sum(-1).mean()                                # ||f||_1 (f >= 0)
        loss = reconstruction + sparsity_coeff * sparsity              # eq. 4
        return LossOutput(loss, reconstruction, sparsity, self.zero_aux(x), f, x_hat)
