"""The on-disk activation cache: the model runs once, a sweep of many SAEs reads the activations many times.

    cache_activations(model, hook, tokens, n_tokens, path)   # path/activations.npy + path/meta.json
    ActivationCache(path, batch_size, normalization=...)     # shuffled, scaled float32 batches
    activation_cache_complete(path)                          # False: missing, interrupted or damaged

Both files are written atomically (saelib.files), meta.json last; a cache whose meta.json is missing or
disagrees with the array is refused with an error naming the file. saelib.data.activations re-exports
every name.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from saelib.data.hooks import (
    STORAGE_DTYPES,
    _check_tokens,
    check_hook_name,
    default_exclude_token_ids,
    hook_d_in,
    keep_mask,
    kept_activations,
)
from saelib.data.normalization import NORMALIZATIONS, estimate_scale
from saelib.files import atomic_write, atomic_write_json, read_json
from saelib.progress import tqdm
from saelib.validation import check_choice, check_index, check_positive


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
        # copy-on-write: pages are read from the file on demand and never written back (torch needs a writable array)
        array = np.load(path / "activations.npy", mmap_mode="c")             # [n_tokens, d_in]
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
        # the memmap as a tensor (no copy): torch's index_select gathers a batch's rows ~2x faster than numpy's
        # fancy indexing of a memmap. bfloat16 is stored as uint16 bits, read through int16 (same bits)
        self.rows = torch.from_numpy(self.array.view(np.int16) if self.meta["dtype"] == "bfloat16" else self.array)
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

    def _as_float32(self, rows: torch.Tensor) -> torch.Tensor:
        """Stored rows as float32 (rows themselves when stored as float32: a view of the memmap stays a view)."""
        return (rows.view(torch.bfloat16) if self.dtype == "bfloat16" else rows).to(torch.float32)

    def tensor(self, start: int = 0, stop: int | None = None, scaled: bool = True) -> torch.Tensor:
        """Rows [start, stop) as float32 [n, d_in], scaled by `scale` unless scaled=False (a copy either way)."""
        t = self._as_float32(self.rows[start:stop])
        return t * self.scale if scaled else t.clone()

    def next_batch(self) -> torch.Tensor:
        """[batch_size / world_size, d_in] float32, scaled: this rank's share of the global batch.

        Every rank draws the same global permutation (same seed) and keeps rows rank, rank + world_size, ...
        of each global batch, so under torchrun the ranks' batches together are the single-process batch.
        """
        if self.served + self.batch_size > len(self):               # new epoch, new order
            self.perm = torch.randperm(len(self), generator=self.generator)
            self.served, self.epoch = 0, self.epoch + 1
        idx = self.perm[self.served:self.served + self.batch_size][self.rank::self.world_size].sort().values
        self.served += self.batch_size
        return self._as_float32(self.rows.index_select(0, idx)) * self.scale

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
