"""What every sparse autoencoder in saelib shares: the output record, the module base class (weight
initialisation, the centred encoder product, decoding, the unit-norm decoder hooks).

Weight layout follows SAELens (so files travel): W_enc is [d_in, d_sae], W_dec is [d_sae, d_in];
row i of W_dec is feature i's decoder direction (a "column" of W_dec in the papers' notation).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from saelib.validation import check_choice, check_positive

ENCODER_INITS = ("transpose", "independent")   # W_enc = W_dec^T at init | drawn on its own


def random_directions(n: int, d: int, norm: float = 1.0) -> torch.Tensor:
    """[n, d] rows drawn uniformly on the sphere of radius `norm` (uses the global torch RNG)."""
    w = torch.randn(n, d)
    return w * (norm / w.norm(dim=1, keepdim=True))


def centred_matmul(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor | None, b_dec: torch.Tensor) -> torch.Tensor:
    """(x - b_dec) @ W + b   [batch, d_sae]  (b=None: no bias), computed as  x @ W + (b - b_dec @ W).

    The two are equal up to rounding. Written the second way, x never enters the graph through a
    subtraction with a parameter, so autograd skips the gradient with respect to the input, a
    [batch, d_sae] @ [d_sae, d_in] product (1/6 of a standard SAE's training step) that training never
    needs; b_dec gets its gradient through the small vector-matrix product b_dec @ W.
    """
    shift = b_dec @ W                                                    # [d_sae]
    return torch.addmm(-shift if b is None else b - shift, x, W)


def check_sparsity_coeff(value: Any) -> None:
    """sparsity_coeff must be a number >= 0 (tensors, e.g. from a warm-up schedule, are trusted)."""
    if not isinstance(value, torch.Tensor):
        check_positive("sparsity_coeff", value, allow_zero=True)


# ----------------------------------------------------------------------------- output record

@dataclass
class LossOutput:
    """What `sae.loss(x, sparsity_coeff)` returns.

    loss            scalar to backpropagate: reconstruction + sparsity_coeff * sparsity + aux
    reconstruction  scalar, the reconstruction term as it enters the loss
    sparsity        scalar, the penalty *before* multiplying by sparsity_coeff
    aux             scalar, auxiliary term (Gated's frozen-decoder reconstruction, TopK's AuxK); 0 elsewhere
    f               [batch, d_sae] feature activations
    x_hat           [batch, d_in] reconstruction

    A sparse training step (saelib/fast) may pass a function instead of f; the dense [batch, d_sae]
    tensor is then built on first access only (a training step mostly never reads it).
    """

    loss: torch.Tensor
    reconstruction: torch.Tensor
    sparsity: torch.Tensor
    aux: torch.Tensor
    _f: torch.Tensor | Callable[[], torch.Tensor]
    x_hat: torch.Tensor

    @property
    def f(self) -> torch.Tensor:
        if callable(self._f):
            self._f = self._f()
        return self._f

    def feature_max(self) -> torch.Tensor:
        """[d_sae]: each feature's largest activation over the batch (0 if it never fired), without
        building a sparse step's dense codes."""
        feature_max = getattr(self._f, "feature_max", None)
        if feature_max is not None:
            return feature_max()
        return self.f.detach().amax(0)


# ----------------------------------------------------------------------------- base module

class SAE(nn.Module):
    """Base class. Subclasses define `encode`, `loss` and `config`, and call `init_weights`.

    Hooks the training loop calls every step (defaults do nothing):
      before_optimizer_step()   e.g. remove the gradient component parallel to unit-norm decoder rows
      after_optimizer_step()    e.g. renormalise decoder rows to unit norm
    """

    architecture: str = "base"
    # weights multiplied by the input (scaled by s when folding an input scaling factor into the SAE)
    _input_weights: tuple[str, ...] = ("W_enc",)
    # Unit-norm decoder rows (standard, Gated, JumpReLU and TopK defaults; not the April-update variants)
    normalize_decoder: bool = False

    W_enc: torch.Tensor
    b_enc: torch.Tensor
    W_dec: torch.Tensor
    b_dec: torch.Tensor

    def __init__(self, d_in: int, d_sae: int):
        super().__init__()
        check_positive("d_in", d_in, integer=True)
        check_positive("d_sae", d_sae, integer=True)
        self.d_in = d_in
        self.d_sae = d_sae

    def init_weights(self, decoder_init_norm: float, encoders: tuple[str, ...] = ("W_enc",),
                     biases: tuple[str, ...] = ("b_enc",), encoder_init: str = "transpose") -> None:
        """Decoder rows: random directions of norm decoder_init_norm; every encoder = W_dec^T (at init
        only; Anthropic's April-2024 update), or with encoder_init="independent" its own random directions of
        the same norm (the older independent initialisation, with only the tying changed); every bias zero.
        Registers W_dec, the encoders, the biases, b_dec (in that order)."""
        check_choice("encoder_init", encoder_init, ENCODER_INITS)
        W_dec = random_directions(self.d_sae, self.d_in, decoder_init_norm)   # [d_sae, d_in]
        self.W_dec = nn.Parameter(W_dec)
        for name in encoders:
            if encoder_init == "transpose":
                W_enc = W_dec.T.clone()                                        # W_enc = W_dec^T  [d_in, d_sae]
            else:
                W_enc = random_directions(self.d_sae, self.d_in, decoder_init_norm).T.clone()   # independent
            setattr(self, name, nn.Parameter(W_enc))                           # [d_in, d_sae]
        for name in biases:
            setattr(self, name, nn.Parameter(torch.zeros(self.d_sae)))         # [d_sae]
        self.b_dec = nn.Parameter(torch.zeros(self.d_in))                      # [d_in]

    # --- to be provided by subclasses ---------------------------------------------------------
    def encode(self, x: torch.Tensor) -> torch.Tensor:  # [batch, d_in] -> [batch, d_sae]
        raise NotImplementedError

    def loss(self, x: torch.Tensor, sparsity_coeff: float | torch.Tensor) -> LossOutput:
        raise NotImplementedError

    def config(self) -> dict:
        """JSON-serialisable constructor arguments (written to cfg.json by saelib.io)."""
        return {"d_in": self.d_in, "d_sae": self.d_sae}

    # --- shared --------------------------------------------------------------------------------
    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:       # pi [batch, d_sae]
        self.check_input(x)
        return centred_matmul(x, self.W_enc, self.b_enc, self.b_dec)     # (x - b_dec) W_enc + b_enc

    def decode(self, f: torch.Tensor) -> torch.Tensor:  # [batch, d_sae] -> [batch, d_in]
        return torch.addmm(self.b_dec, f, self.W_dec)                   # f W_dec + b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def decoder_norms(self) -> torch.Tensor:  # [d_sae]
        return self.W_dec.norm(dim=1)

    @staticmethod
    def zero_aux(x: torch.Tensor) -> torch.Tensor:
        """The auxiliary term of the architectures that have none: a 0 scalar on x's device and dtype."""
        return torch.zeros((), device=x.device, dtype=x.dtype)

    @property
    def wants_resampling(self) -> bool:
        return False

    @torch.no_grad()
    def before_optimizer_step(self) -> None:
        """Remove the gradient component parallel to each (unit-norm) decoder row."""
        if self.normalize_decoder and self.W_dec.grad is not None:
            W, G = self.W_dec, self.W_dec.grad                          # [d_sae, d_in]
            G.sub_((G * W).sum(dim=1, keepdim=True) * W)

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        """Renormalise decoder rows to unit norm."""
        if self.normalize_decoder:
            self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))

    def check_input(self, x: torch.Tensor) -> None:
        if x.shape[-1] != self.d_in:
            raise ValueError(f"x has trailing dimension {x.shape[-1]} but this SAE has d_in={self.d_in}")

    @torch.no_grad()
    def fold_input_scaling(self, scale: float) -> None:
        """Make an SAE trained on `scale * x` act directly on raw x (same codes, raw-space output).

        encoder weights *= scale; W_dec, b_dec /= scale (pre-activations and thresholds are unchanged).
        """
        check_positive("scale", float(scale))
        for name in self._input_weights:
            getattr(self, name).mul_(scale)
        self.W_dec.div_(scale)
        self.b_dec.div_(scale)

    def extra_repr(self) -> str:
        return f"d_in={self.d_in}, d_sae={self.d_sae}"
