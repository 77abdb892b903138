"""Use SAEs trained elsewhere, and hand ours to other tools.

    load_gemma_scope_npz(path)   Gemma Scope's params.npz (JumpReLU)           -> our JumpReLUSAE
    load_sae(folder)             a folder written by sae_lens or by save_sae    -> our SAE  (saelib.io)
    save_sae(sae, folder)        our SAE -> a folder sae_lens loads with SAE.load_from_disk  (saelib.io)
    to_sae_lens(sae)             our SAE -> an in-memory sae_lens SAE (needs the optional sae-lens package)
    from_sae_lens(lens_sae)      an in-memory sae_lens SAE -> our SAE

Gemma Scope's JumpReLU SAEs (Lieberum et al. 2024) compute pi = x W_enc + b_enc without subtracting
b_dec first, and f = ReLU(pi) * 1[pi > threshold]. Ours subtract b_dec (x' = x - b_dec), so the
import folds it into the encoder bias: b_enc' = b_enc + b_dec W_enc. Thresholds become
log_threshold = log(threshold) (a threshold <= 0 acts as 0 behind the ReLU). Everything is read with
np.load(allow_pickle=False): nothing is unpickled.
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from saelib.io import sae_from_sae_lens_state, sae_lens_state
from saelib.models.base import SAE
from saelib.validation import check_positive

GEMMA_SCOPE_PARAMS = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")


def load_gemma_scope_npz(path: str | os.PathLike, device: str = "cpu", *,
                         expected_d_in: int | None = None) -> SAE:
    """A Gemma Scope params.npz (W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc [d_sae], b_dec [d_in],
    threshold [d_sae]) as an equivalent JumpReLUSAE (same codes and reconstructions, up to float
    rounding of the folded bias)."""
    if expected_d_in is not None:
        check_positive("expected_d_in", expected_d_in, integer=True)
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: file not found (expected a Gemma Scope params.npz)")
    try:
        data = np.load(path, allow_pickle=False)  # a pickle, or an object array inside, raises ValueError
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise ValueError("a single .npy array, not an .npz archive of named parameters")
        with data:
            # some exports spell the weights w_enc / w_dec (as SAELens's Gemma loader also accepts)
            arrays = {("W_" + k[2:] if k.startswith("w_") else k): data[k] for k in data.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path}: not a readable .npz without pickled data ({e})") from e

    missing = [name for name in GEMMA_SCOPE_PARAMS if name not in arrays]
    if missing:
        raise ValueError(f"{path}: missing parameter(s) {missing}; "
                         f"a Gemma Scope params.npz holds {list(GEMMA_SCOPE_PARAMS)}")
    extra = sorted(set(arrays) - set(GEMMA_SCOPE_PARAMS))
    if extra:
        raise ValueError(f"{path}: unexpected parameter(s) {extra}; expected {list(GEMMA_SCOPE_PARAMS)}")
    if arrays["W_enc"].ndim != 2:
        raise ValueError(f"{path}: parameter 'W_enc' has shape {arrays['W_enc'].shape}, expected [d_in, d_sae]")
    d_in, d_sae = (int(n) for n in arrays["W_enc"].shape)
    cfg = {"architecture": "jumprelu", "d_in": d_in, "d_sae": d_sae,
           "apply_b_dec_to_input": False, "normalize_activations": "none"}
    tensors = {name: torch.from_numpy(np.ascontiguousarray(a)) for name, a in arrays.items()}
    sae = sae_from_sae_lens_state(cfg, tensors, source=str(path), expected_d_in=expected_d_in)
    return sae.to(device)


# ----------------------------------------------------------------------------- in-memory SAELens objects

def _import_sae_lens():
    try:
        import sae_lens
    except ImportError as e:
        raise ImportError("this needs the optional sae-lens package: pip install 'saelib[bench]' "
                          "(or pip install sae-lens)") from e
    return sae_lens


@torch.no_grad()
def to_sae_lens(sae: SAE, *, model_name: str | None = None, hook_name: str | None = None,
                metadata: dict | None = None):
    """An equivalent sae_lens SAE (StandardSAE, GatedSAE, JumpReLUSAE or TopKSAE) on sae's device."""
    sae_lens = _import_sae_lens()
    cfg, tensors = sae_lens_state(sae, metadata={**(metadata or {}), "model_name": model_name,
                                                 "hook_name": hook_name})
    if not cfg["saelib"]["sae_lens_loadable"]:
        raise ValueError(f"{type(sae).__name__}({sae.config()}) has no SAELens equivalent "
                         "(Gated with mag_weights='untied'); allowed: mag_weights 'r_mag' or 'no_r_mag'")
    lens = sae_lens.SAE.from_dict(cfg)
    lens.load_state_dict(tensors)
    return lens.to(sae.W_dec.device)


@torch.no_grad()
def from_sae_lens(lens_sae) -> SAE:
    """Our equivalent of an in-memory sae_lens SAE (standard, gated, jumprelu or topk)."""
    cfg = lens_sae.cfg.to_dict()
    tensors = {name: t.detach().cpu() for name, t in lens_sae.state_dict().items()}
    sae = sae_from_sae_lens_state(cfg, tensors, source=f"sae_lens {type(lens_sae).__name__}")
    return sae.to(lens_sae.W_dec.device)
