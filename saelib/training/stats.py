"""What the training loop reads off a step: history rows and NaN/inf guards, each with one host sync.

Both read device tensors only when the loop asks (a log step, a check step), never per step on a GPU:
the loop keeps everything else on the device (see benchmarks/README.md, "Host syncs").
"""
from __future__ import annotations

import math

import torch

from saelib.training import distributed as D

TERMS = ("reconstruction", "sparsity", "aux", "loss")


class NonFiniteError(FloatingPointError):
    """Training met a NaN or inf (in a loss term or a parameter); the message names the step and term."""


def loss_terms(out) -> torch.Tensor:
    """[4] reconstruction, sparsity, aux, loss of a LossOutput, detached, on its device (no host sync)."""
    return torch.stack([torch.as_tensor(getattr(out, t), device=out.loss.device).detach().float().reshape(())
                        for t in TERMS])


def check_finite(step: int, last_ok: int, where: str, out=None, params: dict | None = None) -> None:
    """Raise NonFiniteError naming the step and the first non-finite loss term or parameter.

    One host sync; under torchrun the flags are combined over ranks so that every rank stops together.
    On a CPU in a single process (where a read is free and the loop checks every step) the usual case, all
    finite, is settled by reading the values directly: a few Python floats instead of a stack of flags.
    """
    if not D.is_distributed() and _all_finite_on_cpu(out, params):
        return
    if out is not None:
        names, flags = [f"{t} loss term" for t in TERMS], ~torch.isfinite(loss_terms(out))        # [4]
    else:
        assert params is not None
        names = [f"parameter {n}" for n in params]
        # a NaN or inf anywhere in a parameter makes its sum non-finite: one pass, no [param]-sized mask
        # (on a CPU this check runs every step). Only a non-finite sum, which may also be a finite overflow,
        # is looked at element by element.
        with torch.no_grad():
            sums = torch.stack([p.sum() for p in params.values()])                             # [n_params]
        if not any(D.all_reduce((~torch.isfinite(sums)).float(), op="max").tolist()):
            return
        flags = torch.stack([~torch.isfinite(p).all() for p in params.values()])               # [n_params]
    found = D.all_reduce(flags.float(), op="max").tolist()
    bad = [n for n, flag in zip(names, found, strict=True) if flag]
    if bad:
        since = "" if last_ok == step - 1 else f" (the previous check, after step {last_ok}, passed)"
        raise NonFiniteError(f"non-finite value (NaN or inf) in the {bad[0]} at step {step}{since}; "
                             f"all non-finite: {', '.join(bad)}. Training stopped; {where}")


def _all_finite_on_cpu(out, params: dict | None) -> bool:
    """True when every loss term of `out` (or every parameter of `params`) is finite and all are on a CPU;
    False means "look closer" (something is not finite, or a tensor is on another device)."""
    with torch.no_grad():
        if out is not None:
            terms = [getattr(out, t) for t in TERMS]
            if any(isinstance(t, torch.Tensor) and t.device.type != "cpu" for t in terms):
                return False
            return all(math.isfinite(float(t)) for t in terms)
        assert params is not None
        if any(p.device.type != "cpu" for p in params.values()):
            return False
        return all(math.isfinite(float(p.sum())) for p in params.values())


def history_row(out, step: int, batch_size: int, lr: float, lam: float, grad_norm, n_resampled: int) -> dict:
    """A history row; the one host sync of a log step. Values are means over the global batch."""
    with torch.no_grad():
        l0 = (torch.count_nonzero(out.f) / out.f.shape[0]).float().reshape(1)       # mean over tokens
        stats = torch.cat([loss_terms(out), l0])
        if grad_norm is not None:
            stats = torch.cat([stats, grad_norm.detach().float().reshape(1)])
        values = D.all_reduce(stats, op="mean").tolist()
    row = {"step": step, "tokens": step * batch_size, **dict(zip(TERMS + ("l0",), values[:5], strict=True)), "lr": lr,
           "sparsity_coeff": lam, "n_resampled": n_resampled}
    if grad_norm is not None:
        row["grad_norm"] = values[5]
    return row
