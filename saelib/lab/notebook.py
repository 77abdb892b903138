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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(device: str) -> str:
    check_choice("device", device, DEVICES)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' but no CUDA device is available; allowed here: 'cpu', 'auto'")
    return device


def check_parameters(*, scale: str, seed: int, device: str = "cpu", model: str = "embedded",
                     hook: str | None = None, **scale_overrides) -> Settings:
    """Validate the common parameters, seed python/numpy/torch, and return the resolved settings.

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
    seed_everything(seed)
    return Settings(get_scale(scale, **scale_overrides), seed, resolve_device(device), model, hook)
