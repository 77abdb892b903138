"""TopK sparse autoencoder (Gao et al. 2024), the comparison point of the JumpReLU paper.

    x' = x - b_dec
    pi = x' W_enc + b_enc                           # [batch, d_sae]
    f  = ReLU(TopK_k(pi))                           # keep the k largest pre-activations per token
    x_hat = f W_dec + b_dec
    L = ||x - x_hat||^2  (+ aux_coeff * AuxK)       # no sparsity penalty: L0 <= k by construction
AuxK (optional, aux_k not None): latents that have not fired for `dead_tokens` tokens reconstruct the
residual e = x - x_hat with their own top-aux_k pre-activations, ||e - e_hat||^2, keeping them alive.

Decoding is sparse: x_hat = sum over the k active latents of f_i W_dec[i] (an embedding bag), which costs
B*k*d_in instead of B*d_sae*d_in.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import SAE, LossOutput, check_choice, check_positive, check_sparsity_coeff, random_directions


class TopKSAE(SAE):
    architecture = "topk"

    def __init__(self, d_in: int, d_sae: int, k: int = 32, aux_k: int | None = None,
                 aux_coeff: float = 1 / 32, dead_tokens: int = 1_000_000, normalize_decoder: bool = True,
                 decoder_init_norm: float = 1.0):
        super().__init__(d_in, d_sae)
        check_positive("k", k, integer=True)
        if k > d_sae:
            raise ValueError(f"k={k!r} is out of range; allowed: an integer in [1, d_sae={d_sae}]")
        if aux_k is not None:
            check_positive("aux_k", aux_k, integer=True)
            if aux_k > d_sae:
                raise ValueError(f"aux_k={aux_k!r} is out of range; allowed: None or an integer in [1, {d_sae}]")
        check_positive("aux_coeff", aux_coeff, allow_zero=True)
        check_positive("dead_tokens", dead_tokens, integer=True)
        check_choice("normalize_decoder", normalize_decoder, (True, False))
        check_positive("decoder_init_norm", decoder_init_norm)
        self.k, self.aux_k, self.aux_coeff, self.dead_tokens = k, aux_k, float(aux_coeff), dead_tokens
        self.normalize_decoder = normalize_decoder
        self.decoder_init_norm = float(decoder_init_norm)

        W_dec = random_directions(d_sae, d_in, self.decoder_init_norm)       # [d_sae, d_in]
        self.W_dec = nn.Parameter(W_dec)
        self.W_enc = nn.Parameter(W_dec.T.clone())                          # [d_in, d_sae]
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        # tokens since each latent last fired (for AuxK); part of the training state, saved in checkpoints
        self.register_buffer("tokens_since_fired", torch.zeros(d_sae, dtype=torch.long))

    def config(self) -> dict:
        return {**super().config(), "k": self.k, "aux_k": self.aux_k, "aux_coeff": self.aux_coeff,
                "dead_tokens": self.dead_tokens, "normalize_decoder": self.normalize_decoder,
                "decoder_init_norm": self.decoder_init_norm}

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:           # [batch, d_sae]
        self.check_input(x)
        return (x - self.b_dec) @ self.W_enc + self.b_enc

    def topk(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(pre-activations, values [batch, k] after ReLU, indices [batch, k])."""
        pi = self.pre_activations(x)
        values, indices = pi.topk(self.k, dim=-1, sorted=False)
        return pi, torch.relu(values), indices

    def decode_sparse(self, values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """sum_j values[:, j] * W_dec[indices[:, j]]  (+ b_dec)  -> [batch, d_in]"""
        return F.embedding_bag(indices, self.W_dec, per_sample_weights=values, mode="sum") + self.b_dec

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        _, values, indices = self.topk(x)
        return torch.zeros(x.shape[0], self.d_sae, dtype=values.dtype, device=x.device).scatter(-1, indices, values)

    def loss(self, x: torch.Tensor, sparsity_coeff: float = 0.0) -> LossOutput:
        """sparsity_coeff is accepted for a uniform interface and ignored (k sets the sparsity)."""
        check_sparsity_coeff(sparsity_coeff)
        pi, values, indices = self.topk(x)
        x_hat = self.decode_sparse(values, indices)
        reconstruction = (x_hat - x).pow(2).sum(-1).mean()
        zero = torch.zeros((), device=x.device, dtype=x.dtype)
        aux = zero
        if self.aux_k is not None:
            aux = self.aux_coeff * self._auxk_loss(pi, (x - x_hat).detach())
        if self.training:
            self._update_dead_stats(values, indices)
        with torch.no_grad():
            f = torch.zeros_like(pi).scatter_(-1, indices, values)         # [batch, d_sae]
        return LossOutput(reconstruction + aux, reconstruction, zero, aux, f, x_hat)

    def _auxk_loss(self, pi: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        dead = self.tokens_since_fired >= self.dead_tokens                  # [d_sae]
        dead_pi = pi.masked_fill(~dead, float("-inf"))
        values, indices = dead_pi.topk(self.aux_k, dim=-1, sorted=False)
        values = torch.relu(values).nan_to_num(0.0)                         # alive latents contribute 0
        residual_hat = F.embedding_bag(indices, self.W_dec, per_sample_weights=values, mode="sum")
        return (residual_hat - residual).pow(2).sum(-1).mean() * dead.any()   # 0 while nobody is dead

    @torch.no_grad()
    def _update_dead_stats(self, values: torch.Tensor, indices: torch.Tensor) -> None:
        fired = torch.zeros(self.d_sae, dtype=torch.bool, device=values.device)
        fired[indices[values > 0]] = True
        self.tokens_since_fired.add_(values.shape[0]).masked_fill_(fired, 0)
