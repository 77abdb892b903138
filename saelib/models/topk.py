"""TopK sparse autoencoder (Gao et al. 2024), the comparison point of the JumpReLU paper.

    x' = x - b_dec
    pi = x' W_enc + b_enc                           # [batch, d_sae]
    f  = ReLU(TopK_k(pi))                           # keep the k largest pre-activations per token
    x_hat = f W_dec + b_dec
    L = ||x - x_hat||^2  (+ aux_coeff * AuxK)       # no sparsity penalty: L0 <= k by construction
AuxK (optional, aux_k not None): latents that have not fired for `dead_tokens` tokens reconstruct the
residual e = x - x_hat with their own top-aux_k pre-activations, ||e - e_hat||^2, keeping them alive.

Training touches only the B*k selected latents after the one dense product that chooses them:
decoding is sparse, x_hat = sum over the k active latents of f_i W_dec[i] (an embedding bag), and so is
the encoder's gradient (saelib/sparse.py): about 2 B d_in d_sae + 8 B k d_in FLOPs per step instead
of 10 B d_in d_sae for a dense step.
"""
from __future__ import annotations

import torch
from torch import nn

from saelib.models.base import SAE, LossOutput, centred_matmul, check_sparsity_coeff, random_directions
from saelib.validation import check_choice, check_positive
from saelib.fast.sparse import select_pre_activations, sparse_decode, support_of_topk


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
        return centred_matmul(x, self.W_enc, self.b_enc, self.b_dec)     # (x - b_dec) W_enc + b_enc

    def topk(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(pre-activations, values [batch, k] after ReLU, indices [batch, k])."""
        pi = self.pre_activations(x)
        values, indices = pi.topk(self.k, dim=-1, sorted=False)
        return pi, torch.relu(values), indices

    def decode_sparse(self, values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """sum_j values[:, j] * W_dec[indices[:, j]]  (+ b_dec)  -> [batch, d_in]"""
        return sparse_decode(values.flatten(), support_of_topk(indices), self.W_dec) + self.b_dec

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        _, values, indices = self.topk(x)
        return torch.zeros(x.shape[0], self.d_sae, dtype=values.dtype, device=x.device).scatter(-1, indices, values)

    def loss(self, x: torch.Tensor, sparsity_coeff: float = 0.0) -> LossOutput:
        """sparsity_coeff is accepted for a uniform interface and ignored (k sets the sparsity)."""
        check_sparsity_coeff(sparsity_coeff)
        self.check_input(x)
        with torch.no_grad():                      # the dense product only chooses; gradients flow sparsely
            pi = centred_matmul(x, self.W_enc, self.b_enc, self.b_dec)              # [batch, d_sae]
            indices = pi.topk(self.k, dim=-1, sorted=False).indices                 # [batch, k]
        values = torch.relu(self._select(pi, indices, x))      # f = ReLU(TopK_k(pi)) at its k latents [batch, k]
        x_hat = self.decode_sparse(values, indices)            # x_hat = f W_dec + b_dec           [batch, d_in]
        reconstruction = (x_hat - x).pow(2).sum(-1).mean()
        zero = torch.zeros((), device=x.device, dtype=x_hat.dtype)
        aux = zero
        if self.aux_k is not None and self._any_dead():
            aux = self.aux_coeff * self._auxk_loss(pi, x, (x - x_hat).detach())
        if self.training:
            self._update_dead_stats(values, indices)
        values = values.detach()
        f = lambda: torch.zeros_like(pi, dtype=values.dtype).scatter_(-1, indices, values)   # built if read
        return LossOutput(reconstruction + aux, reconstruction, zero, aux, f, x_hat)

    def _select(self, pi: torch.Tensor, indices: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """pi at the chosen latents [batch, k], with a sparse backward into the encoder (saelib/sparse.py)."""
        support = support_of_topk(indices)
        return select_pre_activations(pi, support, x, self.W_enc, self.b_enc, self.b_dec).view(indices.shape)

    def _auxk_loss(self, pi: torch.Tensor, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """||e - e_hat||^2: the top-aux_k dead latents (by pre-activation) reconstruct the residual e."""
        dead = (self.tokens_since_fired >= self.dead_tokens).nonzero().squeeze(1)    # [n_dead]
        top = pi[:, dead].topk(min(self.aux_k, len(dead)), dim=-1, sorted=False).indices
        indices = dead[top]                                                         # [batch, <= aux_k]
        values = torch.relu(self._select(pi, indices, x)).to(self.W_dec.dtype)
        residual_hat = sparse_decode(values.flatten(), support_of_topk(indices), self.W_dec)   # no b_dec
        return (residual_hat - residual).pow(2).sum(-1).mean()

    def _any_dead(self) -> bool:
        """Whether some latent has not fired for dead_tokens tokens.

        Reading the counts is a host sync on GPU. A latent's count grows by at most one batch per step, so
        a host-side upper bound on the largest count answers "no" without looking until it reaches
        dead_tokens; it is re-read then, and whenever the counts changed other than through
        _update_dead_stats (a checkpoint loaded, a test editing them: the tensor's version moved).
        """
        counts = self.tokens_since_fired
        if getattr(self, "_bound_of", None) != (counts.data_ptr(), counts._version) or \
                self._bound >= self.dead_tokens:
            self._bound = int(counts.max())                                         # host sync
            self._bound_of = (counts.data_ptr(), counts._version)
        return self._bound >= self.dead_tokens

    @torch.no_grad()
    def _update_dead_stats(self, values: torch.Tensor, indices: torch.Tensor) -> None:
        firings = torch.zeros(self.d_sae, dtype=torch.float32, device=values.device).index_add_(
            0, indices.flatten(), (values > 0).flatten().to(torch.float32))          # [d_sae], no host sync
        fired = firings > 0
        bound = getattr(self, "_bound_of", None) == (self.tokens_since_fired.data_ptr(),
                                                     self.tokens_since_fired._version)
        self.tokens_since_fired.add_(values.shape[0]).masked_fill_(fired, 0)
        if bound:                                   # keep the upper bound (see _any_dead) in step, sync-free
            self._bound += values.shape[0]
            self._bound_of = (self.tokens_since_fired.data_ptr(), self.tokens_since_fired._version)
