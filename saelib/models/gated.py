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
With tying, a Gated SAE is exactly a JumpReLU SAE (see to_jumprelu).
"""
from __future__ import annotations

import torch
from torch import nn

from saelib.models.base import SAE, LossOutput, centred_matmul, check_sparsity_coeff, keep_where_positive, random_directions
from saelib.validation import check_choice, check_positive
from saelib.fast.sparse import SPARSE_MAX_DENSITY, SparseCodes, select_pre_activations, sparse_decode, support_above

MAG_WEIGHTS = ("r_mag", "no_r_mag", "untied")
AUX_DECODER = ("frozen", "unfrozen")
PENALTIES = ("l1", "decoder_norm")
PENALTY_DECODER = ("unfrozen", "frozen")


class GatedSAE(SAE):
    architecture = "gated"
    _input_weights = ("W_gate",)

    def __init__(self, d_in: int, d_sae: int, mag_weights: str = "r_mag", aux_decoder: str = "frozen",
                 penalty: str = "l1", penalty_decoder: str = "unfrozen",
                 normalize_decoder: bool | None = None, decoder_init_norm: float | None = None,
                 resample: bool | None = None):
        super().__init__(d_in, d_sae)
        check_choice("mag_weights", mag_weights, MAG_WEIGHTS)
        check_choice("aux_decoder", aux_decoder, AUX_DECODER)
        check_choice("penalty", penalty, PENALTIES)
        check_choice("penalty_decoder", penalty_decoder, PENALTY_DECODER)
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

        W_dec = random_directions(d_sae, d_in, self.decoder_init_norm)       # [d_sae, d_in]
        self.W_dec = nn.Parameter(W_dec)
        self.W_gate = nn.Parameter(W_dec.T.clone())                         # [d_in, d_sae]
        self.b_gate = nn.Parameter(torch.zeros(d_sae))
        self.b_mag = nn.Parameter(torch.zeros(d_sae))
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        if mag_weights == "r_mag":
            self.r_mag = nn.Parameter(torch.zeros(d_sae))
        elif mag_weights == "no_r_mag":
            self.register_buffer("r_mag", torch.zeros(d_sae))              # fixed at 0: W_mag = W_gate
        else:
            self.W_mag = nn.Parameter(W_dec.T.clone())                      # [d_in, d_sae]
            self._input_weights = ("W_gate", "W_mag")
        # a speed setting, not part of the model: take the sparse training step when gates are open on at
        # most this fraction of the batch x d_sae entries (tied weights, CPU); 0 = always dense
        self.sparse_max_density = SPARSE_MAX_DENSITY

    @property
    def wants_resampling(self) -> bool:
        return self.resample

    def config(self) -> dict:
        return {**super().config(), "mag_weights": self.mag_weights, "aux_decoder": self.aux_decoder,
                "penalty": self.penalty, "penalty_decoder": self.penalty_decoder,
                "normalize_decoder": self.normalize_decoder, "decoder_init_norm": self.decoder_init_norm,
                "resample": self.resample}

    def pre_activations(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pi_gate, pi_mag), each [batch, d_sae]; the tied variants share one encoder matmul."""
        self.check_input(x)
        if self.mag_weights == "untied":
            return (centred_matmul(x, self.W_gate, self.b_gate, self.b_dec),
                    centred_matmul(x, self.W_mag, self.b_mag, self.b_dec))
        z = centred_matmul(x, self.W_gate, None, self.b_dec)               # x' W_gate  [batch, d_sae]
        pi_gate = z + self.b_gate                                           # eq. 5
        pi_mag = z * torch.exp(self.r_mag) + self.b_mag                     # eqs. 6, 8
        return pi_gate, pi_mag

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        pi_gate, pi_mag = self.pre_activations(x)
        return (pi_gate > 0) * torch.relu(pi_mag)                           # eq. 7

    def activations(self, x: torch.Tensor, support_max_density: float = 0.0):
        """(f, ReLU(pi_gate)), each [batch, d_sae]: the codes and the gate's own activations (eqs. 5-8).

        With support_max_density > 0 (tied weights, CPU) and an open gate on at most that fraction of the
        batch x d_sae entries, the sparse form instead: (f, ReLU(pi_gate)) at the open gates, each [nnz],
        and their Support (saelib/sparse.py). Elsewhere both are 0 and so are their gradients."""
        if self.mag_weights == "untied":
            pi_gate, pi_mag = self.pre_activations(x)
            return (pi_gate > 0) * torch.relu(pi_mag), torch.relu(pi_gate)
        self.check_input(x)
        # x' W = x W - b_dec W (see centred_matmul: no gradient with respect to x); the constant parts of
        # pi_gate and pi_mag then go into one bias vector each
        xW = x @ self.W_gate                                                # [batch, d_sae]
        shift = self.b_dec @ self.W_gate                                    # [d_sae]
        scale = torch.exp(self.r_mag)                                       # [d_sae], W_mag = scale * W_gate
        support = support_above(xW, (shift - self.b_gate).detach(), support_max_density)  # pi_gate > 0
        if support is None:
            return GatedActivations.apply(xW, self.b_gate - shift, scale, self.b_mag - scale * shift)
        cols = support.cols               # (index_select below: gathers with a deterministic backward)
        xW_centred = select_pre_activations(xW, support, x, self.W_gate, None, self.b_dec,  # x' W_gate
                                            product_only=True)                              # [nnz]
        gate_relu = xW_centred + self.b_gate.index_select(0, cols)          # eq. 5: pi_gate > 0 here
        f = torch.relu(torch.addcmul(self.b_mag.index_select(0, cols), xW_centred,          # eqs. 6-8
                                     scale.index_select(0, cols)))
        return f, gate_relu, support

    def loss(self, x: torch.Tensor, sparsity_coeff: float) -> LossOutput:
        check_sparsity_coeff(sparsity_coeff)
        out = self.activations(x, self.sparse_max_density if torch.is_grad_enabled() else 0.0)
        f, gate_relu = out[:2]                          # [batch, d_sae] each, or [nnz] at the support
        if len(out) == 3:                               # sparse (saelib/sparse.py): decode at the support
            support = out[2]
            gate_sum = torch.zeros_like(self.b_gate).index_add(0, support.cols, gate_relu)    # [d_sae]
            decode = lambda codes, W, b: sparse_decode(codes, support, W) + b
        else:
            gate_sum = gate_relu.sum(0)                                     # [d_sae]
            decode = lambda codes, W, b: torch.addmm(b, codes, W)           # codes W + b
        # (the penalty before the aux decoder: autograd then adds its gradient in place into the decoder's)
        if self.penalty == "l1":
            sparsity = gate_sum.sum() / x.shape[0]                          # ||ReLU(pi_gate)||_1
        else:
            norms = self.decoder_norms()
            if self.penalty_decoder == "frozen":
                norms = norms.detach()
            # batch mean of sum_i ReLU(pi_gate)_i ||W_dec[i]||  (a broadcast gradient, see ReLUSAE)
            sparsity = gate_sum @ norms / x.shape[0]

        x_hat = decode(f, self.W_dec, self.b_dec)
        reconstruction = (x_hat - x).pow(2).sum(-1).mean()

        W_aux, b_aux = self.W_dec, self.b_dec
        if self.aux_decoder == "frozen":
            W_aux, b_aux = W_aux.detach(), b_aux.detach()                   # stop-gradient copies
        x_hat_aux = decode(gate_relu, W_aux, b_aux)                         # x_hat_frozen(ReLU(pi_gate))
        aux = (x_hat_aux - x).pow(2).sum(-1).mean()                         # ||x - x_hat_frozen(ReLU(pi_gate))||^2

        loss = reconstruction + sparsity_coeff * sparsity + aux             # eq. 9
        if len(out) == 3:
            f = SparseCodes(f, support, self.d_sae)                  # dense [batch, d_sae] if read
        return LossOutput(loss, reconstruction, sparsity, aux, f, x_hat)

    @torch.no_grad()
    def jumprelu_threshold(self) -> torch.Tensor:
        """theta = b_mag - exp(r_mag) * b_gate, the threshold of the equivalent JumpReLU SAE."""
        if self.mag_weights == "untied":
            raise ValueError("mag_weights='untied' has no equivalent JumpReLU SAE; "
                             "allowed for to_jumprelu: 'r_mag', 'no_r_mag'")
        return self.b_mag - torch.exp(self.r_mag) * self.b_gate

    @torch.no_grad()
    def to_jumprelu(self):
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
        sae.b_enc.copy_(self.b_mag)
        sae.log_threshold.copy_(torch.log(theta))                           # log 0 = -inf -> theta = 0
        sae.W_dec.copy_(self.W_dec)
        sae.b_dec.copy_(self.b_dec)
        return sae

    @classmethod
    @torch.no_grad()
    def rescale_and_shift(cls, relu_sae) -> "GatedSAE":
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


class GatedActivations(torch.autograd.Function):
    """(xW, c_gate, s, c_mag) -> (f, ReLU(pi_gate)) for the tied Gated SAE, eqs. 5-8, where
        pi_gate = xW + c_gate         = x' W_gate + b_gate                          (eq. 5)
        pi_mag  = xW * s + c_mag      = x' (exp(r_mag) W_gate) + b_mag              (eqs. 6, 8)
    with xW = x W_gate, s = exp(r_mag), c_gate = b_gate - b_dec W_gate, c_mag = b_mag - s (b_dec W_gate).

    The same values as the plain expressions in GatedSAE.encode, with the backward written out so that a
    training step makes two [batch, d_sae] temporaries here instead of about ten:
        f             = 1[pi_gate > 0] * ReLU(pi_mag)     d f / d pi_mag = 1[f > 0];  no gradient to the gate
        ReLU(pi_gate)                                     d / d pi_gate  = 1[pi_gate > 0]
        d pi_gate / d xW = 1,   d pi_mag / d xW = s,   d pi_mag / d s = xW
    """

    @staticmethod
    def forward(ctx, xW, c_gate, s, c_mag):
        pi_gate = xW + c_gate                                               # eq. 5
        pi_mag = torch.addcmul(c_mag, xW, s)                                # eqs. 6, 8
        gate_relu = pi_gate.relu_()                                         # ReLU(pi_gate), in place
        f = keep_where_positive(pi_mag.relu_(), gate_relu)                  # eq. 7: 1[pi_gate > 0] * ReLU(pi_mag)
        ctx.save_for_backward(xW, s, f, gate_relu)
        return f, gate_relu

    @staticmethod
    def backward(ctx, grad_f, grad_gate_relu):
        xW, s, f, gate_relu = ctx.saved_tensors
        if grad_gate_relu is None:
            grad_xW = torch.zeros_like(xW)
        else:
            grad_xW = keep_where_positive(grad_gate_relu, gate_relu)        # d / d pi_gate  [batch, d_sae]
        grad_c_gate = grad_xW.sum(0)
        grad_s = grad_c_mag = None
        if grad_f is not None:
            grad_pi_mag = keep_where_positive(grad_f, f)                    # d / d pi_mag   [batch, d_sae]
            grad_c_mag = grad_pi_mag.sum(0)
            grad_xW.addcmul_(grad_pi_mag, s)                                # + d / d pi_mag * s
            if ctx.needs_input_grad[2]:
                grad_s = grad_pi_mag.mul_(xW).sum(0)                        # sum_b d / d pi_mag * xW
        return grad_xW, grad_c_gate, grad_s, grad_c_mag
