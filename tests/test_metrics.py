import math

import pytest
import torch

from saelib.eval.metrics import (
    MetricsAccumulator,
    cosine_similarity,
    dead_features,
    dense_features,
    evaluate_sae,
    explained_variance,
    feature_frequencies,
    fraction_of_variance_unexplained,
    l0,
    mse,
    relative_reconstruction_bias,
    relative_reconstruction_bias_v1,
)


def _random_pair(n=257, d=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g) + 3.0
    x_hat = 0.8 * x + 0.3 * torch.randn(n, d, generator=g)
    f = torch.relu(torch.randn(n, 40, generator=g) - 1.0)
    f[:, 5] = 0.0                                   # a dead feature
    f[:, 7] = torch.rand(n, generator=g) + 0.1      # a dense feature
    return x, x_hat, f


# ----------------------------------------------------------------------------- relative reconstruction bias

def test_gamma_paper_check_x_one_x_hat_half():
    # Gated paper (arXiv 2404.16014): the corrected gamma gives 1/2 for x = 1, x_hat = 1/2; the first
    # version's eq. 10 gives 1/sqrt(3) (docs/design.md §1)
    x = torch.ones(10, 4)
    x_hat = torch.full((10, 4), 0.5)
    assert relative_reconstruction_bias(x, x_hat) == pytest.approx(0.5, abs=1e-12)
    assert relative_reconstruction_bias_v1(x, x_hat) == pytest.approx(1 / math.sqrt(3), abs=1e-12)


@pytest.mark.parametrize("c", [0.3, 0.7, 1.0, 1.25])
def test_gamma_of_scaled_reconstruction_is_exactly_c(c):
    x = torch.randn(500, 16, generator=torch.Generator().manual_seed(1))
    gamma = relative_reconstruction_bias(x, c * x)
    assert gamma == pytest.approx(c, rel=1e-6)
    # and it is the argmin over g of E||x_hat/g - x||^2: nearby scales do worse
    def loss(g):
        return ((c * x / g - x) ** 2).sum(-1).mean().item()
    assert loss(gamma) <= min(loss(gamma * 1.01), loss(gamma * 0.99))
    # the first-version formula gives sqrt(c / (2 - c)) instead
    assert relative_reconstruction_bias_v1(x, c * x) == pytest.approx(math.sqrt(c / (2 - c)), rel=1e-6)


def test_gamma_and_v1_coincide_without_shrinkage_and_differ_with_it():
    x, x_hat, _ = _random_pair()
    assert relative_reconstruction_bias(x, x) == pytest.approx(1.0, abs=1e-12)
    assert relative_reconstruction_bias_v1(x, x) == pytest.approx(1.0, abs=1e-12)
    assert relative_reconstruction_bias(x, x_hat) != pytest.approx(relative_reconstruction_bias_v1(x, x_hat), abs=1e-3)


def test_gamma_closed_form_matches_alternative_expression():
    # gamma = 2 E||x_hat||^2 / (E||x_hat||^2 + E||x||^2 - E||x_hat - x||^2)
    x, x_hat, _ = _random_pair(seed=3)
    a, b, e = (x_hat ** 2).sum(), (x ** 2).sum(), ((x_hat - x) ** 2).sum()
    alt = (2 * a / (a + b - e)).item()
    assert relative_reconstruction_bias(x, x_hat) == pytest.approx(alt, rel=1e-5)


def test_v1_is_nan_when_its_denominator_is_not_positive():
    x = torch.ones(4, 3)
    assert math.isnan(relative_reconstruction_bias_v1(x, -2 * x))


# ----------------------------------------------------------------------------- fidelity and sparsity

def test_fvu_of_mean_predictor_is_one_and_of_perfect_is_zero():
    x, _, _ = _random_pair()
    mean_pred = x.mean(0, keepdim=True).expand_as(x)
    assert fraction_of_variance_unexplained(x, mean_pred) == pytest.approx(1.0, abs=1e-12)
    assert explained_variance(x, mean_pred) == pytest.approx(0.0, abs=1e-12)
    assert fraction_of_variance_unexplained(x, x) == 0.0


def test_mse_cosine_by_hand():
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    x_hat = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    assert mse(x, x_hat) == pytest.approx((1 + 1 + 0 + 1) / 4)
    assert cosine_similarity(x, x_hat) == pytest.approx((0.0 + 1.0) / 2)


def test_l0_frequencies_dead_dense_by_hand():
    f = torch.tensor([[0.0, 1.0, 2.0, 0.0],
                      [0.0, 0.5, 0.0, 0.0],
                      [0.0, 3.0, 0.0, 0.0],
                      [0.0, 1.0, 0.0, 0.0]])
    assert l0(f) == pytest.approx((2 + 1 + 1 + 1) / 4)
    freqs = feature_frequencies(f)
    assert freqs.tolist() == [0.0, 1.0, 0.25, 0.0]
    assert dead_features(freqs) == 2
    assert dense_features(freqs) == 2                  # > 10%
    assert dense_features(freqs, threshold=0.5) == 1


def test_shape_mismatch_is_a_value_error():
    with pytest.raises(ValueError, match="x_hat"):
        mse(torch.zeros(3, 4), torch.zeros(3, 5))
    with pytest.raises(ValueError, match="threshold"):
        dense_features(torch.zeros(3), threshold=2.0)


# ----------------------------------------------------------------------------- streaming

def test_streaming_equals_one_shot():
    x, x_hat, f = _random_pair(n=1000, seed=5)
    x = x + 1e4  # a large offset: the running variance must not cancel catastrophically
    x_hat = x_hat + 1e4
    acc = MetricsAccumulator()
    for sl in [slice(0, 1), slice(1, 300), slice(300, 301), slice(301, 1000)]:  # uneven batches
        acc.update(x[sl], x_hat[sl], f[sl])
    out = acc.compute()
    assert out["n_tokens"] == 1000
    assert out["mse"] == pytest.approx(mse(x, x_hat), rel=1e-9)
    assert out["fvu"] == pytest.approx(fraction_of_variance_unexplained(x, x_hat), rel=1e-6)
    assert out["explained_variance"] == pytest.approx(explained_variance(x, x_hat), rel=1e-6)
    assert out["cosine_similarity"] == pytest.approx(cosine_similarity(x, x_hat), rel=1e-9)
    assert out["relative_reconstruction_bias"] == pytest.approx(relative_reconstruction_bias(x, x_hat), rel=1e-9)
    assert out["relative_reconstruction_bias_v1"] == pytest.approx(relative_reconstruction_bias_v1(x, x_hat), rel=1e-9)
    assert out["l0"] == pytest.approx(l0(f), rel=1e-12)
    assert torch.equal(out["feature_frequencies"], feature_frequencies(f))
    assert out["dead_features"] == dead_features(feature_frequencies(f)) >= 1
    assert out["dense_features"] == dense_features(feature_frequencies(f)) >= 1


def test_streaming_float32_large_offset_fvu_is_accurate():
    # one-shot in float64 as the reference; streamed float32 batches must agree closely
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(4096, 8, generator=g, dtype=torch.float64) * 0.01 + 100.0)
    x_hat = x + 0.005 * torch.randn(4096, 8, generator=g, dtype=torch.float64)
    ref = fraction_of_variance_unexplained(x, x_hat)
    acc = MetricsAccumulator()
    for xb, xhb in zip(x.split(512), x_hat.split(512), strict=True):
        acc.update(xb, xhb)
    assert acc.compute()["fvu"] == pytest.approx(ref, rel=1e-6)
    assert "l0" not in acc.compute()  # no codes given


def test_accumulator_errors():
    acc = MetricsAccumulator()
    with pytest.raises(ValueError, match="before any update"):
        acc.compute()
    acc.update(torch.zeros(2, 3), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="width"):
        acc.update(torch.zeros(2, 4), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="tokens"):
        acc.update(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(3, 5))


class _ScaledIdentitySAE(torch.nn.Module):
    """f = relu(x) (d_sae = d_in), x_hat = c * f: a stand-in with known shrinkage."""

    def __init__(self, c):
        super().__init__()
        self.c = torch.nn.Parameter(torch.tensor(float(c)))

    def encode(self, x):
        return torch.relu(x)

    def decode(self, f):
        return self.c * f


def test_evaluate_sae_tensor_and_iterable_agree_and_respect_max_tokens():
    x = torch.rand(1000, 6, generator=torch.Generator().manual_seed(2))  # non-negative: relu(x) = x
    sae = _ScaledIdentitySAE(0.75)
    sae.train()
    out = evaluate_sae(sae, x, batch_size=128)
    assert sae.training  # mode restored
    assert out["relative_reconstruction_bias"] == pytest.approx(0.75, rel=1e-6)
    assert out["l0"] == pytest.approx(l0(x))
    out_iter = evaluate_sae(sae, iter(x.split(333)))
    for key in ("fvu", "l0", "relative_reconstruction_bias", "cosine_similarity"):
        assert out_iter[key] == pytest.approx(out[key], rel=1e-9)
    capped = evaluate_sae(sae, iter(x.split(333)), max_tokens=400)
    assert capped["n_tokens"] == 400
    assert capped["mse"] == pytest.approx(mse(x[:400], 0.75 * x[:400]), rel=1e-6)


def test_evaluate_real_sae_runs_without_grad():
    from saelib.models.relu import ReLUSAE
    sae = ReLUSAE(d_in=8, d_sae=32)
    x = torch.randn(300, 8, generator=torch.Generator().manual_seed(0))
    out = evaluate_sae(sae, x, batch_size=64)
    assert out["d_sae"] == 32 and out["n_tokens"] == 300
    f = sae.encode(x).detach()
    x_hat = sae.decode(f).detach()
    assert out["fvu"] == pytest.approx(fraction_of_variance_unexplained(x, x_hat), rel=1e-5)
    assert out["l0"] == pytest.approx(l0(f), rel=1e-9)
    assert all(p.grad is None for p in sae.parameters())
