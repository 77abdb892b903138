"""One training protocol for every SAE family, shown in every notebook, with each family's learning rate
chosen by a recorded sweep rather than typed in.

A comparison between families (or between an arm and its ablation) is only fair when everything that is not
the point of the comparison is the same. `Protocol` holds those shared settings; `train_config` turns a
protocol, an `SAESpec` and a scale into the exact `TrainConfig` a run uses; `lr_sweep` trains every family at
a few learning rates at one operating point and picks, per family, the rate with the lowest held-out training
objective (mean over seeds).

    from saelib.lab.protocol import Protocol, lr_sweep, show_protocol
    base = Protocol(**protocol_changes)                  # protocol_changes: a dict in the parameters cell
    tuning = lr_sweep(site, base)                         # seeds LR_SWEEP_SEEDS; trains once, later calls load
    protocol = tuning.protocol                            # base with the chosen learning rate per family
    protocol, tuning = notebook_protocol(site, protocol_changes)    # the same in one call (no sweep if "lrs" given)
    show_protocol(protocol, site.scale, specs)            # prints the protocol and each spec's TrainConfig
    runs = sweep(site, specs, seeds=(0, 1, 2), protocol=protocol)

The settings, and why (each applies to every family alike):

* Adam(beta1 = 0, beta2 = 0.999): the Gated and JumpReLU papers' optimiser (Gated paper §5 / App.;
  JumpReLU paper App.). Anthropic's April-2024 update uses beta1 = 0.9; notebook 01 varies it as one arm.
* Gradient clipping at global norm 1 (Anthropic, Circuits Updates April 2024). With inputs scaled to unit
  mean squared norm, gradient norms are ~0.1 after a few hundred steps but 4-15 in the first steps (more for
  Gated than for ReLU or JumpReLU); unclipped, those few steps set Adam's second-moment estimate for about
  1 / (1 - beta2) = 1000 steps, i.e. most of a short run, and unequally per family. Clipping at 1 acts on
  the start-up steps only.
* Linear LR warm-up over the first 5% of steps (re-applied after each resampling of dead features) and linear
  LR decay to 0 over the last 20% (the April update's decay); linear lambda warm-up over the first 5% (the
  April update). Fractions of the run, so a longer budget keeps the same shape.
* The same token budget for every family: `budget` times the scale's batch_size * train_steps.
* Dead-feature resampling (only for SAEs that ask for it: the standard SAE and L1 Gated SAEs) `resamples`
  times per run.
* Per-family constructor options that differ from the papers' defaults at our budgets (JumpReLU's theta
  init, see notebook 03), listed in `options` and printed with the rest.

Learning rates: `lr_sweep` trains each family at LR_CANDIDATES at the operating point LR_SWEEP_POINT (a
point of each family's shared frontier grid, so the chosen rate's runs are also that frontier's point), and
picks the lowest held-out objective (the loss the optimiser minimises: reconstruction + lambda * sparsity
[+ Gated's aux term], on held-out activations). Without a sweep a `Protocol` uses UNTUNED_LR for every
family and says so (`lr_source`).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

from saelib.lab.scales import Scale
from saelib.models.architectures import ARCHITECTURES
from saelib.train import TrainConfig
from saelib.validation import check_choice, check_positive

if TYPE_CHECKING:  # pragma: no cover
    from saelib.lab.experiments import SAESpec

FAMILIES = ("standard", "gated", "jumprelu", "topk")   # the families the LR sweep tunes by default
UNTUNED_LR = 1e-3                      # used only by a Protocol whose learning rates were not swept
# The LR sweep's grid, the same for every family. Measured at default scale (seed 0, each family's middle point):
# the held-out objective falls from 1e-3 to 3e-3 to 1e-2 for ReLU, Gated and JumpReLU, 3e-2 kills most latents of
# ReLU and Gated SAEs (315 and 440 of 512 dead), and TopK does better at 3e-3 than at 1e-2: four values bracket
# every family's optimum.
LR_CANDIDATES = (1e-3, 3e-3, 1e-2, 3e-2)
# The LR sweep's operating point per family is the middle point (index n // 2) of its operating grid
# (experiments.frontier_specs with the scale's sweep_points), which the frontier (frontier_points) contains, so
# the chosen rate's runs are a frontier point; its seeds are the first n_seeds - 1 of the claims' seeds (at least
# one): a tuning step, not a claim.


def _default_options() -> dict[str, dict]:
    # JumpReLU: from the paper's theta_init = 1e-3, Adam moves log(theta) too little in a 1.5k-step run to
    # reach useful thresholds (~0.05-0.3 on unit-mean-squared-norm activations); notebook 03 shows it.
    return {"jumprelu": {"theta_init": 0.05}}


@dataclass(frozen=True)
class Protocol:
    """The training settings every family shares (see the module docstring for the reasons).

    lrs            learning rate per family; a family not listed uses UNTUNED_LR
    lr_source      where the learning rates come from (printed by show_protocol)
    adam_betas     Adam (beta1, beta2)
    grad_clip_norm global gradient-norm clip; None = no clipping
    lr_warmup_frac linear LR warm-up over this fraction of the steps (re-applied after each resample)
    lr_decay_frac  linear LR decay to 0 over this final fraction of the steps
    sparsity_warmup_frac  linear lambda warm-up over this fraction of the steps
    budget         token budget as a multiple of the scale's batch_size * train_steps (3.0: 3x the tokens)
    resamples      resamplings of dead features per run, for SAEs that resample
    options        constructor options per family where ours differ from the papers' defaults
    """

    lrs: Mapping[str, float] = field(default_factory=dict)
    lr_source: str = f"untuned: {UNTUNED_LR:g} for every family"
    adam_betas: tuple[float, float] = (0.0, 0.999)
    grad_clip_norm: float | None = 1.0
    lr_warmup_frac: float = 0.05
    lr_decay_frac: float = 0.2
    sparsity_warmup_frac: float = 0.05
    budget: float = 1.0
    resamples: int = 3
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=_default_options)

    def __post_init__(self):
        for family, lr in self.lrs.items():
            check_choice("lrs key", family, ARCHITECTURES)
            check_positive(f"lrs[{family!r}]", lr)
        for family in self.options:
            check_choice("options key", family, ARCHITECTURES)
        if self.grad_clip_norm is not None:
            check_positive("grad_clip_norm", self.grad_clip_norm)
        for name in ("lr_warmup_frac", "lr_decay_frac", "sparsity_warmup_frac"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name}={value!r} is out of range; allowed: [0, 1)")
        if self.lr_warmup_frac + self.lr_decay_frac > 1.0:
            raise ValueError(f"lr_warmup_frac + lr_decay_frac = {self.lr_warmup_frac + self.lr_decay_frac} "
                             "must be <= 1")
        check_positive("budget", self.budget)
        check_positive("resamples", self.resamples, allow_zero=True, integer=True)
        object.__setattr__(self, "adam_betas", tuple(float(b) for b in self.adam_betas))

    def lr_for(self, family: str) -> float:
        return float(self.lrs.get(family, UNTUNED_LR))

    def options_for(self, family: str) -> dict:
        return dict(self.options.get(family, {}))

    def steps(self, scale: Scale) -> int:
        return max(1, round(scale.train_steps * self.budget))

    def with_(self, **changes) -> Protocol:
        """A copy with some fields replaced, e.g. `protocol.with_(budget=3.0)`."""
        return replace(self, **changes)


def protocol_fields() -> list[str]:
    return [f.name for f in fields(Protocol)]


def make_protocol(changes: Mapping[str, Any] | None = None) -> Protocol:
    """Protocol(**changes), with a clear error naming an unknown field (for a notebook's parameters cell)."""
    changes = dict(changes or {})
    unknown = sorted(set(changes) - set(protocol_fields()))
    if unknown:
        raise ValueError(f"protocol_changes={unknown} are not Protocol fields; allowed: {', '.join(protocol_fields())}")
    return Protocol(**changes)


def train_config(spec: SAESpec, scale: Scale, seed: int = 0, protocol: Protocol | None = None) -> TrainConfig:
    """The exact TrainConfig of `spec` at `scale` under `protocol` (default: Protocol()), then spec.train
    (the arm's own deliberate changes) on top."""
    protocol = protocol or Protocol()
    steps = protocol.steps(scale)
    settings: dict[str, Any] = dict(
        total_steps=steps, batch_size=scale.batch_size, lr=protocol.lr_for(spec.architecture),
        adam_betas=protocol.adam_betas, grad_clip_norm=protocol.grad_clip_norm,
        lr_warmup_steps=round(protocol.lr_warmup_frac * steps), lr_decay_frac=protocol.lr_decay_frac,
        sparsity_warmup_frac=protocol.sparsity_warmup_frac, sparsity_coeff=spec.sparsity_coeff, seed=seed,
        log_every=max(1, steps // 50), progress=False,
        resample_every=max(1, steps // (protocol.resamples + 1)), resample_pool=16 * scale.batch_size)
    if protocol.resamples == 0:
        settings["resample"] = False
    settings.update(spec.train)
    if "sparsity_warmup_steps" in spec.train and "sparsity_warmup_frac" not in spec.train:
        settings["sparsity_warmup_frac"] = 0.0
    return TrainConfig(**settings)


# ----------------------------------------------------------------------------- showing it

def describe(protocol: Protocol, scale: Scale | None = None) -> str:
    """The protocol as a few lines of text."""
    lines = ["Training protocol (the same for every family):"]
    families = dict.fromkeys([*FAMILIES, *protocol.lrs])
    if scale is not None:
        steps = protocol.steps(scale)
        lines.append(f"  budget         {protocol.budget:g}x: {steps} steps x batch {scale.batch_size} = "
                     f"{steps * scale.batch_size:,} tokens per SAE")
    else:
        lines.append(f"  budget         {protocol.budget:g}x the scale's batch_size * train_steps")
    clip = "none" if protocol.grad_clip_norm is None else f"global norm {protocol.grad_clip_norm:g}"
    lines += [f"  optimiser      Adam(beta1={protocol.adam_betas[0]:g}, beta2={protocol.adam_betas[1]:g})",
              f"  grad clipping  {clip}",
              f"  LR schedule    linear warm-up over the first {protocol.lr_warmup_frac:.0%} of steps (again after "
              f"each resample), linear decay to 0 over the last {protocol.lr_decay_frac:.0%}",
              f"  lambda         linear warm-up over the first {protocol.sparsity_warmup_frac:.0%} of steps",
              f"  resampling     {protocol.resamples}x per run, for SAEs that resample dead features",
              "  learning rate  " + ", ".join(f"{f} {protocol.lr_for(f):g}" for f in families)
              + f"  ({protocol.lr_source})"]
    if protocol.options:
        lines.append("  family options " + "; ".join(f"{f}: {dict(o)}" for f, o in protocol.options.items()))
    return "\n".join(lines)


def config_line(cfg: TrainConfig) -> str:
    """The TrainConfig fields that shape training, on one line."""
    keep = ("total_steps", "batch_size", "lr", "adam_betas", "grad_clip_norm", "lr_warmup_steps", "lr_decay_frac",
            "sparsity_coeff", "sparsity_warmup_frac", "sparsity_warmup_steps", "resample", "resample_every", "seed")
    d = asdict(cfg)
    return "TrainConfig(" + ", ".join(f"{k}={d[k]!r}" for k in keep if k in d) + ")"


def show_protocol(protocol: Protocol, scale: Scale, specs: Iterable[SAESpec] = (), seed: int = 0) -> str:
    """Print the protocol and, for each distinct (label, architecture) among `specs`, the exact TrainConfig of
    its first spec (other points of the same arm differ only in sparsity_coeff / seed). Returns the text."""
    lines = [describe(protocol, scale)]
    seen = set()
    for spec in specs:
        key = (spec.label, spec.architecture)
        if key in seen:
            continue
        seen.add(key)
        options = {**protocol.options_for(spec.architecture), **spec.options}
        lines.append(f"{spec.label} [{spec.architecture}{', ' + str(options) if options else ''}]:\n  "
                     + config_line(train_config(spec, scale, seed, protocol)))
    text = "\n".join(lines)
    print(text)
    return text


# ----------------------------------------------------------------------------- the learning-rate sweep


def check_seeds(seeds: Sequence[int] | None, scale: Scale, name: str = "seeds") -> tuple[int, ...]:
    """A notebook's `seeds` parameter: None -> the scale's (0 .. n_seeds - 1); otherwise distinct integers >= 0."""
    from saelib.validation import check_seed

    if seeds is None:
        return tuple(range(scale.n_seeds))
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Iterable):
        raise ValueError(f"{name}={seeds!r} is not allowed; allowed: None or a list of distinct integers >= 0")
    values = list(seeds)
    if not values or len(set(values)) != len(values):
        raise ValueError(f"{name}={values!r} is not allowed; allowed: None or a non-empty list of distinct "
                         "integers >= 0")
    for s in values:
        check_seed(s, name)
    return tuple(int(s) for s in values)


# The LR sweep that picks each family's learning rate lives in saelib/lab/lr_sweep.py; re-exported here so that
# `from saelib.lab.protocol import notebook_protocol, lr_sweep, ...` keeps working.
from saelib.lab.lr_sweep import (  # noqa: E402,F401
    LRSweep,
    held_out_objective,
    lr_sweep,
    lr_sweep_point,
    lr_sweep_seeds,
    lr_sweep_specs,
    notebook_protocol,
    tuned_protocol,
)
