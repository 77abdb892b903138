"""Sparse training steps: after the one dense encoder product, touch only the latents that matter.

A training SAE soon keeps L0 << d_sae latents per token. Once the pre-activations
pi = (x - b_dec) W_enc + b_enc  [batch, d_sae]  are computed, every other product of a step involves only a
set S of (token, latent) pairs: the active latents, plus, for JumpReLU, those inside the kernel window
below the threshold. With F the sparse [batch, d_sae] code matrix, g = d loss / d x_hat [batch, d_in] and
G the sparse d loss / d pi:
    decode           x_hat[b] = sum_{(b,i) in S} F_bi W_dec[i]          an embedding bag
    grad W_dec       = F^T g                                            a sparse product
    grad F_bi        = g[b] . W_dec[i]                                  nnz dot products
    grad W_enc       = (x - b_dec)^T G                                  a sparse product
about 2 B d_in d_sae + 8 |S| d_in FLOPs instead of 10 B d_in d_sae for a dense step (TopK: |S| = B k).

S is kept as two index vectors (COO), token-major (as `nonzero()` returns them): `Support(rows, cols)`.
The models' dense loss() stays the reference; tests/test_sparse.py checks that the sparse steps
(saelib/fast/steps.py, saelib/fast/gated.py) give the same loss and gradients.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

# take the sparse step when the support holds at most this fraction of the batch x d_sae entries
# (the default of training_loss's max_density; benchmarks/train_step.py --l0 ... measures the crossover)
SPARSE_MAX_DENSITY = 0.08


class Support(NamedTuple):
    """The (token, latent) pairs a sparse step touches: rows [nnz] (sorted), cols [nnz]; batch rows in all."""
    rows: torch.Tensor
    cols: torch.Tensor
    batch: int

    @property
    def offsets(self) -> torch.Tensor:                          # [batch]: where each token's latents start
        counts = torch.bincount(self.rows, minlength=self.batch)
        return torch.cumsum(counts, 0) - counts


def support_of_topk(indices: torch.Tensor) -> Support:
    """The support of a TopK code: indices [batch, k] -> every token's k latents."""
    batch, k = indices.shape
    rows = torch.arange(batch, device=indices.device).repeat_interleave(k)
    return Support(rows, indices.flatten(), batch)


def support_above(pi: torch.Tensor, cut: torch.Tensor | float, max_density: float) -> Support | None:
    """The pairs with pi > cut (cut [d_sae] or a number), or None if they are more than `max_density` of
    the batch x d_sae entries: then the dense step is faster. CPU only (counting is a host sync on a GPU)."""
    if pi.device.type != "cpu" or max_density <= 0:
        return None
    if pi.dtype in _NUMPY_DTYPES and pi.ndim == 2 and (not isinstance(cut, torch.Tensor) or cut.dtype == pi.dtype):
        return _support_above_numpy(pi, cut, max_density)
    with torch.no_grad():
        head = pi[:256]                   # a clearly dense code is recognised from a few rows, cheaply
        if int(torch.count_nonzero(head > cut)) > 2 * max_density * head.numel():
            return None
        above = pi > cut                                         # [batch, d_sae] bool
        if int(torch.count_nonzero(above)) > max_density * above.numel():   # (bool .sum() is 20x slower)
            return None
        rows, cols = above.nonzero(as_tuple=True)
    return Support(rows, cols, pi.shape[0])


_NUMPY_DTYPES = (torch.float32, torch.float64)


def _support_above_numpy(pi: torch.Tensor, cut: torch.Tensor | float, max_density: float) -> Support | None:
    """support_above for a float32/float64 CPU pi, through numpy: the same comparisons and the same pairs in
    the same (token-major) order as torch's `(pi > cut).nonzero()`, 3-4x faster at one thread (a
    flat nonzero instead of torch's two-coordinate one; benchmarks/run_overheads.py)."""
    a = pi.detach().numpy()                                                  # [batch, d_sae], shares memory
    c = cut.detach().numpy() if isinstance(cut, torch.Tensor) else cut
    head = a[:256]
    if np.count_nonzero(head > c) > 2 * max_density * head.size:
        return None
    above = a > c                                                            # [batch, d_sae] bool
    if np.count_nonzero(above) > max_density * above.size:
        return None
    flat = torch.from_numpy(np.flatnonzero(above))                           # [nnz] int64, row-major
    d_sae = a.shape[1]
    return Support(flat.div(d_sae, rounding_mode="floor"), flat.remainder(d_sae), pi.shape[0])


def select_pre_activations(pi: torch.Tensor, support: Support, x: torch.Tensor, W_enc: torch.Tensor,
                           b_enc: torch.Tensor | None, b_dec: torch.Tensor, product_only: bool = False
                           ) -> torch.Tensor:
    """pi = (x - b_dec) W_enc + b_enc at the support [nnz], differentiable in W_enc, b_enc, b_dec (and x)
    through a sparse backward. b_enc may be None (no encoder bias).

    pi is the dense product, already computed; its own graph, if any, is not used (autograd frees it
    unused). product_only=True: the tensor passed holds x W_enc only, and the biases are added here, at
    the support."""
    return SelectedPreActivations.apply(pi.detach(), support.rows, support.cols, x, W_enc, b_enc, b_dec,
                                        product_only)


def sparse_decode(values: torch.Tensor, support: Support, W_dec: torch.Tensor) -> torch.Tensor:
    """sum over the support of values * W_dec[latent]  -> [batch, d_in]  (no b_dec)."""
    return SparseDecode.apply(values.to(W_dec.dtype), support.rows, support.cols, support.batch, W_dec)


def densify(values: torch.Tensor, support: Support, d_sae: int) -> torch.Tensor:
    """The dense [batch, d_sae] matrix holding values at the support (zeros elsewhere)."""
    out = torch.zeros(support.batch, d_sae, dtype=values.dtype, device=values.device)
    out[support.rows, support.cols] = values.detach()
    return out


class SparseCodes:
    """A sparse step's codes f, for LossOutput: called, the dense [batch, d_sae] matrix (built on demand);
    feature_max(), each feature's largest activation over the batch without building it."""

    def __init__(self, values: torch.Tensor, support: Support, d_sae: int):
        self.values, self.support, self.d_sae = values.detach(), support, d_sae

    def __call__(self) -> torch.Tensor:
        return densify(self.values, self.support, self.d_sae)

    def feature_max(self) -> torch.Tensor:                                      # [d_sae], zeros included
        out = torch.zeros(self.d_sae, dtype=self.values.dtype, device=self.values.device)
        return out.scatter_reduce_(0, self.support.cols, self.values, "amax")


class SelectedPreActivations(torch.autograd.Function):
    """(pi, rows, cols, x, W_enc, b_enc, b_dec, product_only) -> pi[rows, cols]  [nnz].

    With G the sparse [batch, d_sae] matrix of incoming gradients at the support:
        d loss / d W_enc = (x - b_dec)^T G       a sparse [d_sae, batch] @ [batch, d_in] product, transposed
        d loss / d b_enc = column sums of G
        d loss / d b_dec = -W_enc (column sums of G)
        d loss / d x     = G W_enc^T             (only if x requires a gradient)
    """

    @staticmethod
    def forward(ctx, pi, rows, cols, x, W_enc, b_enc, b_dec, product_only):
        ctx.save_for_backward(rows, cols, x, W_enc, b_dec)
        values = pi[rows, cols]
        if product_only:                                    # pi held x W_enc: add b_enc - b_dec W_enc here
            offset = -(b_dec @ W_enc) if b_enc is None else b_enc - b_dec @ W_enc               # [d_sae]
            values = values + offset.index_select(0, cols)
        return values

    @staticmethod
    def backward(ctx, grad):                                                    # grad [nnz]
        rows, cols, x, W_enc, b_dec = ctx.saved_tensors
        d_sae = W_enc.shape[1]
        grad = grad.to(W_enc.dtype)
        grad_x = grad_W_enc = grad_b_enc = grad_b_dec = None
        if ctx.needs_input_grad[4]:
            grad_W_enc = sparse_t_matmul(rows, cols, grad, (x - b_dec).to(W_enc.dtype), d_sae).T  # [d_in, d_sae]
        column_sums = torch.zeros(d_sae, dtype=grad.dtype, device=grad.device).index_add_(0, cols, grad)
        if ctx.needs_input_grad[5]:
            grad_b_enc = column_sums
        if ctx.needs_input_grad[6]:
            grad_b_dec = -(W_enc @ column_sums)
        if ctx.needs_input_grad[3]:
            offsets = Support(rows, cols, x.shape[0]).offsets
            grad_x = F.embedding_bag(cols, W_enc.T, offsets, per_sample_weights=grad, mode="sum").to(x.dtype)
        return None, None, None, grad_x, grad_W_enc, grad_b_enc, grad_b_dec, None


class SparseDecode(torch.autograd.Function):
    """(values [nnz], rows, cols, batch, W_dec) -> sum over the support of values * W_dec[cols]  [batch, d_in].

    An embedding bag forward. With g [batch, d_in] the incoming gradient and V the sparse code matrix:
        d loss / d W_dec     = V^T g                          (sparse_t_matmul)
        d loss / d values_j  = g[rows_j] . W_dec[cols_j]      (the embedding bag's per-sample-weight gradient)
    torch's own embedding-bag backward for W_dec sorts all nnz indices, several times slower on CPU.
    """

    @staticmethod
    def forward(ctx, values, rows, cols, batch, W_dec):
        offsets = Support(rows, cols, batch).offsets
        ctx.save_for_backward(values, rows, cols, offsets, W_dec)
        return F.embedding_bag(cols, W_dec, offsets, per_sample_weights=values, mode="sum")

    @staticmethod
    def backward(ctx, grad):                                                    # grad [batch, d_in]
        values, rows, cols, offsets, W_dec = ctx.saved_tensors
        grad_values = grad_W_dec = None
        if ctx.needs_input_grad[0]:
            grad_values = per_sample_weights_grad(grad, W_dec.detach(), rows, cols, offsets)
        if ctx.needs_input_grad[4]:
            grad_W_dec = sparse_t_matmul(rows, cols, values, grad.to(W_dec.dtype), W_dec.shape[0])
        return grad_values, None, None, None, grad_W_dec


def per_sample_weights_grad(grad: torch.Tensor, weight: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
                            offsets: torch.Tensor) -> torch.Tensor:
    """d loss / d values_j = grad[rows_j] . weight[cols_j]  [nnz]: the gradient of an embedding bag (mode "sum")
    with respect to its per-sample weights, from torch's own backward kernel (rows is the bag of each entry).
    The same values as autograd through F.embedding_bag (tests/test_sparse.py), without the forward autograd
    would run again to build its graph."""
    return torch.ops.aten._embedding_bag_per_sample_weights_backward(grad, weight, cols, offsets, rows, 0, -1)


def sparse_t_matmul(rows: torch.Tensor, cols: torch.Tensor, weights: torch.Tensor, dense: torch.Tensor,
                    d_sae: int) -> torch.Tensor:
    """A^T dense  [d_sae, d]  for the sparse [batch, d_sae] matrix A with A[rows_j, cols_j] = weights_j (pairs
    distinct) and dense [batch, d]: a COO sparse product."""
    A_T = torch.sparse_coo_tensor(torch.stack([cols, rows]), weights.to(dense.dtype), (d_sae, dense.shape[0]),
                                  check_invariants=False)
    return torch.sparse.mm(A_T, dense)
