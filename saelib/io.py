"""Save and load SAEs in SAELens's on-disk layout, safely.

A saved SAE is a folder with two files:

    cfg.json                 SAELens's config fields (architecture, d_in, d_sae, dtype, apply_b_dec_to_input,
                             normalize_activations, k for TopK, metadata with model_name / hook_name, ...)
                             plus a "saelib" entry holding our constructor config so it reloads exactly
    sae_weights.safetensors  the tensors under SAELens's parameter names

Parameter names (ours -> SAELens):
    standard, topk  W_enc, b_enc, W_dec, b_dec                     (same names)
    jumprelu        log_threshold -> threshold = exp(log_threshold)
    batchtopk       threshold (the running global threshold, one value per latent) -> threshold, written as
                    architecture "jumprelu": SAELens's own inference form of a BatchTopK SAE
    gated           W_gate -> W_enc; b_gate, r_mag, b_mag, W_dec, b_dec (mag_bias="tied" writes b_mag =
                    exp(r_mag) b_gate for SAELens and recomputes it on loading)
                    (mag_weights="untied" also writes W_mag, which SAELens has no slot for: such a
                    folder reloads here but not in sae_lens)

Only safetensors and JSON are ever read: nothing is unpickled. `load_sae` also reads folders written
by sae_lens itself (converting apply_b_dec_to_input=False and TopK's rescale_acts_by_decoder_norm
into our conventions); saelib/interop.py adds Gemma Scope's params.npz and in-memory SAELens objects.
"""
from __future__ import annotations

import copy
import json
import math
import os
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from saelib.files import atomic_write, atomic_write_text
from saelib.models.architectures import ARCHITECTURES, create_sae
from saelib.models.base import SAE
from saelib.models.gated import GatedSAE
from saelib.validation import check_choice, check_positive

CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"
FORMAT_VERSION = 1

# SAELens name -> our attribute name (a parameter or buffer of the SAE), per architecture
_PLAIN = {"W_enc": "W_enc", "b_enc": "b_enc", "W_dec": "W_dec", "b_dec": "b_dec"}
_SAE_LENS_NAMES = {
    "standard": _PLAIN,
    "topk": _PLAIN,
    "jumprelu": {**_PLAIN, "threshold": "log_threshold"},
    "batchtopk": {**_PLAIN, "threshold": "threshold"},
    "gated": {"W_enc": "W_gate", "b_gate": "b_gate", "r_mag": "r_mag", "b_mag": "b_mag",
              "W_dec": "W_dec", "b_dec": "b_dec"},
}
_GATED_UNTIED = {"W_enc": "W_gate", "b_gate": "b_gate", "W_mag": "W_mag", "b_mag": "b_mag",
                 "W_dec": "W_dec", "b_dec": "b_dec"}
# saelib-only buffers kept beside the SAELens weights (SAELens ignores the extra file)
BUFFERS_FILENAME = "saelib_buffers.safetensors"
_SAELIB_BUFFERS = ("bandwidths", "tokens_since_fired")
# SAELens metadata keys we write when given (SAELens keeps them under "metadata")
METADATA_KEYS = ("model_name", "hook_name", "hook_head_index", "context_size", "prepend_bos", "dataset_path")


def _names(sae: SAE) -> dict[str, str]:
    if sae.architecture == "gated" and getattr(sae, "mag_weights", "r_mag") == "untied":
        return _GATED_UNTIED
    return _SAE_LENS_NAMES[sae.architecture]


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# ----------------------------------------------------------------------------- our SAE <-> SAELens dicts

@torch.no_grad()
def sae_lens_state(sae: SAE, *, metadata: dict | None = None) -> tuple[dict, dict[str, torch.Tensor]]:
    """(cfg dict, tensors) of `sae` in SAELens's layout; the inverse of `sae_from_sae_lens_state`."""
    check_choice("sae.architecture", sae.architecture, _SAE_LENS_NAMES)
    tensors = {}
    for lens_name, ours in _names(sae).items():
        value = (sae.magnitude_bias() if isinstance(sae, GatedSAE) and ours == "b_mag"   # tied: computed
                 else getattr(sae, ours)).detach()
        if ours == "log_threshold":
            value = torch.exp(value)                                   # theta = exp(log_threshold)
        tensors[lens_name] = value.contiguous().cpu().clone()
    meta = {k: v for k, v in (metadata or {}).items() if v is not None}
    top_level = {k: v for k, v in meta.items() if k in METADATA_KEYS}
    hook_name = meta.get("hook_name") or ""
    cfg = {
        # SAELens saves a trained BatchTopK SAE as a JumpReLU SAE with its global threshold (no inference class)
        "architecture": "jumprelu" if sae.architecture == "batchtopk" else sae.architecture,
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "dtype": _dtype_name(sae.W_dec.dtype),
        "device": "cpu",
        "apply_b_dec_to_input": True,              # all our encoders see x' = x - b_dec
        "normalize_activations": "none",           # any input scaling is folded into the weights
        "reshape_activations": "hook_z" if "hook_z" in hook_name else "none",  # SAELens's convention
        **({"k": sae.k, "rescale_acts_by_decoder_norm": False} if sae.architecture == "topk" else {}),
        **top_level,                               # top level: read by SAELens's pre-6.0 config path
        "metadata": meta,                          # nested: the SAELens >= 6 layout
        "saelib": {
            "format_version": FORMAT_VERSION,
            "architecture": sae.architecture,
            "class": type(sae).__name__,
            "config": sae.config(),
            "sae_lens_loadable": _names(sae) is not _GATED_UNTIED,
        },
    }
    return cfg, tensors


def _fail(source: str, message: str) -> ValueError:
    return ValueError(f"{source}: {message}")


def _from_sae_lens_cfg(cfg: dict, source: str) -> tuple[str, dict]:  # source: where cfg came from
    """(architecture, constructor kwargs) from a cfg dict: ours when present, else SAELens's fields."""
    ours = cfg.get("saelib")
    if ours is not None:
        if ours.get("format_version") != FORMAT_VERSION:
            raise _fail(source, f"saelib.format_version={ours.get('format_version')!r}; allowed: {FORMAT_VERSION}")
        architecture, kwargs = ours.get("architecture"), dict(ours.get("config", {}))
    else:
        architecture = cfg.get("architecture", "standard")
        kwargs = {"d_in": cfg.get("d_in"), "d_sae": cfg.get("d_sae")}
        if architecture == "topk":
            kwargs["k"] = cfg.get("k", (cfg.get("activation_fn_kwargs") or {}).get("k"))
        if architecture == "batchtopk":                  # a SAELens BatchTopKTrainingSAE's config
            kwargs["k"] = cfg.get("k")
            if cfg.get("topk_threshold_lr") is not None:
                kwargs["threshold_lr"] = cfg["topk_threshold_lr"]
    if architecture not in ARCHITECTURES:
        raise _fail(source, f"architecture={architecture!r} is not supported; allowed: {', '.join(ARCHITECTURES)}")
    for name in ("d_in", "d_sae"):
        if name not in kwargs or isinstance(kwargs[name], bool) or not isinstance(kwargs[name], int):
            raise _fail(source, f"{name}={kwargs.get(name)!r} must be a positive integer")
    return architecture, kwargs


@torch.no_grad()
def sae_from_sae_lens_state(cfg: dict, tensors: dict[str, torch.Tensor], *, source: str = "SAELens state",
                            cfg_source: str | None = None, expected_d_in: int | None = None,
                            dtype: torch.dtype | None = None) -> SAE:
    """Build our SAE from a SAELens-layout (cfg, tensors) pair. Errors name `source` (where the tensors
    came from) or `cfg_source` (where cfg came from; default `source`) and the parameter."""
    cfg_source = cfg_source or source
    architecture, kwargs = _from_sae_lens_cfg(cfg, cfg_source)
    if expected_d_in is not None and kwargs["d_in"] != expected_d_in:
        raise _fail(cfg_source, f"d_in={kwargs['d_in']} does not match expected_d_in={expected_d_in} "
                            f"(the width of the activations this SAE is meant for)")
    tensors = dict(tensors)
    if architecture == "batchtopk" and "topk_threshold" in tensors:   # SAELens training state: one scalar
        tensors["threshold"] = tensors.pop("topk_threshold").reshape(()).expand(kwargs["d_sae"]).clone()
    scaling = tensors.pop("scaling_factor", None)  # legacy SAELens fine-tuning scale: only all-ones is neutral
    if scaling is not None and not torch.all(scaling == 1):
        raise _fail(source, "parameter 'scaling_factor' (SAELens finetuning_scaling_factor) is not supported")

    normalize = cfg.get("normalize_activations") or "none"
    if normalize == "expected_average_only_in":
        warnings.warn(f"{cfg_source}: normalize_activations='expected_average_only_in' and no scaling factor folded "
                      "in: this SAE expects inputs scaled to its training norm (as in SAELens)", stacklevel=3)
    elif normalize != "none":
        raise _fail(cfg_source, f"normalize_activations={normalize!r} is not supported; allowed: 'none', "
                            "'expected_average_only_in'")

    try:
        sae = create_sae(architecture, **kwargs)
    except (TypeError, ValueError) as e:
        raise _fail(cfg_source, f"invalid saelib config {kwargs}: {e}") from e
    names = _names(sae)
    unexpected = sorted(set(tensors) - set(names))
    if unexpected:
        raise _fail(source, f"unexpected parameter(s) {unexpected} for architecture {architecture!r}; "
                            f"expected: {sorted(names)}")
    dtype = dtype or tensors.get("W_dec", sae.W_dec).dtype
    sae = sae.to(dtype)
    for lens_name, ours in names.items():
        if lens_name not in tensors:
            raise _fail(source, f"missing parameter {lens_name!r} "
                                f"(architecture {architecture!r} needs {sorted(names)})")
        if ours == "b_mag" and sae.mag_bias == "tied":        # written for SAELens; ours is exp(r_mag) b_gate,
            continue                                          # checked below once r_mag and b_gate are in
        value, target = tensors[lens_name], getattr(sae, ours)
        if tuple(value.shape) != tuple(target.shape):
            raise _fail(source, f"parameter {lens_name!r} has shape {tuple(value.shape)}, "
                                f"expected {tuple(target.shape)} for d_in={sae.d_in}, d_sae={sae.d_sae}")
        value = value.to(torch.float64 if lens_name == "threshold" else dtype)
        if ours == "log_threshold":
            value = torch.log(value.clamp_min(0.0))  # theta <= 0 acts as 0 behind SAELens's ReLU; log 0 = -inf
        if ours == "r_mag" and not isinstance(target, torch.nn.Parameter) and torch.any(value != 0):
            raise _fail(source, "parameter 'r_mag' is non-zero but this Gated SAE has mag_weights='no_r_mag'")
        target.copy_(value.to(dtype))

    if isinstance(sae, GatedSAE) and sae.mag_bias == "tied" and not torch.allclose(
            tensors["b_mag"].to(dtype), sae.magnitude_bias(), rtol=1e-4, atol=1e-6):
        raise _fail(source, "parameter 'b_mag' is not exp(r_mag) * b_gate but this Gated SAE has mag_bias='tied'")

    # SAELens options that change the forward pass: convert them to our conventions
    if not cfg.get("apply_b_dec_to_input", True):
        _absorb_b_dec_into_encoder(sae)
    if architecture in ("topk", "batchtopk") and cfg.get("rescale_acts_by_decoder_norm", False):
        norms = sae.W_dec.norm(dim=1)                                 # [d_sae]
        sae.W_enc.mul_(norms)
        sae.b_enc.mul_(norms)
        sae.W_dec.div_(norms[:, None])
    return sae


def _absorb_b_dec_into_encoder(sae: SAE) -> None:
    """SAELens's apply_b_dec_to_input=False means pi = x W + b. Ours is pi = (x - b_dec) W + b', so
    b' = b + b_dec W (computed in float64)."""
    b_dec = sae.b_dec.double()
    if isinstance(sae, GatedSAE):
        shift = b_dec @ sae.W_gate.double()                           # [d_sae]
        sae.b_gate.add_(shift.to(sae.b_gate.dtype))
        if sae.mag_bias == "free":                            # tied: exp(r_mag) b_gate moves with b_gate
            mag_shift = b_dec @ sae.W_mag.double() if sae.mag_weights == "untied" else shift * sae.r_mag.double().exp()
            sae.b_mag.add_(mag_shift.to(sae.b_mag.dtype))
    else:
        sae.b_enc.copy_((sae.b_enc.double() + b_dec @ sae.W_enc.double()).to(sae.b_enc.dtype))


# ----------------------------------------------------------------------------- files

def save_sae(sae: SAE, path: str | os.PathLike, scaling_factor: float | None = None, *,
             model_name: str | None = None, hook_name: str | None = None, metadata: dict | None = None) -> Path:
    """Write `sae` to the folder `path` (created if needed) as cfg.json + sae_weights.safetensors.

    scaling_factor: if the SAE was trained on `scaling_factor * x` (saelib.data.normalization), it is folded
    into the weights of a copy (the live SAE is untouched), so the saved SAE acts on raw activations.
    model_name, hook_name and `metadata` (other SAELens metadata keys, e.g. context_size) go to cfg.json.
    Each file is written atomically (saelib.files), so a crash never leaves half a file.
    """
    if not isinstance(sae, SAE):
        raise ValueError(f"sae={type(sae).__name__} must be a saelib SAE")
    if scaling_factor is not None:
        check_positive("scaling_factor", float(scaling_factor))
        if not math.isfinite(float(scaling_factor)):
            raise ValueError(f"scaling_factor={scaling_factor!r} must be finite")
        sae = copy.deepcopy(sae)
        sae.fold_input_scaling(float(scaling_factor))
    meta = {**(metadata or {}), "model_name": model_name, "hook_name": hook_name}
    cfg, tensors = sae_lens_state(sae, metadata=meta)
    cfg["saelib"]["input_scaling_folded"] = None if scaling_factor is None else float(scaling_factor)

    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / WEIGHTS_FILENAME, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    stateful = {"bandwidths": getattr(sae, "adaptive", False),                 # else set by cfg
                "tokens_since_fired": getattr(sae, "aux_k", None) is not None}     # used only by AuxK
    buffers = {name: b.detach().contiguous().cpu().clone() for name, b in sae.named_buffers()
               if stateful.get(name, False)}
    if buffers:                     # training state SAELens has no slot for (e.g. adapted JumpReLU bandwidths)
        atomic_write(folder / BUFFERS_FILENAME, lambda tmp: save_file(buffers, tmp, metadata={"format": "pt"}))
    text = json.dumps(cfg, indent=2, allow_nan=False)
    atomic_write_text(folder / CFG_FILENAME, text)
    return folder


def read_sae_lens_folder(path: str | os.PathLike, device: str = "cpu") -> tuple[dict, dict[str, torch.Tensor]]:
    """(cfg dict, tensors) of a SAELens-layout folder, read with json + safetensors only."""
    folder = Path(path)
    if not folder.is_dir():
        raise ValueError(f"path={str(folder)!r} is not a folder; expected a folder holding "
                         f"{CFG_FILENAME} and {WEIGHTS_FILENAME}")
    cfg_file, weights_file = folder / CFG_FILENAME, folder / WEIGHTS_FILENAME
    for file in (cfg_file, weights_file):
        if not file.is_file():
            raise ValueError(f"{file}: file not found (a saved SAE folder holds {CFG_FILENAME} and {WEIGHTS_FILENAME})")
    try:
        cfg = json.loads(cfg_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{cfg_file}: not valid JSON ({e})") from e
    if not isinstance(cfg, dict):
        raise ValueError(f"{cfg_file}: expected a JSON object, got {type(cfg).__name__}")
    try:
        tensors = load_file(weights_file, device=device)
    except (SafetensorError, OSError, ValueError) as e:  # e.g. a pickle (torch.save) file renamed
        raise ValueError(f"{weights_file}: not a valid safetensors file ({e}); saelib never unpickles") from e
    return cfg, tensors


def load_sae(path: str | os.PathLike, device: str = "cpu", *, expected_d_in: int | None = None,
             dtype: torch.dtype | None = None) -> SAE:
    """Load an SAE saved by `save_sae` or by sae_lens (`sae.save_model`) from the folder `path`.

    expected_d_in: raise ValueError unless the SAE's d_in equals it (e.g. the hook's width).
    dtype: cast to this dtype (default: the stored dtype).
    """
    if expected_d_in is not None:
        check_positive("expected_d_in", expected_d_in, integer=True)
    cfg, tensors = read_sae_lens_folder(path)
    sae = sae_from_sae_lens_state(cfg, tensors, source=str(Path(path) / WEIGHTS_FILENAME),
                                  cfg_source=str(Path(path) / CFG_FILENAME), expected_d_in=expected_d_in,
                                  dtype=dtype)
    buffers_file = Path(path) / BUFFERS_FILENAME
    if buffers_file.is_file():
        try:
            buffers = load_file(buffers_file)
        except (SafetensorError, OSError, ValueError) as e:
            raise ValueError(f"{buffers_file}: not a valid safetensors file ({e}); saelib never unpickles") from e
        own = dict(sae.named_buffers())
        for name, value in buffers.items():
            if name not in _SAELIB_BUFFERS or name not in own or own[name].shape != value.shape:
                raise ValueError(f"{buffers_file}: unexpected buffer {name!r} {tuple(value.shape)} for this SAE")
            own[name].copy_(value.to(own[name].dtype))
    return sae.to(device)
