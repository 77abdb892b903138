"""How to train: `TrainConfig`, every setting of a run, validated when it is made.

    cfg = TrainConfig(total_steps=10_000, sparsity_coeff=3e-3, lr=3e-4, lr_warmup_steps=1000)

A config is plain data: `to_dict()` is what a checkpoint records, and a resumed run is refused when a
field in which the two differ changes the result (everything except RESUMABLE_CHANGES).
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from saelib.validation import check_choice, check_positive, check_range, check_seed

# Config fields that may differ between a run and its resumption (they do not change the weights).
RESUMABLE_CHANGES = frozenset({"log_every", "progress", "checkpoint_dir", "checkpoint_every", "keep_checkpoints",
                               "resume_from", "device", "check_finite_every"})


@dataclass(kw_only=True)
class TrainConfig:
    """How to train. Defaults follow the GDM papers (Adam(0, 0.999), batch 4096) unless noted.

    Length (give exactly one):
      total_steps, total_tokens     total_tokens -> ceil(total_tokens / batch_size) steps
    Optimisation:
      batch_size                    global batch (split evenly across ranks under torchrun)
      lr, adam_betas, adam_eps      Adam
      grad_clip_norm                max gradient norm (April update: 1.0); None = no clipping
      lr_warmup_steps               linear LR warm-up, re-applied after each resample
      lr_decay_frac                 linear LR decay to 0 over this final fraction (April update: 0.2)
      sparsity_coeff                lambda; required except for TopK (which ignores it)
      sparsity_warmup_steps / _frac linear lambda warm-up over N steps or a fraction (April: 0.05)
    Resampling dead features (Anthropic):
      resample                      None = ask the SAE (sae.wants_resampling); True / False force it
      resample_every                steps between resamples
      resample_window               a feature is dead if it did not fire during the last N steps
                                    before a resample (default resample_every // 2)
      resample_pool                 inputs scored to choose the new directions (Anthropic: 819,200)
    Bookkeeping:
      log_every, progress           history row every N steps (and at the end); tqdm bar
      checkpoint_dir, checkpoint_every, keep_checkpoints, resume_from
      device                        "auto" (CUDA when present), "cpu", "cuda", "cuda:N"
      precision                     "fp32", or "bf16" (autocast for the forward pass; weights stay fp32)
      check_finite_every            None = every step on CPU, every log_every steps on CUDA
      seed                          seeds torch and the batch shuffling
    """

    total_steps: int | None = None
    total_tokens: int | None = None
    batch_size: int = 4096
    lr: float = 3e-4
    adam_betas: tuple[float, float] = (0.0, 0.999)
    adam_eps: float = 1e-8
    grad_clip_norm: float | None = None
    lr_warmup_steps: int = 0
    lr_decay_frac: float = 0.0
    sparsity_coeff: float | None = None
    sparsity_warmup_steps: int = 0
    sparsity_warmup_frac: float = 0.0
    resample: bool | None = None
    resample_every: int = 25_000
    resample_window: int | None = None
    resample_pool: int = 819_200
    log_every: int = 100
    progress: bool = True
    checkpoint_dir: str | None = None
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2
    resume_from: str | None = None
    device: str = "auto"
    precision: str = "fp32"
    check_finite_every: int | None = None
    seed: int = 0

    def __post_init__(self):
        if (self.total_steps is None) == (self.total_tokens is None):
            raise ValueError(f"give exactly one of total_steps={self.total_steps!r} and "
                             f"total_tokens={self.total_tokens!r}; allowed: one positive integer, the other None")
        for name in ("total_steps", "total_tokens"):
            if getattr(self, name) is not None:
                check_positive(name, getattr(self, name), integer=True)
        for name in ("batch_size", "resample_every", "resample_pool", "log_every", "checkpoint_every",
                     "keep_checkpoints"):
            check_positive(name, getattr(self, name), integer=True)
        for name in ("lr_warmup_steps", "sparsity_warmup_steps"):
            check_positive(name, getattr(self, name), allow_zero=True, integer=True)
        check_positive("lr", self.lr)
        check_positive("adam_eps", self.adam_eps)
        if not isinstance(self.adam_betas, (tuple, list)) or len(self.adam_betas) != 2:
            raise ValueError(f"adam_betas={self.adam_betas!r} must be a pair (beta1, beta2), each in [0, 1)")
        self.adam_betas = tuple(float(b) for b in self.adam_betas)
        for i, beta in enumerate(self.adam_betas):
            check_range(f"adam_betas[{i}]", beta, 0.0, 1.0)
            if beta == 1.0:
                raise ValueError(f"adam_betas[{i}]=1.0 is out of range; allowed: [0, 1)")
        if self.grad_clip_norm is not None:
            check_positive("grad_clip_norm", self.grad_clip_norm)
        check_range("lr_decay_frac", self.lr_decay_frac, 0.0, 1.0)
        check_range("sparsity_warmup_frac", self.sparsity_warmup_frac, 0.0, 1.0)
        if self.sparsity_warmup_steps and self.sparsity_warmup_frac:
            raise ValueError(f"give sparsity_warmup_steps={self.sparsity_warmup_steps} or sparsity_warmup_frac="
                             f"{self.sparsity_warmup_frac}, not both; allowed: at most one non-zero")
        if self.sparsity_coeff is not None:
            check_positive("sparsity_coeff", self.sparsity_coeff, allow_zero=True)
        check_choice("resample", self.resample, (None, True, False))
        if self.resample_window is not None:
            check_positive("resample_window", self.resample_window, integer=True)
            if self.resample_window > self.resample_every:
                raise ValueError(f"resample_window={self.resample_window} is out of range; allowed: "
                                 f"1..resample_every ({self.resample_every})")
        check_choice("progress", self.progress, (True, False))
        for name in ("checkpoint_dir", "resume_from"):
            value = getattr(self, name)
            if value is not None:
                if not isinstance(value, (str, Path)) or str(value) == "":
                    raise ValueError(f"{name}={value!r} must be a path (str or pathlib.Path) or None")
                setattr(self, name, str(value))
        if not (isinstance(self.device, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device)):
            raise ValueError(f"device={self.device!r} is not allowed; allowed values: 'auto', 'cpu', 'cuda', "
                             "'cuda:N'")
        check_choice("precision", self.precision, ("fp32", "bf16"))
        if self.check_finite_every is not None:
            check_positive("check_finite_every", self.check_finite_every, integer=True)
        check_seed(self.seed)

    @property
    def n_steps(self) -> int:
        if self.total_steps is not None:
            return self.total_steps
        assert self.total_tokens is not None                  # __post_init__: exactly one of the two
        return math.ceil(self.total_tokens / self.batch_size)

    @property
    def lr_decay_steps(self) -> int:
        return round(self.lr_decay_frac * self.n_steps)

    @property
    def sparsity_warmup(self) -> int:
        return self.sparsity_warmup_steps or round(self.sparsity_warmup_frac * self.n_steps)

    @property
    def window(self) -> int:
        return self.resample_window or max(1, self.resample_every // 2)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["adam_betas"] = list(self.adam_betas)
        return d
