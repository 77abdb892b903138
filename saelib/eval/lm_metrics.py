"""Does the model still work with the SAE in it? Cross-entropy with the SAE spliced in (docs/design.md §1, Metrics).

Over held-out tokens, three next-token cross-entropies (mean over predicted tokens):

    CE_clean  the model as it is
    CE_sae    the activation at `hook_name` replaced by the SAE's reconstruction:
                  x -> SAE(s * x) / s       (s: the input scale the SAE was trained with, saelib/data/normalization.py)
    CE_zero   the activation at `hook_name` replaced by zeros

    delta LM loss  = CE_sae - CE_clean                              (0 for a perfect SAE)
    loss recovered = (CE_zero - CE_sae) / (CE_zero - CE_clean)      (1 for a perfect SAE, 0 for a useless one)

The replacement happens only at the positions the SAE was trained on (BOS and padding keep their clean
activations, see saelib/data/activations.py), in both the SAE and the zero-ablation runs. Every prediction
of a real token counts (padding targets do not), so on packed rows CE_clean is the model's usual loss. `hook_z`
activations [.., n_heads, d_head] are flattened to n_heads * d_head for the SAE and reshaped back.
L0 and FVU of the SAE on the same activations come for free (saelib.eval.metrics.MetricsAccumulator).
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from saelib.data.activations import (
    _check_tokens,
    check_hook_name,
    default_exclude_token_ids,
    keep_mask,
    special_token_ids,
)
from saelib.eval.metrics import MetricsAccumulator
from saelib.progress import tqdm
from saelib.validation import check_positive


@dataclass
class LMEvaluation:
    ce_clean: float
    ce_sae: float
    ce_zero: float
    delta_lm_loss: float       # CE_sae - CE_clean
    loss_recovered: float      # (CE_zero - CE_sae) / (CE_zero - CE_clean)
    l0: float                  # mean active features per spliced token
    fvu: float                 # fraction of variance unexplained at the spliced positions
    n_predictions: int         # next-token predictions the CEs average over
    n_spliced: int             # activations replaced by the SAE

    def as_dict(self) -> dict:
        return asdict(self)


def loss_recovered(ce_clean: float, ce_sae: float, ce_zero: float, min_gap: float = 1e-6) -> float:
    """(CE_zero - CE_sae) / (CE_zero - CE_clean); ValueError when zero ablation does not raise the loss
    (by more than `min_gap` nats), where the ratio means nothing."""
    gap = ce_zero - ce_clean
    if not gap > min_gap:  # also catches NaN
        raise ValueError(f"zero-ablating the site does not raise the loss (CE_zero={ce_zero:.6f}, "
                         f"CE_clean={ce_clean:.6f}), so loss recovered is undefined; report delta LM loss "
                         f"(CE_sae - CE_clean = {ce_sae - ce_clean:.6f}) instead")
    return (ce_zero - ce_sae) / gap


def _splice_hook(replace, keep: torch.Tensor):
    """A forward hook that rewrites the activation at the kept positions with replace(x) (x: [n_kept, d_in])."""
    def hook(activation, hook):                                   # [batch, seq, ...]
        flat = activation.flatten(start_dim=2)                    # [batch, seq, d_in] (hook_z: heads flattened)
        out = flat.clone()
        out[keep] = replace(flat[keep]).to(out.dtype)             # [n_kept, d_in]
        return out.reshape(activation.shape)
    return hook


@dataclass(frozen=True)
class _Restart:
    """Where a spliced run restarts from a stored clean activation: `stored` (a hook name) is kept per batch and the
    run starts at block `layer` from it. `splice_stored`: the stored activation is the spliced one (a block's
    hook_resid_post: splice it, then run the blocks after it); otherwise the run re-enters block `layer` from its
    input and the hook splices inside it."""
    layer: int
    stored: str
    splice_stored: bool


def _restart(model, hook_name: str) -> _Restart | None:
    """How a spliced run of `hook_name` can skip the blocks before it (None: it cannot, run the whole model)."""
    match = re.match(r"blocks\.(\d+)\.(.+)$", hook_name)
    if match is None or model.cfg.positional_embedding_type == "shortformer":
        return None
    layer = int(match.group(1))
    if match.group(2) == "hook_resid_post":                # the block's output is the next block's input
        return _Restart(layer + 1, hook_name, splice_stored=True)
    return _Restart(layer, f"blocks.{layer}.hook_resid_pre", splice_stored=False)


@dataclass
class LMReference:
    """What every SAE's evaluation on the same (model, hook, tokens) shares, computed once by `lm_reference`:
    per batch the clean residual where the SAE run restarts (the hook's own activation for a hook_resid_post,
    else the residual entering the hook's block) and the clean and zero-ablated CE sums. Passing it to
    `evaluate_lm` gives the same numbers with one partial forward per batch instead of three."""

    hook_name: str
    n_rows: int
    batch_size: int
    resid: list            # per batch: [b, seq, d_model] the stored clean residual (see _Restart), or None
    clean_sums: list[float]
    zero_sums: list[float]


def _batches(model, tokens, batch_size, exclude_token_ids, pad_token_id):
    """(index, batch [b, seq], keep [b, seq], targets [b, seq-1]) over `tokens`."""
    device = model.cfg.device
    for i, start in enumerate(range(0, tokens.shape[0], batch_size)):
        batch = tokens[start:start + batch_size].to(device)                       # [b, seq]
        keep = keep_mask(batch, exclude_token_ids)                                # [b, seq] splice here
        targets = batch[:, 1:] != pad_token_id                                    # [b, seq-1] score these
        yield i, batch, keep, targets


def _spliced_loss(model, hook_name, restart, batch, keep, replace, resid):
    splice = _splice_hook(replace, keep)
    if restart is None:
        return model.run_with_hooks(batch, return_type="loss", loss_per_token=True, fwd_hooks=[(hook_name, splice)])
    if restart.splice_stored:       # the same tensor the hook would see: splice it here, run the blocks after it
        return model(splice(resid, None), start_at_layer=restart.layer, tokens=batch, return_type="loss",
                     loss_per_token=True)                                              # [b, seq-1]
    return model.run_with_hooks(resid, start_at_layer=restart.layer, tokens=batch, return_type="loss",
                                loss_per_token=True, fwd_hooks=[(hook_name, splice)])  # [b, seq-1]


def _defaults(model, exclude_token_ids, pad_token_id):
    if exclude_token_ids is None:
        exclude_token_ids = default_exclude_token_ids(model)
    if pad_token_id is None:
        pad_token_id = special_token_ids(model)[1]
    return exclude_token_ids, pad_token_id


@torch.no_grad()
def lm_reference(model, hook_name: str, tokens: torch.Tensor, *, batch_size: int = 16,
                 exclude_token_ids: Sequence[int] | None = None, pad_token_id: int | None = None,
                 keep_resid: bool = True) -> LMReference:
    """The clean and zero-ablated runs of `evaluate_lm` (and the block inputs), for reuse across SAEs.
    keep_resid=False keeps only the CE sums (the block inputs of a large model on many tokens take memory);
    evaluate_lm then recomputes each block input with a forward that stops at the block."""
    _check_tokens(tokens)
    check_hook_name(model, hook_name)
    check_positive("batch_size", batch_size, integer=True)
    exclude_token_ids, pad_token_id = _defaults(model, exclude_token_ids, pad_token_id)
    restart = _restart(model, hook_name)
    ref = LMReference(hook_name, tokens.shape[0], batch_size, [], [], [])
    for _, batch, keep, targets in _batches(model, tokens, batch_size, exclude_token_ids, pad_token_id):
        stored: dict[str, torch.Tensor] = {}
        fwd_hooks = [] if restart is None else [
            (restart.stored, lambda act, hook, stored=stored: stored.setdefault("resid", act))]
        clean = model.run_with_hooks(batch, return_type="loss", loss_per_token=True, fwd_hooks=fwd_hooks)
        zero = _spliced_loss(model, hook_name, restart, batch, keep, torch.zeros_like, stored.get("resid"))
        ref.resid.append(stored.get("resid") if keep_resid else None)
        ref.clean_sums.append(clean[targets].double().sum().item())
        ref.zero_sums.append(zero[targets].double().sum().item())
    return ref


@torch.no_grad()
def evaluate_lm(model, sae: torch.nn.Module, hook_name: str, tokens: torch.Tensor, *, scale: float = 1.0,
                batch_size: int = 16, exclude_token_ids: Sequence[int] | None = None,
                pad_token_id: int | None = None, progress: bool = False,
                reference: LMReference | None = None) -> LMEvaluation:
    """Clean, SAE-spliced and zero-ablated CE over `tokens` [n_seq, seq_len], batch_size sequences at a time.

    `scale` is the input scale s the SAE was trained with (1.0 for an SAE whose scale is folded in).
    The SAE replaces activations except at `exclude_token_ids` (default: BOS and padding); predictions
    of `pad_token_id` targets are left out of every CE (defaults: saelib.data.registry.get_tokenizer).
    `reference`: lm_reference(model, hook_name, tokens, ...) computed once for many SAEs (same numbers, a third
    of the forward passes). Raises ValueError (via `loss_recovered`) when zero-ablating the site does not raise
    the loss.
    """
    _check_tokens(tokens)
    check_hook_name(model, hook_name)
    check_positive("scale", scale)
    check_positive("batch_size", batch_size, integer=True)
    exclude_token_ids, pad_token_id = _defaults(model, exclude_token_ids, pad_token_id)
    if reference is None:
        reference = lm_reference(model, hook_name, tokens, batch_size=batch_size,
                                 exclude_token_ids=exclude_token_ids, pad_token_id=pad_token_id)
    elif (reference.hook_name, reference.n_rows, reference.batch_size) != (hook_name, tokens.shape[0], batch_size):
        raise ValueError(f"reference was computed for hook {reference.hook_name!r}, {reference.n_rows} rows, "
                         f"batch_size {reference.batch_size}; this call has {hook_name!r}, {tokens.shape[0]} rows, "
                         f"batch_size {batch_size}: compute it with lm_reference for the same arguments")
    sae_param = next(sae.parameters())
    metrics = MetricsAccumulator()
    sae_sum, n_predictions = 0.0, 0
    restart = _restart(model, hook_name)

    def reconstruct(x):                                           # x: [n, d_in], model space
        x_scaled = (x * scale).to(sae_param.dtype)                # normalise
        f = sae.encode(x_scaled)                                  # [n, d_sae]
        x_hat_scaled = sae.decode(f)                              # [n, d_in]
        metrics.update(x_scaled, x_hat_scaled, f)
        return x_hat_scaled / scale                               # back to the model's space

    batches = _batches(model, tokens, batch_size, exclude_token_ids, pad_token_id)
    for i, batch, keep, targets in tqdm(batches, desc="LM eval", disable=not progress,
                                        total=len(reference.clean_sums)):
        n_predictions += int(targets.sum())
        resid = reference.resid[i]
        if resid is None and restart is not None:      # the residual entering block restart.layer
            resid = model(batch, stop_at_layer=restart.layer)                     # [b, seq, d_model]
        loss = _spliced_loss(model, hook_name, restart, batch, keep, reconstruct, resid)
        sae_sum += loss[targets].double().sum().item()

    if n_predictions == 0:
        raise ValueError("tokens hold no next-token predictions of non-padding tokens")
    ce = {"clean": sum(reference.clean_sums) / n_predictions, "sae": sae_sum / n_predictions,
          "zero": sum(reference.zero_sums) / n_predictions}
    recovered = loss_recovered(ce["clean"], ce["sae"], ce["zero"])              # raises if undefined
    m = metrics.compute()
    return LMEvaluation(ce_clean=ce["clean"], ce_sae=ce["sae"], ce_zero=ce["zero"],
                        delta_lm_loss=ce["sae"] - ce["clean"], loss_recovered=recovered,
                        l0=m["l0"], fvu=m["fvu"], n_predictions=n_predictions, n_spliced=m["n_tokens"])
