"""Small torch.distributed helpers for data-parallel training (DistributedDataParallel).

Launch any script that calls `train_sae` with torchrun, e.g.

    torchrun --nproc_per_node=8 my_training_script.py

`train_sae` calls `init_distributed()` itself: when torchrun's WORLD_SIZE > 1 it joins the process
group (NCCL on GPUs, gloo on CPU), puts each rank on its own GPU (cuda:LOCAL_RANK), wraps the loss in
DistributedDataParallel, and lets rank 0 alone write checkpoints and show progress. Outside torchrun
every helper here degrades to the single-process case (rank 0 of a world of 1).
"""
from __future__ import annotations

import atexit
import gc
import os
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(backend: str | None = None) -> DistInfo:
    """Join the process group that torchrun describes in the environment (idempotent).

    backend: None picks "nccl" when CUDA is available, else "gloo".
    """
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed support")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend)
    atexit.register(destroy_distributed)        # a no-op if the script already called it
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank)


def destroy_distributed() -> None:
    """Leave the process group (call once at the end of a torchrun script).

    Gloo's worker threads free each finished collective (and the tensors it holds) a moment after the
    caller has been woken, and need the GIL to do so. If the interpreter is already shutting down by
    then, the thread is killed inside a destructor and the process aborts with "terminate called
    without an active exception" (seen about one run in 20 on CPU). So every rank meets at a barrier,
    leaves the group, and then sleeps briefly without the GIL so those threads can finish.
    """
    if dist.is_available() and dist.is_initialized():
        if dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()
        gc.collect()
        time.sleep(0.2)


def resolve_device(name: str = "auto", local_rank: int | None = None) -> torch.device:
    """The one device resolver of saelib (train_sae and the notebooks' parameters both use it).

    "auto" -> "cuda" when CUDA is available, else "cpu"; "cuda" -> "cuda:<local_rank>" when a local rank
    is given (under torchrun each rank takes its own GPU); "cuda:N" and "cpu" as they are. Asking for
    CUDA where there is none is an error naming the allowed values.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device={name!r} but CUDA is not available; allowed here: 'auto' or 'cpu'")
        if name == "cuda" and local_rank is not None:
            name = f"cuda:{local_rank}"
    return torch.device(name)


def unwrap(module: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (per-variant hooks live there)."""
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


def is_distributed() -> bool:
    """True inside a process group of more than one rank (torchrun with several processes)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce ("sum", "mean" or "max"); a no-op outside a process group."""
    if not is_distributed():
        return tensor
    if op == "mean":
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor.div_(dist.get_world_size())
    else:
        dist.all_reduce(tensor, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op])
    return tensor


def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate along dim 0 the tensors of every rank, in rank order (same shape on every rank)."""
    if not is_distributed():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


def all_gather_objects(obj) -> list:
    """Every rank's `obj` (small Python objects: data-source positions), in rank order."""
    if not is_distributed():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src: int = 0):
    """`obj` as rank `src` has it, on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    if is_distributed():
        dist.barrier()
