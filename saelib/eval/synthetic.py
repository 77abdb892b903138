"""Synthetic ground truth: activations built from known sparse features in superposition.

    x = sum_i c_i d_i + b + noise,   c_i = a_i * m_i

n_features unit-norm random directions d_i live in R^d_in with n_features > d_in (superposition).
Feature i fires (a_i = 1) with probability p_i following a power law, p_i ∝ (i + 1)^-exponent, scaled
so that the expected number of active features per token, sum_i p_i, equals `target_l0` (index 0 is
the most frequent feature). An active feature has a positive magnitude m_i drawn from the chosen
distribution. Optional correlations: features are split at random into groups of `group_size`, and
each feature follows its group's shared uniform draw with probability `correlation` (its own
otherwise), so group members co-fire while each marginal p_i stays exact. Gaussian noise and a fixed
offset b (which an SAE's b_dec should learn) are optional.

Because the true directions are known, an SAE's decoder can be scored directly:
feature_recovery(true_directions, W_dec) = mean over true features of the best cosine similarity
with any learned decoder row (swap the arguments for the other direction: how many learned
features are real).

The defaults (d_in 64, 256 features, true L0 8, exponent 0.5, exponential magnitudes, no noise) are
the configuration for the unit tests: small enough for CPU, hard enough that a ReLU SAE shrinks.
Measured recipe (inputs scaled to unit mean squared norm, d_sae 512, 1000 steps of batch 512 drawn
from 200k samples, Adam lr 1e-3, betas (0, 0.999); 5-18 s each on a shared 2-core CPU):
    ReLU   lambda 0.3                                      L0 9.8   gamma 0.83   recovery 0.985
    Gated  lambda 0.3                                      L0 9.7   gamma 0.98   recovery 0.975
    JumpReLU lambda 0.01, theta_init 0.1, bandwidth 0.01  L0 7.4   gamma 1.00   recovery 0.976
    TopK   k 8                                             L0 7.8   gamma 1.00   recovery 0.991
(JumpReLU with the paper's theta_init = bandwidth = 1e-3 needs many more steps here: a typical Adam step on
log_threshold is about lr, so 1000 steps at lr 1e-3 add up to about 1 in log space where ~4 are needed; a rough
reading, not a bound: notebook 03 §3 measures how far thresholds travel.)
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from saelib.validation import check_choice, check_positive, check_range, check_seed

MAGNITUDES = ("exponential", "uniform", "half_normal", "constant")


def _row_chunks(n: int, width: int, elements: int = 1 << 24) -> Iterator[slice]:
    """Consecutive row slices of about `elements` entries each, covering rows 0..n-1."""
    step = max(1, elements // max(1, width))
    for start in range(0, n, step):
        yield slice(start, min(n, start + step))


@dataclass
class SyntheticActivations:
    d_in: int = 64
    n_features: int = 256
    target_l0: float = 8.0                 # expected active features per token, sum_i p_i
    frequency_exponent: float = 0.5        # p_i ∝ (i + 1)^-exponent; 0 gives equal frequencies
    max_frequency: float = 0.5             # cap on any p_i (an always-on feature is just a bias)
    magnitude: str = "exponential"         # one of MAGNITUDES, all positive with mean magnitude_mean
    magnitude_mean: float = 1.0
    group_size: int = 1                    # size of co-firing groups (1: independent features)
    correlation: float = 0.0               # in [0, 1]: chance a feature follows its group's draw
    noise_std: float = 0.0                 # std of isotropic Gaussian noise added to x
    bias_norm: float = 0.0                 # norm of a fixed random offset added to every x
    seed: int = 0

    directions: torch.Tensor = field(init=False, repr=False)   # [n_features, d_in], unit rows
    frequencies: torch.Tensor = field(init=False, repr=False)  # [n_features] firing probabilities p_i
    bias: torch.Tensor = field(init=False, repr=False)         # [d_in]
    group: torch.Tensor = field(init=False, repr=False)        # [n_features] group index of each feature

    def __post_init__(self):
        check_positive("d_in", self.d_in, integer=True)
        check_positive("n_features", self.n_features, integer=True)
        check_range("max_frequency", self.max_frequency, 0.0, 1.0)
        check_positive("max_frequency", self.max_frequency)
        check_positive("target_l0", self.target_l0)
        if self.target_l0 > self.max_frequency * self.n_features:
            raise ValueError(f"target_l0={self.target_l0} is out of range; allowed: at most "
                             f"max_frequency * n_features = {self.max_frequency * self.n_features}")
        check_positive("frequency_exponent", self.frequency_exponent, allow_zero=True)
        check_choice("magnitude", self.magnitude, MAGNITUDES)
        check_positive("magnitude_mean", self.magnitude_mean)
        check_positive("group_size", self.group_size, integer=True)
        check_range("group_size", self.group_size, 1, self.n_features)
        check_range("correlation", self.correlation, 0.0, 1.0)
        check_positive("noise_std", self.noise_std, allow_zero=True)
        check_positive("bias_norm", self.bias_norm, allow_zero=True)
        check_seed(self.seed)

        g = torch.Generator().manual_seed(self.seed)
        self.directions = F.normalize(torch.randn(self.n_features, self.d_in, generator=g), dim=1)
        self.frequencies = self._power_law_frequencies()
        self.bias = F.normalize(torch.randn(self.d_in, generator=g), dim=0) * self.bias_norm
        self.group = torch.randperm(self.n_features, generator=g) // self.group_size
        self._generator = g  # sample() continues this stream: the whole dataset is fixed by seed

    def _power_law_frequencies(self) -> torch.Tensor:
        """p_i = min(max_frequency, c * (i + 1)^-exponent) with c chosen (bisection) so sum p_i = target_l0."""
        weights = torch.arange(1, self.n_features + 1, dtype=torch.float64).pow(-self.frequency_exponent)
        low, high = 0.0, self.max_frequency / weights.min().item()  # at `high` every p_i is capped
        for _ in range(200):
            c = (low + high) / 2
            if (c * weights).clamp(max=self.max_frequency).sum().item() < self.target_l0:
                low = c
            else:
                high = c
        return (high * weights).clamp(max=self.max_frequency).float()

    @property
    def true_l0(self) -> float:
        """Expected number of active true features per token (= target_l0)."""
        return self.frequencies.double().sum().item()

    # ------------------------------------------------------------------------- sampling

    def _magnitudes(self, count: int, g: torch.Generator) -> torch.Tensor:
        mean = self.magnitude_mean
        if self.magnitude == "exponential":
            return torch.empty(count).exponential_(1.0 / mean, generator=g)
        if self.magnitude == "uniform":                     # U(0, 2 * mean)
            return torch.rand(count, generator=g) * (2 * mean)
        if self.magnitude == "half_normal":                 # |N(0, s^2)|, mean s * sqrt(2 / pi)
            return torch.randn(count, generator=g).abs() * (mean * (torch.pi / 2) ** 0.5)
        return torch.full((count,), float(mean))           # constant

    def _draw(self, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Which features fire (a [n, n_features] bool) and their magnitudes (in row-major order of the firing
        entries). a_i = 1[u_i < p_i], u_i the token's own uniform draw or, for correlated groups with
        probability `correlation`, its group's shared draw: still uniform, so p_i is exact."""
        active = self._compare_rows(n, self.n_features, g)                  # 1[u < p], [n, n_features]
        if self.correlation > 0 and self.group_size > 1:
            shared = torch.rand(n, int(self.group.max()) + 1, generator=g)  # one draw per group
            for rows in _row_chunks(n, self.n_features):
                follow = torch.rand(rows.stop - rows.start, self.n_features, generator=g) < self.correlation
                active[rows] = torch.where(follow, shared[rows][:, self.group] < self.frequencies, active[rows])
        return active, self._magnitudes(int(torch.count_nonzero(active)), g)   # c_i = a_i * m_i

    def _compare_rows(self, n: int, width: int, g: torch.Generator) -> torch.Tensor:
        """1[u < p] for u ~ U(0, 1) of shape [n, width], drawn chunk by chunk."""
        active = torch.empty(n, width, dtype=torch.bool)
        for rows in _row_chunks(n, width):
            active[rows] = torch.rand(rows.stop - rows.start, width, generator=g) < self.frequencies
        return active

    def sample(self, n: int, *, seed: int | None = None, return_codes: bool = False):
        """[n, d_in] activations x (and the [n, n_features] true codes c if return_codes).

        Successive calls continue one seeded stream; pass `seed` for a fixed set drawn from an
        independent stream (e.g. held-out evaluation data).

        Memory: the uniforms and the codes are made a row chunk at a time (the same numbers as one [n, n_features]
        draw and one product: the generator fills row by row, and each row of x is its own product), so
        millions of tokens need the [n, n_features] firing mask (one byte per entry) and x, not several float
        copies of the codes."""
        check_positive("n", n, integer=True)
        if seed is not None:
            check_seed(seed)
        g = self._generator if seed is None else torch.Generator().manual_seed(seed)
        active, magnitudes = self._draw(n, g)
        x = torch.empty(n, self.d_in)
        all_codes = torch.zeros(n, self.n_features) if return_codes else None
        used = 0
        for rows in _row_chunks(n, self.n_features):
            fire = active[rows]                                              # [rows, n_features]
            codes = torch.zeros(fire.shape)
            k = int(torch.count_nonzero(fire))
            codes[fire] = magnitudes[used:used + k]
            used += k
            x[rows] = codes @ self.directions                                # [rows, d_in]
            if all_codes is not None:
                all_codes[rows] = codes
        x += self.bias
        if self.noise_std > 0:
            x = x + self.noise_std * torch.randn(n, self.d_in, generator=g)
        return (x, all_codes) if return_codes else x

    def batches(self, batch_size: int, n_batches: int | None = None) -> Iterator[torch.Tensor]:
        """Yield [batch_size, d_in] batches from the seeded stream (forever if n_batches is None)."""
        check_positive("batch_size", batch_size, integer=True)
        if n_batches is not None:
            check_positive("n_batches", n_batches, integer=True)
        i = 0
        while n_batches is None or i < n_batches:
            yield self.sample(batch_size)
            i += 1

    def feature_recovery(self, learned_directions: torch.Tensor) -> float:
        """feature_recovery(self.directions, learned_directions), e.g. with sae.W_dec."""
        return feature_recovery(self.directions, learned_directions)


# ----------------------------------------------------------------------------- scoring

def max_cosine_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[len(a)] for each row of a, its largest cosine similarity with any row of b."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"expected two [n, d] matrices with the same d; got shapes {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    a = F.normalize(a.detach().float().cpu(), dim=1)
    b = F.normalize(b.detach().float().cpu(), dim=1)  # zero rows (dead features) score 0
    return (a @ b.T).max(dim=1).values


def feature_recovery(true_directions: torch.Tensor, learned_directions: torch.Tensor) -> float:
    """Mean over true features of the max cosine similarity with any learned direction (rows).

    Pass an SAE's W_dec [d_sae, d_in] as learned_directions. 1.0 means every true feature has an
    exact learned copy. Swapping the arguments scores the learned features instead."""
    return max_cosine_similarity(true_directions, learned_directions).mean().item()
