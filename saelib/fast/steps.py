"""The CPU training steps of the ReLU, JumpReLU and TopK SAEs: the same equations as each model's
dense loss(), computed on the support of the code (saelib/fast/sparse.py) when it is sparse enough.

Each step takes the pre-activations pi [batch, d_sae] from the one dense encoder product, then either
  - finds the support (the pairs whose gradient can be non-zero) small enough: select pi there [nnz],
    apply the model's nonlinearity to those values, decode with an embedding bag; or
  - finds it too large: finish densely with the same operations as the model's loss(), reusing pi
    (in place where the model keeps a copy), so the encoder product is never computed twice.
Values and gradients equal the model's loss() (tests/test_sparse.py, float64).
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch

from saelib.fast.sparse import (
    SparseCodes,
    Support,
    select_pre_activations,
    sparse_decode,
    support_above,
    support_of_topk,
)
from saelib.models.base import LossOutput, centred_matmul, check_sparsity_coeff
from saelib.models.jumprelu import JumpReLUSAE
from saelib.models.kernels import KERNEL_SUPPORT
from saelib.models.relu import ReLUSAE
from saelib.models.ste import jumprelu_with_l0, window_half_width
from saelib.models.topk import TopKSAE


def relu_step(sae: ReLUSAE, x: torch.Tensor, sparsity_coeff: float | torch.Tensor,
                max_density: float) -> LossOutput:
    check_sparsity_coeff(sparsity_coeff)
    pi = sae.pre_activations(x)                                    # [batch, d_sae]
    support = support_above(pi, 0.0, max_density)                  # ReLU(pi) > 0
    decode: Callable[[torch.Tensor], torch.Tensor]
    if support is None:
        f = pi.relu_()                                             # eq. 1 (in place: pi is not kept)
        f_sum = f.sum(0)                                           # [d_sae]
        decode = sae.decode
    else:                                   # f at the firing features only: there ReLU(pi) = pi
        f = select_pre_activations(pi, support, x, sae.W_enc, sae.b_enc, sae.b_dec)      # [nnz], eq. 1
        f_sum = torch.zeros_like(sae.b_enc).index_add(0, support.cols, f)                # [d_sae]
        decode = _sparse_decoder(support, sae.W_dec, sae.b_dec)                          # eq. 2
    # (the penalty before the decoder: autograd then adds its gradient in place into the decoder's)
    if sae.variant == "april_update":
        # batch mean of sum_i f_i ||W_dec[i]||, written (sum_b f_b) . ||W_dec|| / batch so that its
        # gradient in f is a broadcast row rather than a [batch, d_sae] outer product
        sparsity = f_sum @ sae.decoder_norms() / x.shape[0]
    else:
        sparsity = f_sum.sum() / x.shape[0]                        # ||f||_1 (f >= 0)
    x_hat = decode(f)                                              # [batch, d_in], eq. 2
    reconstruction = (x_hat - x).pow(2).sum(-1).mean()
    loss = reconstruction + sparsity_coeff * sparsity              # eq. 4
    codes = f if support is None else SparseCodes(f, support, sae.d_sae)   # dense [batch, d_sae] if read
    return LossOutput(loss, reconstruction, sparsity, sae.zero_aux(x), codes, x_hat)


def jumprelu_step(sae: JumpReLUSAE, x: torch.Tensor, sparsity_coeff: float | torch.Tensor,
                max_density: float) -> LossOutput:
    check_sparsity_coeff(sparsity_coeff)
    pi = sae.pre_activations(x)                                    # [batch, d_sae]
    theta = sae.threshold                                          # [d_sae]
    if sae.adaptive and sae.training:
        sae._adapt_bandwidths(pi.detach(), theta.detach())
    eps = sae.bandwidths.to(pi.dtype)                              # [d_sae]
    # the pairs at or above the kernel window's lower edge: every other one has f = 0 and no gradient
    support = support_above(pi, theta - window_half_width(sae.kernel, eps), max_density)
    if support is None:
        f, l0 = jumprelu_with_l0(pi, theta, eps, sae.kernel, inplace=True)   # eqs. 4, 6 (f overwrites pi)
        l1 = f.sum() if sae.penalty == "l1" else None              # (before the decoder, see relu_step)
        x_hat = sae.decode(f)
        codes: torch.Tensor | SparseCodes = f
    else:                                   # the same equations on the support only, as one [1, nnz] row
        z = select_pre_activations(pi, support, x, sae.W_enc, sae.b_enc, sae.b_dec)          # [nnz]
        f, l0 = jumprelu_with_l0(z[None], theta.index_select(0, support.cols),   # (index_select: a
                                 eps.index_select(0, support.cols),              #  deterministic
                                 sae.kernel, batch=x.shape[0])                   #  backward) eqs. 4, 6
        f = f[0]                                                                             # [nnz]
        l1 = f.sum() if sae.penalty == "l1" else None
        x_hat = sparse_decode(f, support, sae.W_dec) + sae.b_dec
        codes = SparseCodes(f, support, sae.d_sae)                 # dense [batch, d_sae] if read
    sparsity = l0 if l1 is None else l1 / x.shape[0]
    reconstruction = (x_hat - x).pow(2).sum(-1).mean()
    loss = reconstruction + sparsity_coeff * sparsity
    return LossOutput(loss, reconstruction, sparsity, sae.zero_aux(x), codes, x_hat)


def jumprelu_has_sparse_step(sae: JumpReLUSAE) -> bool:
    """Only compact kernels: with a Gaussian one every pre-activation carries a threshold gradient."""
    return math.isfinite(KERNEL_SUPPORT[sae.kernel])


class TopKStep:
    """The TopK training step: the dense product only chooses the k latents; every gradient flows
    through the B*k selected pairs (no density test: the support is always B*k). Runs on any device.

    Whether a latent is dead (for AuxK) is a host sync on a GPU. There this step keeps a host-side upper
    bound on the largest count, raised by the batch size every step, and reads the counts only once the
    bound reaches dead_tokens: so it assumes that while it is in use the counts change only through it
    (or go down). On a CPU it reads them every step.
    """

    def __init__(self, sae: TopKSAE):
        self.sae = sae
        self.bound: int | None = None

    def __call__(self, x: torch.Tensor, sparsity_coeff: float | torch.Tensor = 0.0) -> LossOutput:
        sae = self.sae
        check_sparsity_coeff(sparsity_coeff)
        sae.check_input(x)
        with torch.no_grad():                      # the dense product only chooses; gradients flow sparsely
            pi = centred_matmul(x, sae.W_enc, sae.b_enc, sae.b_dec)                # [batch, d_sae]
            indices = pi.topk(sae.k, dim=-1, sorted=False).indices                 # [batch, k]
        values = torch.relu(_select(sae, pi, indices, x))       # f = ReLU(TopK_k(pi)) at its k latents [batch, k]
        support = support_of_topk(indices)
        x_hat = sparse_decode(values.flatten(), support, sae.W_dec) + sae.b_dec   # [batch, d_in]
        reconstruction = (x_hat - x).pow(2).sum(-1).mean()
        zero = torch.zeros((), device=x.device, dtype=x_hat.dtype)
        aux = zero
        if sae.aux_k is not None and self._any_dead(x.device):
            aux = sae.aux_coeff * _auxk_loss(sae, pi, x, (x - x_hat).detach())
        if sae.training:
            fired = torch.zeros(sae.d_sae, dtype=torch.float32, device=x.device).index_add_(
                0, indices.flatten(), (values > 0).flatten().to(torch.float32)) > 0     # [d_sae], no host sync
            sae.update_dead_stats(fired, x.shape[0])
            if self.bound is not None:
                self.bound += x.shape[0]
        codes = values.detach()

        def f() -> torch.Tensor:                                            # [batch, d_sae], built if read
            return torch.zeros_like(pi, dtype=codes.dtype).scatter_(-1, indices, codes)

        return LossOutput(reconstruction + aux, reconstruction, zero, aux, f, x_hat)

    def _any_dead(self, device: torch.device) -> bool:
        dead_tokens = self.sae.dead_tokens
        if device.type == "cpu" or self.bound is None or self.bound >= dead_tokens:
            self.bound = int(self.sae.tokens_since_fired.max())                      # host sync on GPU
        return self.bound >= dead_tokens


def _select(sae: TopKSAE, pi: torch.Tensor, indices: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """pi at the chosen latents [batch, k], with a sparse backward into the encoder."""
    support = support_of_topk(indices)
    return select_pre_activations(pi, support, x, sae.W_enc, sae.b_enc, sae.b_dec).view(indices.shape)


def _auxk_loss(sae: TopKSAE, pi: torch.Tensor, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """||e - e_hat||^2: the top-aux_k dead latents (by pre-activation) reconstruct the residual e."""
    assert sae.aux_k is not None
    dead = (sae.tokens_since_fired >= sae.dead_tokens).nonzero().squeeze(1)      # [n_dead]
    top = pi[:, dead].topk(min(sae.aux_k, len(dead)), dim=-1, sorted=False).indices
    indices = dead[top]                                                          # [batch, <= aux_k]
    values = torch.relu(_select(sae, pi, indices, x)).to(sae.W_dec.dtype)
    residual_hat = sparse_decode(values.flatten(), support_of_topk(indices), sae.W_dec)   # no b_dec
    return (residual_hat - residual).pow(2).sum(-1).mean()


def _sparse_decoder(support: Support, W_dec: torch.Tensor, b_dec: torch.Tensor
                    ) -> Callable[[torch.Tensor], torch.Tensor]:
    def decode(values: torch.Tensor) -> torch.Tensor:                       # [nnz] -> [batch, d_in]
        return sparse_decode(values, support, W_dec) + b_dec
    return decode
