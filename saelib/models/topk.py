"""TopK sparse autoencoder (Gao et al. 2024), the comparison point of the JumpReLU paper.

    x' = x - b_dec
    pi = x' W_enc + b_enc                           # [batch, d_sae]
    f  = ReLU(TopK_k(pi))                           # keep the k largest pre-activations per token
    x_hat = f W_dec + b_dec
    L = ||x - x_hat||^2  (+ aux_coeff * AuxK)       # no sparsity penalty: L0 <= k by construction
AuxK (optional, aux_k not None): latents that have not fired for `dead_tokens` tokens reconstruct the
residual e = x - x_hat with their own top-aux_k pre-activations, ||e - e_hat||^2, keeping them alive.

loss() below is the plain dense computation. Training uses the sparse step of saelib/fast, which
touches only the B*k selected latents after the one dense product that chooses them: about
2 B d_in d_sae + 8 B k d_in FLOPs per step instead of 10 B d_in d_sae (equal values and gradients).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from saelib.models.base import SAE, LossOutput, check_sparsity_coeff
from saelib.validation import check_choice, check_positive


class TopKSAE(SAE):
    architecture = "topk"
    tokens_since_fired: torch.Tensor

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

        self.init_weights(self.decoder_init_norm)            # W_dec, W_enc = W_dec^T, b_enc = 0, b_dec = 0
        # tokens since each latent last fired (for AuxK); part of the training state, saved in checkpoints
        self.register_buffer("tokens_since_fired", torch.zeros(d_sae, dtype=torch.long))

    def config(self) -> dict:
        return {**super().config(), "k": self.k, "aux_k": self.aux_k, "aux_coeff": self.aux_coeff,
                "dead_tokens": self.dead_tokens, "normalize_decoder": self.normalize_decoder,
                "decoder_init_norm": self.decoder_init_norm}

    def topk(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(pre-activations [batch, d_sae], values [batch, k] after ReLU, indices [batch, k])."""
        pi = self.pre_activations(x)
        values, indices = pi.topk(self.k, dim=-1, sorted=False)
        return pi, torch.relu(values), indices

    def decode_sparse(self, values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """sum_j values[:, j] * W_dec[indices[:, j]]  (+ b_dec)  -> [batch, d_in]  (an embedding bag)"""
        return F.embedding_bag(indices, self.W_dec, per_sample_weights=values, mode="sum") + self.b_dec

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        _, values, indices = self.topk(x)
        return torch.zeros(x.shape[0], self.d_sae, dtype=values.dtype, device=x.device).scatter(-1, indices, values)

    def loss(self, x: torch.Tensor, sparsity_coeff: float | torch.Tensor = 0.0) -> LossOutput:
        """sparsity_coeff is accepted for a uniform interface and ignored (k sets the sparsity)."""
        check_sparsity_coeff(sparsity_coeff)
        pi = self.pre_activations(x)                                        # x' W_enc + b_enc  [batch, d_sae]
        values, indices = pi.topk(self.k, dim=-1, sorted=False)             # the k largest per token [batch, k]
        f = torch.zeros_like(pi).scatter(-1, indices, torch.relu(values))   # ReLU(TopK_k(pi))  [batch, d_sae]
        x_hat = self.decode(f)                                              # f W_dec + b_dec  [batch, d_in]
        reconstruction = (x - x_hat).pow(2).sum(-1).mean()                 # ||x - x_hat||^2, batch mean
        zero = self.zero_aux(x)
        aux = zero
        dead = self.tokens_since_fired >= self.dead_tokens                  # [d_sae] bool
        if self.aux_k is not None and bool(dead.any()):
            aux = self.aux_coeff * self.auxk_loss(pi, dead, (x - x_hat).detach())
        if self.training:
            self.update_dead_stats((f > 0).any(0), x.shape[0])
        return LossOutput(reconstruction + aux, reconstruction, zero, aux, f, x_hat)

    def auxk_loss(self, pi: torch.Tensor, dead: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """||e - e_hat||^2: the top-aux_k dead latents (by pre-activation) reconstruct the residual
        e = x - x_hat [batch, d_in] through the decoder, without b_dec."""
        assert self.aux_k is not None
        n_dead = int(dead.sum())
        candidates = pi.masked_fill(~dead, float("-inf"))                   # [batch, d_sae]
        values, indices = candidates.topk(min(self.aux_k, n_dead), dim=-1, sorted=False)
        f_aux = torch.zeros_like(pi).scatter(-1, indices, torch.relu(values))   # [batch, d_sae]
        residual_hat = f_aux @ self.W_dec                                   # [batch, d_in]
        return (residual - residual_hat).pow(2).sum(-1).mean()

    @torch.no_grad()
    def update_dead_stats(self, fired: torch.Tensor, n_tokens: int) -> None:
        """Count n_tokens more tokens for every latent, and restart the count of those that fired
        (fired: [d_sae] bool). No host sync."""
        self.tokens_since_fired.add_(n_tokens).masked_fill_(fired, 0)
