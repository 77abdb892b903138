"""Where the training loop gets its batches: one small protocol and two adapters.

The protocol (`BatchSource`) is three methods:

    next_batch() -> Tensor [batch, d_in]     this rank's next batch of activations
    state_dict() -> dict                     the position in the stream: JSON values and tensors
    load_state_dict(state: dict) -> None     go back to that position

Anything with these methods resumes exactly from a checkpoint (saelib.data.activations' buffer follows it).
Under torchrun each rank's source yields that rank's share of the global batch (batch_size / world_size
rows). `as_batch_source` turns what a user passes to `train_sae` into a source:

  a Tensor [N, d_in]  -> TensorBatches: epoch-wise shuffles drawn from a seeded generator; every rank
                         draws the same global permutation and takes a rank-strided slice of each batch
  a BatchSource       -> used as it is
  any iterator        -> IteratorBatches: works, but a resumed run cannot rewind it (a warning says so)
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Protocol, runtime_checkable

import torch

from saelib.validation import check_positive


@runtime_checkable
class BatchSource(Protocol):
    def next_batch(self) -> torch.Tensor: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


class TensorBatches:
    """Shuffled minibatches from an in-memory activation tensor.

    Epoch e uses the permutation drawn by a generator seeded with (seed, e), so the position
    (epoch, index) is the whole state. Global batches are consecutive slices of the permutation
    (an incomplete last slice is dropped); rank r of a world of w takes rows r, r + w, ... of each.
    Keep `data` on the GPU when it fits: the loop then skips a host-to-device copy per step.
    """

    def __init__(self, data: torch.Tensor, batch_size: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1):
        if not isinstance(data, torch.Tensor) or data.ndim != 2:
            raise ValueError(f"data must be a 2-D tensor [n_rows, d_in]; got "
                             f"{type(data).__name__} with shape {getattr(data, 'shape', None)}")
        check_positive("batch_size", batch_size, integer=True)
        if data.shape[0] < batch_size:
            raise ValueError(f"batch_size={batch_size} is larger than the number of rows in the data "
                             f"({data.shape[0]}); allowed: at most {data.shape[0]}")
        if batch_size % world_size:
            raise ValueError(f"batch_size={batch_size} must be divisible by the world size {world_size}")
        self.data, self.batch_size, self.seed = data, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.batches_per_epoch = data.shape[0] // batch_size
        self.epoch, self.index = 0, 0            # next batch: slice `index` of epoch `epoch`
        self._perm_epoch: int | None = None
        self._perm = torch.empty(0, dtype=torch.long)

    def _permutation(self) -> torch.Tensor:  # [n_rows] on the data's device
        if self._perm_epoch != self.epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            self._perm = torch.randperm(self.data.shape[0], generator=g).to(self.data.device)
            self._perm_epoch = self.epoch
        return self._perm

    def next_batch(self) -> torch.Tensor:  # [batch_size / world_size, d_in]
        start = self.index * self.batch_size
        rows = self._permutation()[start:start + self.batch_size][self.rank::self.world_size]
        self.index += 1
        if self.index == self.batches_per_epoch:
            self.epoch, self.index = self.epoch + 1, 0
        return self.data.index_select(0, rows)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index, "seed": self.seed,
                "batch_size": self.batch_size, "n_rows": int(self.data.shape[0])}

    def load_state_dict(self, state: dict) -> None:
        for key in ("seed", "batch_size", "n_rows"):
            mine = self.state_dict()[key]
            if state[key] != mine:
                raise ValueError(f"cannot resume the data position: the checkpoint has {key}={state[key]} "
                                 f"but this run has {key}={mine}")
        self.epoch, self.index = int(state["epoch"]), int(state["index"])


class IteratorBatches:
    """Any iterator of tensors. It has no position to save, so a resume starts it where it is."""

    resumable = False

    def __init__(self, iterable: Iterable[torch.Tensor]):
        self._it: Iterator[torch.Tensor] = iter(iterable)

    def next_batch(self) -> torch.Tensor:
        try:
            x = next(self._it)
        except StopIteration:
            raise RuntimeError("the batch iterator ran out before total_steps was reached") from None
        return x

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def as_batch_source(batches: Any, batch_size: int, seed: int = 0, rank: int = 0,
                    world_size: int = 1) -> Any:
    """Wrap what the user passed to `train_sae` (see the module docstring)."""
    if isinstance(batches, torch.Tensor):
        return TensorBatches(batches, batch_size, seed=seed, rank=rank, world_size=world_size)
    if isinstance(batches, BatchSource):
        return batches
    if hasattr(batches, "__iter__") or hasattr(batches, "__next__"):
        return IteratorBatches(batches)
    raise ValueError(f"batches={type(batches).__name__} is not supported; allowed: a Tensor [n_rows, d_in], "
                     "an object with next_batch()/state_dict()/load_state_dict(), or an iterator of tensors")
