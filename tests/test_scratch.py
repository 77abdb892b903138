"""saelib.lab.scratch: a notebook's from-scratch copy of a loss is checked against saelib's, terms and gradients."""
from __future__ import annotations

import pytest
import torch

from saelib.lab.scratch import compare_with_saelib
from saelib.models.architectures import create_sae


def _standard(x, lam, W_enc, b_enc, W_dec, b_dec, scale=1.0):
    f = torch.relu((x - b_dec) @ W_enc + b_enc)
    x_hat = f @ W_dec + b_dec
    reconstruction = (x - x_hat).pow(2).sum(-1).mean()
    sparsity = scale * f.sum(-1).mean()
    return {"loss": reconstruction + lam * sparsity, "reconstruction": reconstruction, "sparsity": sparsity}


def test_a_faithful_copy_agrees_in_every_term_and_gradient():
    torch.manual_seed(0)
    sae, x = create_sae("standard", 8, 24).double(), torch.randn(32, 8, dtype=torch.float64)
    rows = compare_with_saelib(sae, _standard, x, 0.1)
    assert [r["quantity"] for r in rows][:3] == ["loss term", "reconstruction term", "sparsity term"]
    assert len(rows) == 3 + len(list(sae.parameters()))
    assert max(r["max |difference|"] for r in rows) < 1e-12
    assert all(p.grad is None for p in sae.parameters())          # leaves the SAE as it found it


def test_a_wrong_copy_is_caught():
    torch.manual_seed(0)
    sae, x = create_sae("standard", 8, 24).double(), torch.randn(32, 8, dtype=torch.float64)
    with pytest.raises(AssertionError, match="^loss: "):
        compare_with_saelib(sae, lambda *a, **p: _standard(*a, **p, scale=1.01), x, 0.1)
