"""Reading one hook of a transformer_lens model: run the model only up to the hook, keep the real tokens.

    tokens [n_seq, seq_len] --model forward, stopped at the hook--> activations [batch, seq, d_in]
        --drop BOS / padding positions--> [n_kept, d_in]

Hook names are transformer_lens names, e.g. `blocks.1.hook_resid_post`, `blocks.1.hook_mlp_out`,
`blocks.0.mlp.hook_post` (MLP neurons), `blocks.0.attn.hook_z` (attention outputs before W_O,
[.., n_heads, d_head], flattened here to n_heads * d_head). saelib.data.activations re-exports every name.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

STORAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class _StopForward(Exception):
    """Raised by the capture hook: nothing after the hook needs computing."""


def check_hook_name(model, hook_name: str) -> None:
    if hook_name not in model.hook_dict:
        examples = [h for h in model.hook_dict if h.startswith("blocks.0.") and
                    h.endswith(("hook_resid_pre", "hook_resid_post", "hook_mlp_out", "mlp.hook_post", "attn.hook_z"))]
        raise ValueError(f"hook_name={hook_name!r} is not a hook of this model; allowed values include "
                         f"{', '.join(map(repr, examples))} (and the same for other blocks); see model.hook_dict")


def special_token_ids(model) -> tuple[int, int]:
    """(bos_id, pad_id) of the model's tokenizer (saelib.data.registry.get_tokenizer: embedded or hub model)."""
    from saelib.data.registry import get_tokenizer

    try:
        tokenizer = get_tokenizer(model)
    except ValueError as e:
        raise ValueError(f"{e}; pass exclude_token_ids (the BOS and padding ids) explicitly") from None
    return tokenizer.bos_id, tokenizer.pad_id


def default_exclude_token_ids(model) -> tuple[int, ...]:
    """Token ids whose positions carry no SAE training signal: BOS and padding."""
    return tuple(sorted(set(special_token_ids(model))))


def keep_mask(tokens: torch.Tensor, exclude_token_ids: Sequence[int]) -> torch.Tensor:
    """[batch, seq] bool: True at positions whose token is not BOS / padding."""
    keep = torch.ones_like(tokens, dtype=torch.bool)
    for token_id in exclude_token_ids:
        keep &= tokens != token_id
    return keep


def hook_d_in(model, hook_name: str) -> int:
    """Width of the (flattened) activation at `hook_name`, from one forward pass on a single token."""
    check_hook_name(model, hook_name)
    probe = torch.zeros((1, 1), dtype=torch.long, device=model.cfg.device)
    return read_hook(model, probe, hook_name).shape[-1]


@torch.no_grad()
def read_hook(model, tokens: torch.Tensor, hook_name: str) -> torch.Tensor:
    """Activations at `hook_name` for tokens [batch, seq] -> [batch, seq, d_in] (heads flattened).

    The forward pass stops at the hook: a plain PyTorch forward hook on the HookPoint stores its output
    and raises, so no later layer runs (and only this one hook is added and removed).
    """
    stored = []

    def capture(module, inputs, output):
        stored.append(output)
        raise _StopForward

    handle = model.hook_dict[hook_name].register_forward_hook(capture)
    try:
        model(tokens.to(model.cfg.device), return_type=None)
    except _StopForward:
        pass
    finally:
        handle.remove()
    if not stored:
        raise ValueError(f"hook_name={hook_name!r} never fired during the forward pass")
    return stored[0].flatten(start_dim=2)  # hook_z: [batch, seq, n_heads, d_head] -> [batch, seq, n_heads*d_head]


def kept_activations(model, tokens: torch.Tensor, hook_name: str, exclude_token_ids: Sequence[int]) -> torch.Tensor:
    """Activations at `hook_name` for tokens [batch, seq], BOS / padding positions dropped -> [n_kept, d_in]."""
    acts = read_hook(model, tokens, hook_name)                                   # [batch, seq, d_in]
    return acts[keep_mask(tokens, exclude_token_ids).to(acts.device)]            # [n_kept, d_in]


def _check_tokens(tokens: torch.Tensor) -> None:
    if not isinstance(tokens, torch.Tensor) or tokens.ndim != 2 or tokens.dtype not in (torch.long, torch.int32):
        raise ValueError("tokens must be an integer tensor of shape [n_sequences, seq_len]")
    if tokens.shape[0] == 0:
        raise ValueError("tokens holds no sequences")
