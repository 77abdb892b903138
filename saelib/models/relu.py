"""Standard (ReLU) sparse autoencoder, in two flavours.

variant="standard"  (Bricken et al. 2023; the Gated paper's baseline)
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
"""
from __future__ import annotations

import torch
from torch import nn

from saelib.models.base import SAE, LossOutput, centred_matmul, check_sparsity_coeff, random_directions
from saelib.validation import check_choice, check_positive
from saelib.fast.sparse import SPARSE_MAX_DENSITY, SparseCodes, select_pre_activations, sparse_decode, support_above

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

        W_dec = random_directions(d_sae, d_in, self.decoder_init_norm)       # [d_sae, d_in]
        self.W_dec = nn.Parameter(W_dec)
        self.W_enc = nn.Parameter(W_dec.T.clone())                          # [d_in, d_sae]
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        # a speed setting, not part of the model: take the sparse training step when at most this fraction
        # of the batch x d_sae features fire (CPU); 0 = always dense
        self.sparse_max_density = SPARSE_MAX_DENSITY

    @property
    def wants_resampling(self) -> bool:
        return self.resample

    def config(self) -> dict:
        return {**super().config(), "variant": self.variant,
                "decoder_init_norm": self.decoder_init_norm, "resample": self.resample}

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:       # [batch, d_sae]
        self.check_input(x)
        return centred_matmul(x, self.W_enc, self.b_enc, self.b_dec)   # (x - b_dec) W_enc + b_enc

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.pre_activations(x).relu_()                         # eq. 1 (in place: pi is not kept)

    def loss(self, x: torch.Tensor, sparsity_coeff: float) -> LossOutput:
        check_sparsity_coeff(sparsity_coeff)
        pi = self.pre_activations(x)                                   # [batch, d_sae]
        # a sparse step when few features fire (saelib/sparse.py); the dense step is the reference
        support = support_above(pi, 0.0, self.sparse_max_density if torch.is_grad_enabled() else 0.0)
        if support is None:
            f = pi.relu_()                                             # eq. 1 (in place: pi is not kept)
            f_sum = f.sum(0)                                           # [d_sae]
            decode = self.decode
        else:                                   # f at the firing features only: there ReLU(pi) = pi
            f = select_pre_activations(pi, support, x, self.W_enc, self.b_enc, self.b_dec)   # [nnz], eq. 1
            f_sum = torch.zeros_like(self.b_enc).index_add(0, support.cols, f)             # [d_sae]
            decode = lambda f: sparse_decode(f, support, self.W_dec) + self.b_dec          # eq. 2
        # (the penalty before the decoder: autograd then adds its gradient in place into the decoder's)
        if self.variant == "april_update":
            # batch mean of sum_i f_i ||W_dec[i]||, written (sum_b f_b) . ||W_dec|| / batch so that its
            # gradient in f is a broadcast row rather than a [batch, d_sae] outer product
            sparsity = f_sum @ self.decoder_norms() / x.shape[0]
        else:
            sparsity = f_sum.sum() / x.shape[0]                        # ||f||_1 (f >= 0), eq. 4
        x_hat = decode(f)                                              # [batch, d_in], eq. 2
        reconstruction = (x_hat - x).pow(2).sum(-1).mean()
        loss = reconstruction + sparsity_coeff * sparsity
        zero = torch.zeros((), device=x.device, dtype=x.dtype)
        if support is not None:
            f = SparseCodes(f, support, self.d_sae)                  # dense [batch, d_sae] if read
        return LossOutput(loss, reconstruction, sparsity, zero, f, x_hat)
