"""Check a notebook's from-scratch (teaching) copy of an SAE's loss against saelib's own.

Notebooks 01-03 write each variant's forward pass and loss in a few lines of plain torch, with the papers' equation
numbers, so a reader can see the whole method in one place. `compare_with_saelib` runs both on the same parameters
and inputs and asserts (torch.testing.assert_close) that the loss terms and every parameter's gradient agree:

    def loss_fn(x, lam, W_enc, b_enc, W_dec, b_dec):          # the notebook's copy; keyword names = parameter names
        f = torch.relu((x - b_dec) @ W_enc + b_enc)
        ...
        return {"loss": ..., "reconstruction": ..., "sparsity": ...}

    compare_with_saelib(create_sae("standard", 16, 48).double(), loss_fn, x.double(), 0.01)   # a table; raises if not
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from saelib.models.base import SAE


def _prefixed(name: str) -> Callable[[str], str]:
    """assert_close's message, prefixed with what was compared."""
    def message(detail: str) -> str:
        return f"{name}: {detail}"
    return message


def compare_with_saelib(sae: SAE, scratch_loss: Callable[..., Mapping[str, torch.Tensor]], x: torch.Tensor,
                        sparsity_coeff: float, rtol: float = 1e-7, atol: float = 1e-9) -> list[dict]:
    """Rows (quantity, from scratch, saelib, max |difference|) for each loss term `scratch_loss` returns and for the
    gradient of the total loss with respect to each of `sae`'s parameters (compared as tensors, shown as norms).
    `scratch_loss(x, sparsity_coeff, **parameters)` gets detached copies of the parameters, by name. Raises
    AssertionError (torch.testing.assert_close) at the first quantity that differs beyond rtol / atol."""
    params = {name: p.detach().clone().requires_grad_(True) for name, p in sae.named_parameters()}
    ours = scratch_loss(x, sparsity_coeff, **params)
    sae.zero_grad(set_to_none=True)
    ref = sae.loss(x, sparsity_coeff)
    ref.loss.backward()
    ours["loss"].backward()
    rows = []
    for name, value in ours.items():
        theirs = getattr(ref, name).detach()
        torch.testing.assert_close(value.detach(), theirs, rtol=rtol, atol=atol, msg=_prefixed(name))
        rows.append({"quantity": f"{name} term", "from scratch": float(value.detach()), "saelib": float(theirs),
                     "max |difference|": float((value.detach() - theirs).abs().max())})
    for name, p in sae.named_parameters():
        grad_ours, grad_ref = params[name].grad, p.grad
        g_ours = grad_ours if grad_ours is not None else torch.zeros_like(p)
        g_ref = grad_ref if grad_ref is not None else torch.zeros_like(p)
        torch.testing.assert_close(g_ours, g_ref, rtol=rtol, atol=atol, msg=_prefixed(f"d loss / d {name}"))
        rows.append({"quantity": f"‖d loss / d {name}‖", "from scratch": float(g_ours.norm()),
                     "saelib": float(g_ref.norm()), "max |difference|": float((g_ours - g_ref).abs().max())})
    sae.zero_grad(set_to_none=True)
    return rows
