"""BatchTopK sparse autoencoder (Bussmann, Leask and Nanda 2024, "BatchTopK Sparse Autoencoders",
arXiv 2412.06410), a successor of TopK: the k latents per token become k * B latents per batch.

Training, on a batch X of B tokens:
    x' = x - b_dec
    pi = x' W_enc + b_enc                                   # [B, d_sae]
    f  = BatchTopK_{kB}(ReLU(pi))                           # keep the k*B largest of all B*d_sae values
    x_hat = f W_dec + b_dec
    L = ||x - x_hat||^2  (+ aux_coeff * AuxK)               # no sparsity penalty: mean L0 <= k per token
so a token may use more or fewer than k latents, as long as the batch averages k ("adaptive" sparsity).
Inference cannot depend on the other tokens of a batch, so the paper replaces the batch selection with
one global threshold theta, "the average minimum positive activation value" kept in training:
    f = ReLU(pi) * 1[pi > theta]          (a JumpReLU with the same theta for every latent)
theta is a running estimate (a buffer, part of state_dict, checkpoints and saved files), updated after
each training batch as SAELens does:  theta <- (1 - threshold_lr) * theta + threshold_lr * min{f > 0}.

`encode` (and so evaluation, metrics and anything spliced into a model) uses the threshold; `loss` uses
the batch selection and, in training mode with gradients on, updates the threshold. A freshly built SAE
has theta = 0, i.e. encodes with a plain ReLU until it has been trained.

AuxK (optional, aux_k not None): as in saelib/models/topk.py, latents that have not fired for
`dead_tokens` tokens reconstruct the residual x - x_hat with their top-aux_k pre-activations per token.
SAELens's version fixes aux_k = d_in / 2 and scales the term by min(n_dead / aux_k, 1); ours takes both
from the constructor (aux_k, aux_coeff), as TopKSAE does.

Under torchrun each rank selects the top k * (its rows) of its own part of the batch and keeps its own
threshold estimate (they stay close but are not synchronised).
"""
from __future__ import annotations

import torch
from torch import nn

from saelib.models.base import SAE, LossOutput, centred_matmul, check_sparsity_coeff, random_directions
from saelib.validation import check_choice, check_positive, check_range


class BatchTopKSAE(SAE):
    architecture = "batchtopk"
    threshold: torch.Tensor                  # buffers (declared for type checkers)
    tokens_since_fired: torch.Tensor

    def __init__(self, d_in: int, d_sae: int, k: float = 32, threshold_lr: float = 0.01,
                 aux_k: int | None = None, aux_coeff: float = 1 / 32, dead_tokens: int = 1_000_000,
                 normalize_decoder: bool = True, decoder_init_norm: float = 1.0):
        super().__init__(d_in, d_sae)
        check_positive("k", k)
        if k > d_sae:
            raise ValueError(f"k={k!r} is out of range; allowed: a number in (0, d_sae={d_sae}] "
                             "(the mean number of active latents per token)")
        check_range("threshold_lr", threshold_lr, 0.0, 1.0)
        if aux_k is not None:
            check_positive("aux_k", aux_k, integer=True)
            if aux_k > d_sae:
                raise ValueError(f"aux_k={aux_k!r} is out of range; allowed: None or an integer in [1, {d_sae}]")
        check_positive("aux_coeff", aux_coeff, allow_zero=True)
        check_positive("dead_tokens", dead_tokens, integer=True)
        check_choice("normalize_decoder", normalize_decoder, (True, False))
        check_positive("decoder_init_norm", decoder_init_norm)
        self.k, self.threshold_lr = float(k), float(threshold_lr)
        self.aux_k, self.aux_coeff, self.dead_tokens = aux_k, float(aux_coeff), dead_tokens
        self.normalize_decoder = normalize_decoder
        self.decoder_init_norm = float(decoder_init_norm)

        W_dec = random_directions(d_sae, d_in, self.decoder_init_norm)       # [d_sae, d_in]
        self.W_dec = nn.Parameter(W_dec)
        self.W_enc = nn.Parameter(W_dec.T.clone())                          # [d_in, d_sae]
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        # the inference threshold theta, one value for all latents (stored per latent, as SAELens exports
        # it: a JumpReLU threshold vector); a running estimate updated by loss() in training
        self.register_buffer("threshold", torch.zeros(d_sae))
        # tokens since each latent last fired (for AuxK); training state, saved in checkpoints
        self.register_buffer("tokens_since_fired", torch.zeros(d_sae, dtype=torch.long))

    def config(self) -> dict:
        return {**super().config(), "k": self.k, "threshold_lr": self.threshold_lr, "aux_k": self.aux_k,
                "aux_coeff": self.aux_coeff, "dead_tokens": self.dead_tokens,
                "normalize_decoder": self.normalize_decoder, "decoder_init_norm": self.decoder_init_norm}

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:           # pi [batch, d_sae]
        self.check_input(x)
        return centred_matmul(x, self.W_enc, self.b_enc, self.b_dec)     # (x - b_dec) W_enc + b_enc

    def n_kept(self, batch: int) -> int:
        """How many activations a batch of `batch` tokens keeps: int(k * batch), as SAELens (at least 1)."""
        return max(1, min(int(self.k * batch), batch * self.d_sae))

    def batch_topk(self, pi: torch.Tensor) -> torch.Tensor:
        """f = BatchTopK_{kB}(ReLU(pi)): the k*B largest values of the whole batch, zeros elsewhere."""
        acts = torch.relu(pi).flatten()                                     # [B * d_sae]
        top = acts.topk(self.n_kept(pi.shape[0]), sorted=False)
        return torch.zeros_like(acts).scatter(0, top.indices, top.values).view_as(pi)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Inference codes: ReLU(pi) * 1[pi > theta] with the running global threshold theta."""
        pi = self.pre_activations(x)
        return torch.relu(pi) * (pi > self.threshold)

    def loss(self, x: torch.Tensor, sparsity_coeff: float | torch.Tensor = 0.0) -> LossOutput:
        """sparsity_coeff is accepted for a uniform interface and ignored (k sets the sparsity)."""
        check_sparsity_coeff(sparsity_coeff)
        pi = self.pre_activations(x)
        f = self.batch_topk(pi)                                             # [B, d_sae]
        x_hat = self.decode(f)
        reconstruction = (x_hat - x).pow(2).sum(-1).mean()
        zero = torch.zeros((), device=x.device, dtype=x_hat.dtype)
        aux = zero
        if self.aux_k is not None and bool((self.tokens_since_fired >= self.dead_tokens).any()):
            aux = self.aux_coeff * self._auxk_loss(pi, (x - x_hat).detach())
        if self.training and torch.is_grad_enabled():
            self.update_threshold(f.detach())
            self._update_dead_stats(f.detach())
        return LossOutput(reconstruction + aux, reconstruction, zero, aux, f, x_hat)

    @torch.no_grad()
    def update_threshold(self, f: torch.Tensor) -> None:
        """theta <- (1 - threshold_lr) theta + threshold_lr * (smallest positive kept activation); no
        change when nothing is positive. Computed in float64 (SAELens keeps its estimate in double)."""
        positive = f[f > 0]
        if positive.numel():
            lr = self.threshold_lr
            new = (1 - lr) * self.threshold.double() + lr * positive.min().double()
            self.threshold.copy_(new.to(self.threshold.dtype))

    def _auxk_loss(self, pi: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """||e - e_hat||^2: each token's top-aux_k dead latents (by pre-activation) reconstruct e = x - x_hat."""
        dead = self.tokens_since_fired >= self.dead_tokens                  # [d_sae]
        n = min(self.aux_k or 0, int(dead.sum()))
        masked = pi.masked_fill(~dead, float("-inf"))
        top = masked.topk(n, dim=-1, sorted=False)
        acts = torch.zeros_like(pi).scatter(-1, top.indices, torch.relu(top.values))
        return (acts @ self.W_dec - residual).pow(2).sum(-1).mean()         # no b_dec: it is in e already

    @torch.no_grad()
    def _update_dead_stats(self, f: torch.Tensor) -> None:
        fired = torch.count_nonzero(f, dim=0) > 0                           # [d_sae]
        self.tokens_since_fired.add_(f.shape[0]).masked_fill_(fired, 0)
