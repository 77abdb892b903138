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
                    so a sweep of many SAEs runs the model once.

Both scale what they serve by one scalar s estimated from the first activations they see (see
saelib/normalization.py). Hook names are transformer_lens names, e.g. `blocks.1.hook_resid_post`,
`blocks.1.hook_mlp_out`, `blocks.0.mlp.hook_post` (MLP neurons), `blocks.0.attn.hook_z` (attention
outputs before W_O, [.., n_heads, d_head], flattened here to n_heads * d_head).
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from saelib.data.normalization import NORMALIZATIONS, estimate_scale
from saelib.files import atomic_write, atomic_write_json, read_json
from saelib.progress import tqdm
from saelib.training import distributed as D
from saelib.validation import check_choice, check_index, check_positive, check_range

STORAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


# ----------------------------------------------------------------------------- reading one hook

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
    normalization    see saelib/normalization.py; the scale comes from the first fill unless `scale` is given
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


# ----------------------------------------------------------------------------- the on-disk cache

def cache_activations(model, hook_name: str, tokens: torch.Tensor, n_tokens: int, path: str | Path, *,
                      dtype: str = "float32", model_batch_size: int = 32,
                      exclude_token_ids: Sequence[int] | None = None, progress: bool = True) -> Path:
    """Run the model once and write the first `n_tokens` kept activations of `hook_name` to
    `path/activations.npy` (a numpy array, memory-mappable; bfloat16 is stored as its uint16 bit
    pattern) with `path/meta.json`. Returns `path`. meta.json is written last: a directory without
    it is an interrupted write and `ActivationCache` refuses it."""
    _check_tokens(tokens)
    check_hook_name(model, hook_name)
    check_positive("n_tokens", n_tokens, integer=True)
    check_positive("model_batch_size", model_batch_size, integer=True)
    check_choice("dtype", dtype, STORAGE_DTYPES)
    if exclude_token_ids is None:
        exclude_token_ids = default_exclude_token_ids(model)
    available = int(keep_mask(tokens, exclude_token_ids).sum())
    if available < n_tokens:
        raise ValueError(f"n_tokens={n_tokens} is out of range; allowed: <= {available} "
                         f"(the non-BOS, non-padding positions in tokens)")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "meta.json").unlink(missing_ok=True)
    d_in = hook_d_in(model, hook_name)
    torch_dtype = STORAGE_DTYPES[dtype]
    np_dtype = np.uint16 if dtype == "bfloat16" else np.dtype(dtype)

    def write_array(tmp: Path) -> None:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np_dtype, shape=(n_tokens, d_in))
        written = 0
        with tqdm(total=n_tokens, desc=f"caching {hook_name}", unit="act", disable=not progress) as bar:
            for start in range(0, tokens.shape[0], model_batch_size):
                acts = kept_activations(model, tokens[start:start + model_batch_size], hook_name, exclude_token_ids)
                acts = acts[: n_tokens - written].to("cpu", torch_dtype)                 # [n, d_in]
                bits = acts.view(torch.uint16) if dtype == "bfloat16" else acts
                out[written:written + len(acts)] = bits.numpy()
                written += len(acts)
                bar.update(len(acts))
                if written == n_tokens:
                    break
        out.flush()
        del out

    atomic_write(path / "activations.npy", write_array)
    meta = {"hook_name": hook_name, "n_tokens": n_tokens, "d_in": d_in, "dtype": dtype,
            "model": getattr(model.cfg, "model_name", None), "exclude_token_ids": list(exclude_token_ids)}
    atomic_write_json(path / "meta.json", meta, indent=2)
    return path


def activation_cache_complete(path: str | Path) -> bool:
    """True when `path` holds a complete, readable cache written by `cache_activations`: meta.json parses
    and activations.npy has the shape and dtype it records. False otherwise (missing, interrupted or
    damaged: write it again)."""
    try:
        _read_cache(Path(path))
    except ValueError:
        return False
    return True


def _read_cache(path: Path) -> tuple[dict, np.ndarray]:
    """(meta, memmapped array) of a cache folder; ValueError naming the file when anything is off."""
    if not (path / "meta.json").exists():
        raise ValueError(f"path={str(path)!r} holds no complete activation cache (no meta.json); "
                         "write one with cache_activations(...)")
    meta = read_json(path / "meta.json")
    try:
        n_tokens, d_in, dtype = int(meta["n_tokens"]), int(meta["d_in"]), meta["dtype"]
        check_choice("dtype", dtype, STORAGE_DTYPES)
        array = np.load(path / "activations.npy", mmap_mode="r")             # [n_tokens, d_in]
    except (KeyError, TypeError, ValueError, OSError) as e:
        raise ValueError(f"{path}: damaged activation cache ({e}); write it again with cache_activations(...)") \
            from e
    expected = np.dtype(np.uint16 if dtype == "bfloat16" else dtype)
    if array.shape != (n_tokens, d_in) or array.dtype != expected:
        raise ValueError(f"{path / 'activations.npy'}: shape {array.shape} {array.dtype}, but meta.json records "
                         f"({n_tokens}, {d_in}) {expected}; write the cache again with cache_activations(...)")
    return meta, array


class ActivationCache:
    """Activations written by `cache_activations`, served as shuffled float32 batches scaled by `scale`.

    Each epoch visits every cached activation once in a fresh random order (seeded). Within a batch
    the rows are read in sorted order, which is much faster on a memmap and irrelevant to training.
    The scale is estimated from the first `n_scale` activations unless given.
    """

    def __init__(self, path: str | Path, batch_size: int = 4096, *, normalization: str = "unit_mean_squared_norm",
                 scale: float | None = None, n_scale: int = 2 ** 16, seed: int = 0,
                 rank: int = 0, world_size: int = 1):
        path = Path(path)
        self.meta, self.array = _read_cache(path)                                # array: [n_tokens, d_in]
        check_positive("batch_size", batch_size, integer=True)
        check_choice("normalization", normalization, NORMALIZATIONS)
        check_positive("n_scale", n_scale, integer=True)
        check_positive("world_size", world_size, integer=True)
        check_index("rank", rank, world_size)
        if batch_size % world_size:
            raise ValueError(f"batch_size={batch_size} must be a multiple of world_size={world_size}")
        self.rank, self.world_size = rank, world_size
        self.path, self.batch_size = path, batch_size
        self.hook_name, self.d_in, self.dtype = self.meta["hook_name"], self.meta["d_in"], self.meta["dtype"]
        if batch_size > len(self):
            raise ValueError(f"batch_size={batch_size} is out of range; allowed: <= {len(self)} (cached activations)")
        if scale is None:
            scale = estimate_scale(self.tensor(0, min(n_scale, len(self)), scaled=False), normalization)
        else:
            check_positive("scale", scale)
        self.scale = float(scale)
        self.generator = torch.Generator().manual_seed(seed)
        self.perm = torch.randperm(len(self), generator=self.generator)
        self.served, self.epoch = 0, 0

    def __len__(self) -> int:
        return self.array.shape[0]

    def _to_tensor(self, rows: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.require(rows, requirements=["C", "W"]))       # copies memmap slices only
        return (t.view(torch.bfloat16) if self.dtype == "bfloat16" else t).to(torch.float32)

    def tensor(self, start: int = 0, stop: int | None = None, scaled: bool = True) -> torch.Tensor:
        """Rows [start, stop) as float32 [n, d_in], scaled by `scale` unless scaled=False."""
        t = self._to_tensor(self.array[start:stop])
        return t * self.scale if scaled else t

    def next_batch(self) -> torch.Tensor:
        """[batch_size / world_size, d_in] float32, scaled: this rank's share of the global batch.

        Every rank draws the same global permutation (same seed) and keeps rows rank, rank + world_size, ...
        of each global batch, so under torchrun the ranks' batches together are the single-process batch.
        """
        if self.served + self.batch_size > len(self):               # new epoch, new order
            self.perm = torch.randperm(len(self), generator=self.generator)
            self.served, self.epoch = 0, self.epoch + 1
        idx = self.perm[self.served:self.served + self.batch_size][self.rank::self.world_size].sort().values.numpy()
        self.served += self.batch_size
        return self._to_tensor(self.array[idx]) * self.scale

    def __iter__(self) -> Iterator[torch.Tensor]:
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"perm": self.perm.clone(), "served": torch.tensor(self.served), "epoch": torch.tensor(self.epoch),
                "scale": torch.tensor(self.scale, dtype=torch.float64), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if len(state["perm"]) != len(self):
            raise ValueError(f"state_dict is for a cache of {len(state['perm'])} activations, this one has {len(self)}")
        self.perm = state["perm"].clone()
        self.served, self.epoch = int(state["served"]), int(state["epoch"])
        self.scale = float(state["scale"])
        self.generator.set_state(state["generator"])
