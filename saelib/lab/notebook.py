"""What the first cell after a notebook's `parameters` cell calls: validate every parameter (a bad value
passed through papermill stops the notebook right there, naming the parameter and the allowed values),
seed everything, and resolve the scale.

    settings = check_parameters(scale=scale, seed=seed, device=device, model=model, hook=hook)
    check_each("kernels", kernels, KERNELS)
    check_coefficients("sparsity_coeffs", sparsity_coeffs)
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch

from saelib.lab.scales import PRESETS, Scale, get_scale
from saelib.validation import check_choice, check_coefficients, check_each, check_positive, check_seed

DEVICES = ("cpu", "cuda", "auto")
# check_each and check_coefficients live in saelib.validation; notebooks import them from here too
__all__ = ["Settings", "check_parameters", "check_each", "check_coefficients", "resolve_device", "seed_everything"]


@dataclass(frozen=True)
class Settings:
    scale: Scale
    seed: int
    device: str
    model: str
    hook: str | None
    force_retrain: bool = False

    def __repr__(self) -> str:
        """One readable line (the last expression of a notebook's validation cell shows it)."""
        s = self.scale
        where = f"model {self.model!r}" + (f" at {self.hook}" if self.hook else "")
        return (f"scale {s.name!r}: {s.train_tokens:,} training / {s.eval_tokens:,} held-out tokens, "
                f"batch {s.batch_size:,} x {s.train_steps:,} steps, d_sae = {s.expansion} x d_in, "
                f"{s.frontier_points} SAEs per frontier (operating grid {s.sweep_points}) | seed {self.seed} | "
                f"device {self.device} | {where}"
                + (" | force_retrain" if self.force_retrain else ""))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(device: str) -> str:
    """"cpu", "cuda" or "auto" as a device name, through saelib's one resolver (training.distributed)."""
    from saelib.training.distributed import resolve_device as resolve

    check_choice("device", device, DEVICES)
    return str(resolve(device))


def check_parameters(*, scale: str, seed: int, device: str = "cpu", model: str = "embedded",
                     hook: str | None = None, force_retrain: bool = False, **scale_overrides) -> Settings:
    """Validate the common parameters, seed python/numpy/torch, and return the resolved settings.

    `force_retrain=True` makes every run()/sweep() of the notebook retrain its SAEs (once each) instead of
    loading them from the run cache (saelib.lab.experiments.set_force_retrain); costs the full training time
    of every SAE the notebook uses (minutes per frontier at default scale).

    `scale_overrides` (e.g. train_steps=None or 3000) replace fields of the scale preset when not None.
    """
    from saelib.data.registry import MODEL_NAMES

    check_choice("scale", scale, PRESETS)
    check_seed(seed)
    check_choice("model", model, MODEL_NAMES)
    if hook is not None and not isinstance(hook, str):
        raise ValueError(f"hook={hook!r} must be a transformer_lens hook name such as 'blocks.2.hook_resid_post'")
    for name, value in scale_overrides.items():
        if value is not None:
            check_positive(name, value, integer=True)
    if not isinstance(force_retrain, bool):
        raise ValueError(f"force_retrain={force_retrain!r} is not allowed; allowed: True, False")
    from saelib.lab.experiments import set_force_retrain

    set_force_retrain(force_retrain)
    seed_everything(seed)
    return Settings(get_scale(scale, **scale_overrides), seed, resolve_device(device), model, hook, force_retrain)
