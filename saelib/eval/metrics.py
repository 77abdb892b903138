"""How good is an SAE? Sparsity, fidelity, shrinkage and feature-usage metrics.

Notation (docs/design.md §1): x [tokens, d_in] are the activations, x_hat the SAE's reconstruction, f
[tokens, d_sae] its feature activations. E[.] is the mean over tokens.

    L0     = E ||f||_0                                          (active features per token)
    MSE    = E ||x - x_hat||^2 / d_in                           (per element, like F.mse_loss)
    FVU    = E ||x - x_hat||^2 / E ||x - E x||^2                (fraction of variance unexplained)
    gamma  = E ||x_hat||^2 / E [x . x_hat]                      (relative reconstruction bias, corrected)
    gamma_v1 = sqrt(E ||x_hat||^2 / (E ||x||^2 - E ||x_hat - x||^2))   (first version's eq. 10)

The one-shot functions take whole tensors. `MetricsAccumulator` computes the same numbers from running
float64 sums, batch by batch, so that metrics over millions of tokens never hold them in memory, and
`evaluate_sae` runs an SAE over a tensor or an iterable of batches and returns all of them at once.
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F

from saelib.models.base import SAE
from saelib.validation import check_positive, check_range

DENSE_THRESHOLD = 0.1  # a feature active on more than 10% of tokens counts as dense


def _flat(t: torch.Tensor) -> torch.Tensor:
    """[..., d] -> [tokens, d] in float64 (metrics are sums of many small terms)."""
    return t.reshape(-1, t.shape[-1]).double()


def _check_pair(x: torch.Tensor, x_hat: torch.Tensor) -> None:
    if x.shape != x_hat.shape:
        raise ValueError(f"x_hat has shape {tuple(x_hat.shape)} but x has shape {tuple(x.shape)}; they must match")


# ----------------------------------------------------------------------------- sparsity

def l0(f: torch.Tensor) -> float:
    """Mean number of active (non-zero) features per token."""
    return (f != 0).reshape(-1, f.shape[-1]).sum(-1).double().mean().item()


def feature_frequencies(f: torch.Tensor) -> torch.Tensor:
    """[d_sae] fraction of tokens on which each feature is active."""
    return (f != 0).reshape(-1, f.shape[-1]).double().mean(0).cpu()


def dead_features(frequencies: torch.Tensor) -> int:
    """Number of features never active over the tokens seen."""
    return int((frequencies == 0).sum())


def dense_features(frequencies: torch.Tensor, threshold: float = DENSE_THRESHOLD) -> int:
    """Number of features active on more than `threshold` of the tokens (default 10%)."""
    check_range("threshold", threshold, 0.0, 1.0)
    return int((frequencies > threshold).sum())


# ----------------------------------------------------------------------------- fidelity

def mse(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Mean squared error per element: E ||x - x_hat||^2 / d_in."""
    _check_pair(x, x_hat)
    return (_flat(x) - _flat(x_hat)).pow(2).mean().item()


def fraction_of_variance_unexplained(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """FVU = E ||x - x_hat||^2 / E ||x - E x||^2 (E x is the per-dimension mean over tokens)."""
    _check_pair(x, x_hat)
    x, x_hat = _flat(x), _flat(x_hat)
    error = (x - x_hat).pow(2).sum(-1).mean()
    variance = (x - x.mean(0)).pow(2).sum(-1).mean()
    return (error / variance).item()


def explained_variance(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """1 - FVU."""
    return 1.0 - fraction_of_variance_unexplained(x, x_hat)


def cosine_similarity(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Mean over tokens of cos(x, x_hat) (0 for a token where either vector is zero)."""
    _check_pair(x, x_hat)
    return F.cosine_similarity(_flat(x), _flat(x_hat), dim=-1).mean().item()


# ----------------------------------------------------------------------------- shrinkage

def _gamma(sum_x_hat_sq: float, sum_dot: float) -> float:
    # gamma := argmin_g E ||x_hat / g - x||^2  =>  gamma = E ||x_hat||^2 / E [x . x_hat]
    return sum_x_hat_sq / sum_dot if sum_dot != 0 else math.nan


def _gamma_v1(sum_x_hat_sq: float, sum_x_sq: float, sum_err_sq: float) -> float:
    # first version, eq. 10: gamma = sqrt(E ||x_hat||^2 / (E ||x||^2 - E ||x_hat - x||^2))
    denominator = sum_x_sq - sum_err_sq
    return math.sqrt(sum_x_hat_sq / denominator) if denominator > 0 else math.nan


def relative_reconstruction_bias(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Corrected gamma = E ||x_hat||^2 / E [x . x_hat]: 1 without shrinkage, < 1 with it.

    It is the scale g minimising E ||x_hat / g - x||^2, so x_hat = c * x gives exactly c.
    (Equivalently 2 E||x_hat||^2 / (E||x_hat||^2 + E||x||^2 - E||x_hat - x||^2).)
    """
    _check_pair(x, x_hat)
    x, x_hat = _flat(x), _flat(x_hat)
    return _gamma(x_hat.pow(2).sum().item(), (x * x_hat).sum().item())


def relative_reconstruction_bias_v1(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """The first arXiv version's eq. 10, kept to show the correction: sqrt(E||x_hat||^2 / (E||x||^2 -
    E||x_hat - x||^2)). Agrees with the corrected gamma only when there is no shrinkage (x = 1,
    x_hat = 1/2 gives 1/sqrt(3) instead of 1/2). NaN when the denominator is not positive."""
    _check_pair(x, x_hat)
    x, x_hat = _flat(x), _flat(x_hat)
    return _gamma_v1(x_hat.pow(2).sum().item(), x.pow(2).sum().item(), (x_hat - x).pow(2).sum().item())


# ----------------------------------------------------------------------------- streaming

class MetricsAccumulator:
    """Every metric above from running sums, one batch at a time.

        acc = MetricsAccumulator()
        for x in batches:
            f = sae.encode(x); acc.update(x, sae.decode(f), f)
        acc.compute()   # {"l0": ..., "fvu": ..., "relative_reconstruction_bias": ..., ...}

    Sums are float64 on the batches' device (no host sync per batch). The variance in the FVU
    denominator is merged per dimension with Chan et al.'s parallel update, so a large mean offset
    (as in the residual stream) does not cancel catastrophically.
    """

    def __init__(self, dense_threshold: float = DENSE_THRESHOLD):
        check_range("dense_threshold", dense_threshold, 0.0, 1.0)
        self.dense_threshold = dense_threshold
        self.n_tokens = 0
        self._sums: dict[str, torch.Tensor] = {}
        self._mean: torch.Tensor | None = None  # [d_in] running mean of x
        self._m2: torch.Tensor | None = None    # [d_in] running sum of squared deviations from the mean
        self._active: torch.Tensor | None = None  # [d_sae] tokens on which each feature fired

    def _add(self, name: str, value: torch.Tensor) -> None:
        self._sums[name] = self._sums[name] + value if name in self._sums else value

    @torch.no_grad()
    def update(self, x: torch.Tensor, x_hat: torch.Tensor, f: torch.Tensor | None = None) -> None:
        _check_pair(x, x_hat)
        x, x_hat = _flat(x), _flat(x_hat)  # [n, d_in]
        n = x.shape[0]
        if n == 0:
            return
        if self._mean is not None and x.shape[1] != self._mean.shape[0]:
            raise ValueError(f"x has width {x.shape[1]} but earlier batches had width {self._mean.shape[0]}")
        error = x - x_hat
        self._add("err_sq", error.pow(2).sum())
        self._add("x_sq", x.pow(2).sum())
        self._add("x_hat_sq", x_hat.pow(2).sum())
        self._add("dot", (x * x_hat).sum())
        self._add("cos", F.cosine_similarity(x, x_hat, dim=-1).sum())

        # Chan et al.: merge (n_a, mean_a, M2_a) with this batch's (n_b, mean_b, M2_b)
        batch_mean = x.mean(0)
        batch_m2 = (x - batch_mean).pow(2).sum(0)
        if self._mean is None or self._m2 is None:
            self._mean, self._m2 = batch_mean, batch_m2
        else:
            n_a, delta = self.n_tokens, batch_mean - self._mean
            total = n_a + n
            self._mean = self._mean + delta * (n / total)
            self._m2 = self._m2 + batch_m2 + delta.pow(2) * (n_a * n / total)

        if f is not None:
            active = f.reshape(-1, f.shape[-1]) != 0  # [n, d_sae]
            if active.shape[0] != n:
                raise ValueError(f"f has {active.shape[0]} tokens but x has {n}")
            if self._active is not None and active.shape[1] != self._active.shape[0]:
                raise ValueError(f"f has width {active.shape[1]} but earlier batches had {self._active.shape[0]}")
            self._add("l0", active.sum().double())
            counts = active.sum(0)
            self._active = counts if self._active is None else self._active + counts
        self.n_tokens += n

    def compute(self) -> dict:
        """All metrics over every token seen so far (floats, plus the [d_sae] frequency tensor)."""
        if self.n_tokens == 0 or self._mean is None or self._m2 is None:
            raise ValueError("MetricsAccumulator.compute() called before any update() with tokens")
        s = {k: v.item() for k, v in self._sums.items()}
        n, d_in = self.n_tokens, self._mean.shape[0]
        fvu = s["err_sq"] / self._m2.sum().item()
        out: dict[str, float | int | torch.Tensor] = {
            "n_tokens": n,
            "mse": s["err_sq"] / (n * d_in),
            "fvu": fvu,
            "explained_variance": 1.0 - fvu,
            "cosine_similarity": s["cos"] / n,
            "relative_reconstruction_bias": _gamma(s["x_hat_sq"], s["dot"]),
            "relative_reconstruction_bias_v1": _gamma_v1(s["x_hat_sq"], s["x_sq"], s["err_sq"]),
        }
        if self._active is not None:
            frequencies = (self._active.double() / n).cpu()
            out.update(
                l0=s["l0"] / n,
                feature_frequencies=frequencies,
                dead_features=dead_features(frequencies),
                dense_features=dense_features(frequencies, self.dense_threshold),
                d_sae=frequencies.shape[0],
            )
        return out


def _batches(data: torch.Tensor | Iterable[torch.Tensor], batch_size: int) -> Iterable[torch.Tensor]:
    if isinstance(data, torch.Tensor):
        flat = data.reshape(-1, data.shape[-1])
        return flat.split(batch_size)
    return data


@torch.no_grad()
def evaluate_sae(
    sae: SAE,
    data: torch.Tensor | Iterable[torch.Tensor],
    *,
    batch_size: int = 4096,
    max_tokens: int | None = None,
    dense_threshold: float = DENSE_THRESHOLD,
) -> dict:
    """Run `sae` over `data` (a [tokens, d_in] tensor, split into `batch_size` rows, or any iterable of
    [batch, d_in] tensors) in one pass and return every metric of `MetricsAccumulator.compute()`.

    Batches are moved to the SAE's device and dtype; `max_tokens` stops early (the last batch is cut).
    """
    check_positive("batch_size", batch_size, integer=True)
    if max_tokens is not None:
        check_positive("max_tokens", max_tokens, integer=True)
    param = next(sae.parameters())
    acc = MetricsAccumulator(dense_threshold)
    was_training = sae.training
    sae.eval()
    try:
        for x in _batches(data, batch_size):
            x = x.reshape(-1, x.shape[-1]).to(device=param.device, dtype=param.dtype)
            if max_tokens is not None:
                x = x[: max_tokens - acc.n_tokens]
            f = sae.encode(x)  # [batch, d_sae]
            acc.update(x, sae.decode(f), f)
            if max_tokens is not None and acc.n_tokens >= max_tokens:
                break
    finally:
        sae.train(was_training)
    return acc.compute()
