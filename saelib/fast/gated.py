"""The Gated SAE's training step (tied weights): GatedSAE.loss's equations with the activations of
eqs. 5-8 computed by one autograd function (GatedActivations, two [batch, d_sae] temporaries instead of
about ten), or, on a CPU when the gates are open on few entries, on the open gates only
(saelib/fast/sparse.py). Values and gradients equal GatedSAE.loss (tests/test_sparse.py, float64).
"""
from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch

from saelib.fast.sparse import SparseCodes, Support, select_pre_activations, sparse_decode, support_above
from saelib.models.base import LossOutput, check_sparsity_coeff
from saelib.models.gated import GatedSAE


def gated_has_fast_step(sae: GatedSAE) -> bool:
    """Tied magnitude weights only (W_mag = exp(r_mag) W_gate shares the gate's encoder product)."""
    return sae.mag_weights != "untied"


def gated_step(sae: GatedSAE, x: torch.Tensor, sparsity_coeff: float | torch.Tensor,
                max_density: float) -> LossOutput:
    """GatedSAE.loss for tied weights. max_density > 0 (CPU only): the sparse form when the gates are
    open on at most that fraction of the batch x d_sae entries."""
    check_sparsity_coeff(sparsity_coeff)
    sae.check_input(x)
    # x' W = x W - b_dec W (see centred_matmul: no gradient with respect to x); the constant parts of
    # pi_gate and pi_mag then go into one bias vector each
    xW = x @ sae.W_gate                                                 # [batch, d_sae]
    shift = sae.b_dec @ sae.W_gate                                      # [d_sae]
    scale = torch.exp(sae.r_mag)                                        # [d_sae], W_mag = scale * W_gate
    support = support_above(xW, (shift - sae.b_gate).detach(), max_density)       # pi_gate > 0
    decode: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
    if support is None:
        f, gate_relu = GatedActivations.apply(xW, sae.b_gate - shift, scale, sae.magnitude_bias() - scale * shift)
        gate_sum = gate_relu.sum(0)                                     # [d_sae]
        decode = _dense_decode                                          # codes W + b
    else:                                 # (index_select below: gathers with a deterministic backward)
        cols = support.cols
        xW_centred = select_pre_activations(xW, support, x, sae.W_gate, None, sae.b_dec,  # x' W_gate
                                            product_only=True)                              # [nnz]
        gate_relu = xW_centred + sae.b_gate.index_select(0, cols)       # eq. 5: pi_gate > 0 here
        f = torch.relu(torch.addcmul(sae.magnitude_bias().index_select(0, cols), xW_centred,   # eqs. 6-8
                                     scale.index_select(0, cols)))
        gate_sum = torch.zeros_like(sae.b_gate).index_add(0, cols, gate_relu)              # [d_sae]
        decode = partial(_sparse_decode, support)                       # the same, at the support
    # (the penalty before the aux decoder: autograd then adds its gradient in place into the decoder's)
    if sae.penalty == "l1":
        sparsity = gate_sum.sum() / x.shape[0]                          # ||ReLU(pi_gate)||_1
    else:
        norms = sae.decoder_norms()
        if sae.penalty_decoder == "frozen":
            norms = norms.detach()
        # batch mean of sum_i ReLU(pi_gate)_i ||W_dec[i]||  (a broadcast gradient, see relu_step)
        sparsity = gate_sum @ norms / x.shape[0]

    x_hat = decode(f, sae.W_dec, sae.b_dec)
    reconstruction = (x_hat - x).pow(2).sum(-1).mean()

    W_aux, b_aux = sae.W_dec, sae.b_dec
    if sae.aux_decoder == "frozen":
        W_aux, b_aux = W_aux.detach(), b_aux.detach()                   # stop-gradient copies
    x_hat_aux = decode(gate_relu, W_aux, b_aux)                         # x_hat_frozen(ReLU(pi_gate))
    aux = (x_hat_aux - x).pow(2).sum(-1).mean()

    loss = reconstruction + sparsity_coeff * sparsity + aux             # eq. 9
    codes = f if support is None else SparseCodes(f, support, sae.d_sae)   # dense [batch, d_sae] if read
    return LossOutput(loss, reconstruction, sparsity, aux, codes, x_hat)


def _dense_decode(codes: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.addmm(b, codes, W)                                     # codes W + b  [batch, d_in]


def _sparse_decode(support: Support, codes: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return sparse_decode(codes, support, W) + b                         # codes [nnz] -> [batch, d_in]


class GatedActivations(torch.autograd.Function):
    """(xW, c_gate, s, c_mag) -> (f, ReLU(pi_gate)) for the tied Gated SAE, eqs. 5-8, where
        pi_gate = xW + c_gate         = x' W_gate + b_gate                          (eq. 5)
        pi_mag  = xW * s + c_mag      = x' (exp(r_mag) W_gate) + b_mag              (eqs. 6, 8)
    with xW = x W_gate, s = exp(r_mag), c_gate = b_gate - b_dec W_gate, c_mag = b_mag - s (b_dec W_gate).

    The same values as the plain expressions in GatedSAE.loss, with the backward written out so that a
    training step makes two [batch, d_sae] temporaries here instead of about ten:
        f             = 1[pi_gate > 0] * ReLU(pi_mag)     d f / d pi_mag = 1[f > 0];  no gradient to the gate
        ReLU(pi_gate)                                     d / d pi_gate  = 1[pi_gate > 0]
        d pi_gate / d xW = 1,   d pi_mag / d xW = s,   d pi_mag / d s = xW
    """

    @staticmethod
    def forward(ctx: Any, xW: torch.Tensor, c_gate: torch.Tensor, s: torch.Tensor,
                c_mag: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pi_gate = xW + c_gate                                           # eq. 5           [batch, d_sae]
        pi_mag = torch.addcmul(c_mag, xW, s)                            # eqs. 6, 8       [batch, d_sae]
        gate_relu = pi_gate.relu_()                                     # ReLU(pi_gate), in place
        # 1[x > 0] for x >= 0 is sign(x): a 0./1. float mask (multiplying by it is vectorised)
        gate_open = gate_relu.sign()                                    # 1[pi_gate > 0]  [batch, d_sae]
        f = pi_mag.relu_().mul_(gate_open)                              # eq. 7: 1[pi_gate > 0] * ReLU(pi_mag)
        ctx.save_for_backward(xW, s, f, gate_open)
        return f, gate_relu

    @staticmethod
    def backward(ctx: Any, grad_f: torch.Tensor | None, grad_gate_relu: torch.Tensor | None) -> tuple:
        xW, s, f, gate_open = ctx.saved_tensors
        if grad_gate_relu is None:
            grad_xW = torch.zeros_like(xW)
        else:
            grad_xW = grad_gate_relu * gate_open                        # d / d pi_gate  [batch, d_sae]
        grad_c_gate = grad_xW.sum(0)
        grad_s = grad_c_mag = None
        if grad_f is not None:
            grad_pi_mag = grad_f * f.sign()                             # d / d pi_mag   [batch, d_sae]
            grad_c_mag = grad_pi_mag.sum(0)
            grad_xW.addcmul_(grad_pi_mag, s)                            # + d / d pi_mag * s
            if ctx.needs_input_grad[2]:
                grad_s = grad_pi_mag.mul_(xW).sum(0)                    # sum_b d / d pi_mag * xW
        return grad_xW, grad_c_gate, grad_s, grad_c_mag
