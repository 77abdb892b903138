import pytest
import torch

from saelib.eval.synthetic import MAGNITUDES, SyntheticActivations, feature_recovery, max_cosine_similarity


def test_default_configuration_shapes_and_frequencies():
    data = SyntheticActivations()
    assert (data.d_in, data.n_features) == (64, 256)
    assert data.directions.shape == (256, 64)
    assert torch.allclose(data.directions.norm(dim=1), torch.ones(256), atol=1e-6)
    p = data.frequencies
    assert data.true_l0 == pytest.approx(8.0, rel=1e-6)
    assert torch.all(p[:-1] >= p[1:])  # index 0 is the most frequent
    # power law: p_i (i+1)^0.5 constant where not capped
    assert torch.allclose(p * torch.arange(1, 257).float().sqrt(), p[0].expand(256), rtol=1e-5)


def test_frequency_cap_binds_and_l0_still_exact():
    data = SyntheticActivations(n_features=100, target_l0=10, frequency_exponent=2.0, max_frequency=0.3)
    assert data.frequencies.max().item() == pytest.approx(0.3)
    assert (data.frequencies == data.frequencies.max()).sum() > 1  # several features capped
    assert data.true_l0 == pytest.approx(10.0, rel=1e-6)


def test_sampled_l0_and_reconstruction_from_codes():
    data = SyntheticActivations(bias_norm=2.0)
    x, codes = data.sample(20000, return_codes=True, seed=0)
    l0 = (codes > 0).sum(1).float().mean().item()
    assert abs(l0 - data.true_l0) < 0.1  # std of the mean is ~0.02
    assert torch.all(codes >= 0)
    assert data.bias.norm().item() == pytest.approx(2.0, rel=1e-6)
    assert torch.allclose(x, codes @ data.directions + data.bias, atol=1e-5)
    # empirical per-feature frequencies follow p_i
    freq = (codes > 0).float().mean(0)
    assert torch.allclose(freq[:10], data.frequencies[:10], atol=0.015)


def test_seeding():
    a, b = SyntheticActivations(seed=3), SyntheticActivations(seed=3)
    assert torch.equal(a.directions, b.directions)
    assert torch.equal(a.sample(100), b.sample(100))
    assert torch.equal(a.sample(100), b.sample(100))     # the streams stay in step
    assert not torch.equal(a.sample(100), a.sample(100))  # ...and move on
    c = SyntheticActivations(seed=4)
    assert not torch.equal(a.directions, c.directions)
    # a fixed held-out set does not depend on where the stream is
    assert torch.equal(a.sample(50, seed=9), SyntheticActivations(seed=3).sample(50, seed=9))
    batches = list(SyntheticActivations(seed=3).batches(10, n_batches=3))
    assert len(batches) == 3 and all(bt.shape == (10, 64) for bt in batches)
    assert torch.equal(batches[0], SyntheticActivations(seed=3).sample(10))


@pytest.mark.parametrize("magnitude", MAGNITUDES)
def test_magnitude_distributions_are_positive_with_the_requested_mean(magnitude):
    data = SyntheticActivations(magnitude=magnitude, magnitude_mean=2.5, target_l0=20)
    _, codes = data.sample(5000, return_codes=True, seed=1)
    active = codes[codes > 0]
    assert active.numel() > 50000
    assert torch.all(active > 0)
    assert active.mean().item() == pytest.approx(2.5, rel=0.03)


def test_correlated_groups_cofire_but_marginals_are_unchanged():
    kwargs = dict(n_features=64, d_in=16, target_l0=8, frequency_exponent=0.0, group_size=4)
    indep = SyntheticActivations(**kwargs)
    corr = SyntheticActivations(**kwargs, correlation=0.9)
    _, ci = indep.sample(40000, return_codes=True, seed=0)
    _, cc = corr.sample(40000, return_codes=True, seed=0)
    ai, ac = (ci > 0).float(), (cc > 0).float()
    # marginals: every p_i = 8/64 = 0.125 either way
    assert torch.allclose(ac.mean(0), torch.full((64,), 0.125), atol=0.01)
    # pairs in the same group: P(both) = rho^2 p + (1 - rho^2) p^2 ~ 0.104 instead of p^2 ~ 0.016
    members = torch.nonzero(corr.group == corr.group[0]).flatten()
    i, j = members[0], members[1]
    both_corr = (ac[:, i] * ac[:, j]).mean().item()
    both_indep = (ai[:, i] * ai[:, j]).mean().item()
    assert both_corr == pytest.approx(0.81 * 0.125 + 0.19 * 0.125 ** 2, abs=0.01)
    assert both_indep == pytest.approx(0.125 ** 2, abs=0.005)
    # groups are a partition into groups of group_size
    assert torch.equal(torch.bincount(corr.group), torch.full((16,), 4))


def test_noise_level():
    data = SyntheticActivations(noise_std=0.3)
    x, codes = data.sample(4000, return_codes=True, seed=2)
    residual = x - codes @ data.directions - data.bias
    assert residual.std().item() == pytest.approx(0.3, rel=0.03)


def test_feature_recovery():
    data = SyntheticActivations(n_features=128, d_in=32)
    true = data.directions
    perm = torch.randperm(128, generator=torch.Generator().manual_seed(0))
    # the true directions, shuffled and rescaled
    scaled = true[perm] * (torch.rand(128, 1, generator=torch.Generator().manual_seed(2)) * 5 + 0.01)
    assert feature_recovery(true, scaled) == pytest.approx(1.0, abs=1e-5)
    assert data.feature_recovery(scaled) == pytest.approx(1.0, abs=1e-5)
    # half the features learned (plus dead zero rows): true->learned drops, learned->true stays 1
    half = torch.cat([true[:64], torch.zeros(10, 32)])
    per_feature = max_cosine_similarity(true, half)
    assert torch.allclose(per_feature[:64], torch.ones(64), atol=1e-5)
    assert per_feature[64:].max() < 0.95
    assert feature_recovery(true[:64], true[:64]) == pytest.approx(1.0, abs=1e-5)
    # random directions in 32 dims do far worse
    random = torch.randn(128, 32, generator=torch.Generator().manual_seed(1))
    assert feature_recovery(true, random) < 0.7
    with pytest.raises(ValueError, match="shapes"):
        feature_recovery(true, torch.zeros(10, 31))


@pytest.mark.parametrize("kwargs, name", [
    (dict(d_in=0), "d_in"),
    (dict(n_features=-1), "n_features"),
    (dict(target_l0=0), "target_l0"),
    (dict(target_l0=200), "target_l0"),           # > max_frequency * n_features = 128
    (dict(frequency_exponent=-1), "frequency_exponent"),
    (dict(magnitude="gamma"), "magnitude"),
    (dict(magnitude_mean=0), "magnitude_mean"),
    (dict(correlation=1.5), "correlation"),
    (dict(group_size=0), "group_size"),
    (dict(noise_std=-0.1), "noise_std"),
    (dict(max_frequency=1.5), "max_frequency"),
    (dict(seed=1.5), "seed"),
])
def test_invalid_settings_name_the_parameter(kwargs, name):
    with pytest.raises(ValueError, match=name):
        SyntheticActivations(**kwargs)


@pytest.mark.parametrize("kwargs", [{}, {"correlation": 0.5, "group_size": 4, "noise_std": 0.1}])
def test_sampling_in_row_chunks_equals_one_draw_and_one_product(kwargs, monkeypatch):
    """Uniforms, codes and x are made a row chunk at a time (memory); they must equal the plain version: one
    [n, n_features] draw of each, codes by one masked assignment, x by one product."""
    import saelib.eval.synthetic as synthetic

    data = SyntheticActivations(seed=3, n_features=32, d_in=8, **kwargs)
    g = torch.Generator().manual_seed(11)                      # the plain version
    u = torch.rand(1000, 32, generator=g)
    if "correlation" in kwargs:
        shared = torch.rand(1000, int(data.group.max()) + 1, generator=g)
        u = torch.where(torch.rand(1000, 32, generator=g) < 0.5, shared[:, data.group], u)
    active = u < data.frequencies
    codes = torch.zeros(1000, 32)
    codes[active] = torch.empty(int(active.sum())).exponential_(1.0 / data.magnitude_mean, generator=g)
    x = codes @ data.directions + data.bias
    if "noise_std" in kwargs:
        x = x + 0.1 * torch.randn(1000, 8, generator=g)
    chunks = synthetic._row_chunks
    monkeypatch.setattr(synthetic, "_row_chunks", lambda n, width: chunks(n, width, elements=32 * 77))
    got_x, got_codes = data.sample(1000, seed=11, return_codes=True)          # 13 chunks of 77 rows
    assert torch.equal(got_codes, codes) and torch.equal(got_x, x)
    assert torch.equal(data.sample(1000, seed=11), x)
