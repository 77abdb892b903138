"""Language-model activations for SAE training: read a hook, keep real tokens, shuffle, serve batches.

    tokens [n_seq, seq_len] --model forward, stopped at the hook--> activations [batch, seq, d_in]
        --drop BOS / padding positions--> [n_kept, d_in] --shuffled buffer--> batches [batch_size, d_in]

Two sources serve the same protocol used by `saelib.training.loop`: `next_batch()`, `state_dict()`,
`load_state_dict()`.

  ActivationBuffer  runs the model as it goes; memory bounded by `buffer_size` (activations) or
                    `buffer_bytes`. When half of the buffer has been served, the served slots are
                    refilled with fresh activations and the whole buffer is re-permuted (one
                    torch.randperm per refill), so batches mix activations from many sequences.
  ActivationCache   reads activations that `cache_activations` wrote once to disk (a numpy memmap),
                    so a sweep of many SAEs runs the model once (saelib/data/cache.py).

Both scale what they serve by one scalar s estimated from the first activations they see (see
saelib/data/normalization.py). Reading one hook lives in saelib/data/hooks.py. Hook names are
transformer_lens names, e.g. `blocks.1.hook_resid_post`, `blocks.1.hook_mlp_out`, `blocks.0.mlp.hook_post`
(MLP neurons), `blocks.0.attn.hook_z` (attention outputs before W_O, [.., n_heads, d_head], flattened here
to n_heads * d_head).
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from saelib.data.cache import ActivationCache, activation_cache_complete, cache_activations
from saelib.data.hooks import (
    STORAGE_DTYPES,
    _check_tokens,
    check_hook_name,
    default_exclude_token_ids,
    hook_d_in,
    keep_mask,
    kept_activations,
    read_hook,
    special_token_ids,
)
from saelib.data.normalization import NORMALIZATIONS, estimate_scale
from saelib.progress import tqdm
from saelib.training import distributed as D
from saelib.validation import check_choice, check_index, check_positive, check_range

# reading one hook lives in saelib/data/hooks.py, the on-disk cache in saelib/data/cache.py; both are
# re-exported here, so `from saelib.data.activations import ...` keeps working for every name
__all__ = ["STORAGE_DTYPES", "BufferConfig", "ActivationBuffer", "ActivationCache", "activation_cache_complete",
           "cache_activations", "check_hook_name", "default_exclude_token_ids", "hook_d_in", "keep_mask",
           "kept_activations", "read_hook", "special_token_ids", "_check_tokens"]


# ----------------------------------------------------------------------------- the shuffled buffer

@dataclass
class BufferConfig:
    """How an ActivationBuffer reads and serves activations.

    buffer_size      activations held (the shuffling pool); ignored when buffer_bytes is set
    buffer_bytes     alternatively, a bound on the buffer's memory, in-flight refill data included
                     (see ActivationBuffer.max_bytes)
    batch_size       activations per training batch
    model_batch_size sequences per forward pass
    refill_fraction  refill once this fraction of the buffer has been served since the last refill
    normalization    see saelib/data/normalization.py; the scale comes from the first fill unless `scale` is given
    storage_dtype    dtype of the stored activations (batches are always served as float32)
    """

    hook_name: str
    batch_size: int = 4096
    buffer_size: int = 2 ** 16
    buffer_bytes: int | None = None
    model_batch_size: int = 32
    refill_fraction: float = 0.5
    normalization: str = "unit_mean_squared_norm"
    scale: float | None = None
    storage_dtype: str = "float32"
    seed: int = 0
    device: str | None = None            # where the buffer lives; default: the model's device
    progress: bool = True

    def __post_init__(self):
        check_positive("batch_size", self.batch_size, integer=True)
        check_positive("buffer_size", self.buffer_size, integer=True)
        if self.buffer_bytes is not None:
            check_positive("buffer_bytes", self.buffer_bytes, integer=True)
        check_positive("model_batch_size", self.model_batch_size, integer=True)
        check_range("refill_fraction", self.refill_fraction, 0.0, 1.0, inclusive=True)
        if self.refill_fraction == 0.0:
            raise ValueError("refill_fraction=0.0 is out of range; allowed: (0, 1]")
        check_choice("normalization", self.normalization, NORMALIZATIONS)
        if self.scale is not None:
            check_positive("scale", self.scale)
        check_choice("storage_dtype", self.storage_dtype, STORAGE_DTYPES)
        if self.buffer_bytes is None and self.buffer_size < self.batch_size:
            raise ValueError(f"buffer_size={self.buffer_size} is out of range; "
                             f"allowed: >= batch_size={self.batch_size}")


class ActivationBuffer:
    """Stream activations of `cfg.hook_name` over `tokens` [n_seq, seq_len] (cycling when exhausted)
    into a preallocated, shuffled pool and serve float32 batches [batch_size, d_in], scaled by `scale`.

    Memory, with C = the bytes of one model batch of activations (model_batch_size * seq_len * d_in
    float32 values):
      held between calls  storage [capacity, d_in] + permutation [capacity] (int64) + the overflow of
                          the last forward pass kept for the next refill (< C)          (`nbytes`)
      during a refill     + the hook's output for one model batch and its BOS-free copy (<= 2 C)
    `max_bytes` = capacity * (d_in * itemsize + 8) + 3 C bounds both; with `buffer_bytes` set, the
    capacity is the largest that keeps max_bytes <= buffer_bytes.

    Under torchrun (rank, world_size: default from the RANK / WORLD_SIZE environment) each rank runs the
    model over its own rows of `tokens` (rank, rank + world_size, ...) and serves its share of the global
    batch, cfg.batch_size / world_size rows; the normalisation scale estimated from the first fill is
    averaged over the ranks, so every rank scales alike.
    """

    def __init__(self, model, tokens: torch.Tensor, cfg: BufferConfig,
                 exclude_token_ids: Sequence[int] | None = None, rank: int | None = None,
                 world_size: int | None = None):
        _check_tokens(tokens)
        check_hook_name(model, cfg.hook_name)
        rank = int(os.environ.get("RANK", 0)) if rank is None else rank
        world_size = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else world_size
        check_positive("world_size", world_size, integer=True)
        check_index("rank", rank, world_size)
        if cfg.batch_size % world_size:
            raise ValueError(f"batch_size={cfg.batch_size} must be a multiple of world_size={world_size}")
        if tokens.shape[0] < world_size:
            raise ValueError(f"tokens has {tokens.shape[0]} rows; allowed: at least world_size={world_size}")
        self.rank, self.world_size = rank, world_size
        self.local_batch_size = cfg.batch_size // world_size
        tokens = tokens[rank::world_size]                                   # this rank's sequences
        self.model, self.tokens, self.cfg = model, tokens, cfg
        self.exclude_token_ids = tuple(default_exclude_token_ids(model) if exclude_token_ids is None
                                       else exclude_token_ids)
        self.device = torch.device(cfg.device or model.cfg.device)
        self.dtype = STORAGE_DTYPES[cfg.storage_dtype]
        self.d_in = hook_d_in(model, cfg.hook_name)

        if int(keep_mask(tokens, self.exclude_token_ids).sum()) == 0:
            raise ValueError("tokens hold no position outside BOS / padding: there are no activations to serve")
        # C: one model batch of activations (float32 upper bound on the hook's dtype)
        self.chunk_bytes = cfg.model_batch_size * tokens.shape[1] * self.d_in * 4
        row_bytes = self.d_in * self.dtype.itemsize + 8                     # storage row + permutation entry
        if cfg.buffer_bytes is not None:
            self.capacity = (cfg.buffer_bytes - 3 * self.chunk_bytes) // row_bytes
            if self.capacity < cfg.batch_size:
                raise ValueError(
                    f"buffer_bytes={cfg.buffer_bytes} is out of range; allowed: >= "
                    f"{cfg.batch_size * row_bytes + 3 * self.chunk_bytes} (batch_size={cfg.batch_size} "
                    f"activations of {row_bytes} bytes plus three model batches of {self.chunk_bytes} bytes)")
        else:
            self.capacity = cfg.buffer_size
        self.max_bytes = self.capacity * row_bytes + 3 * self.chunk_bytes

        self.generator = torch.Generator().manual_seed(cfg.seed + rank)
        self.storage = torch.empty(self.capacity, self.d_in, dtype=self.dtype, device=self.device)  # [capacity, d_in]
        self.perm = torch.empty(0, dtype=torch.long, device=self.device)  # [capacity] serving order
        self.served = 0                     # positions of perm already served since the last refill
        self.pending = torch.empty(0, self.d_in, dtype=self.dtype, device=self.device)  # overflow of last forward
        self.next_seq = 0                   # next sequence of `tokens` to read
        self.epoch = 0                      # completed passes over `tokens`
        self.scale = cfg.scale

    # --- filling -------------------------------------------------------------------------------
    def _fresh_activations(self, n: int) -> Iterator[torch.Tensor]:
        """Yield chunks of new activations (storage dtype) totalling exactly n; keep the overflow."""
        need = n
        if len(self.pending):
            take = self.pending[:need]
            self.pending = self.pending[need:].clone()                           # release the rest's old storage
            need -= len(take)
            yield take
        bar = tqdm(total=need, desc=f"activations {self.cfg.hook_name}", unit="act", leave=False,
                   disable=not self.cfg.progress or need < 100_000)
        while need > 0:
            if self.next_seq >= self.tokens.shape[0]:
                self.next_seq, self.epoch = 0, self.epoch + 1
            batch = self.tokens[self.next_seq:self.next_seq + self.cfg.model_batch_size]   # [b, seq]
            self.next_seq += len(batch)
            acts = kept_activations(self.model, batch, self.cfg.hook_name, self.exclude_token_ids)
            acts = acts.to(self.device, self.dtype)                              # [n_kept, d_in]
            if len(acts) > need:
                self.pending = acts[need:].clone()                               # own memory, not a view
                acts = acts[:need]
            need -= len(acts)
            bar.update(len(acts))
            yield acts
        bar.close()

    @torch.no_grad()
    def _refill(self) -> None:
        # the slots to (re)write: all of them at first, then those whose activations were served. Written
        # in address order (faster); the serving order is the fresh uniform permutation drawn below.
        if len(self.perm) == 0:
            slots = torch.arange(self.capacity, device=self.device)
        else:
            slots = self.perm[:self.served].sort().values
        start = 0
        for acts in self._fresh_activations(len(slots)):
            self.storage.index_copy_(0, slots[start:start + len(acts)], acts)
            start += len(acts)
        if self.scale is None:                           # estimated once, from the first fill (every rank's)
            scale = torch.tensor(estimate_scale(self.storage, self.cfg.normalization), dtype=torch.float64)
            self.scale = float(D.all_reduce(scale, op="mean"))
        self.perm = torch.randperm(self.capacity, generator=self.generator).to(self.device)
        self.served = 0

    def next_batch(self) -> torch.Tensor:
        """[batch_size / world_size, d_in] float32, scaled by `self.scale`."""
        b = self.local_batch_size
        if (len(self.perm) == 0 or self.served + b > self.capacity
                or self.served >= self.cfg.refill_fraction * self.capacity):
            self._refill()
        idx = self.perm[self.served:self.served + b].sort().values        # sorted reads are faster; the
        self.served += b                                                   # order within a batch is irrelevant
        batch = self.storage.index_select(0, idx).to(torch.float32)          # [batch_size, d_in], a new tensor
        if self.scale is None:                                              # set by the first _refill
            raise RuntimeError("ActivationBuffer has no input scale yet")
        return batch.mul_(self.scale)

    def __iter__(self) -> Iterator[torch.Tensor]:
        while True:
            yield self.next_batch()

    @property
    def nbytes(self) -> int:
        """Bytes of activation data the buffer holds right now (storage, permutation, pending)."""
        return self.storage.nbytes + self.perm.nbytes + self.pending.nbytes

    # --- exact resumption ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Everything needed to continue the same stream of batches (tensors only: safetensors-friendly)."""
        def as_tensor(v, dtype=torch.long):
            return torch.tensor(v, dtype=dtype)

        # scale NaN: not yet estimated
        return {"storage": self.storage.cpu().clone(), "perm": self.perm.cpu().clone(),
                "pending": self.pending.cpu().clone(), "served": as_tensor(self.served),
                "next_seq": as_tensor(self.next_seq), "epoch": as_tensor(self.epoch),
                "scale": as_tensor(math.nan if self.scale is None else self.scale, torch.float64),
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if tuple(state["storage"].shape) != (self.capacity, self.d_in):
            raise ValueError(f"state_dict holds a buffer of shape {tuple(state['storage'].shape)}, "
                             f"this buffer is ({self.capacity}, {self.d_in})")
        self.storage.copy_(state["storage"])
        self.perm = state["perm"].to(self.device).clone()
        self.pending = state["pending"].to(self.device, self.dtype).clone()
        self.served, self.next_seq, self.epoch = (int(state[k]) for k in ("served", "next_seq", "epoch"))
        self.scale = None if math.isnan(float(state["scale"])) else float(state["scale"])
        self.generator.set_state(state["generator"])
