"""Input normalisation: the two conventions hit their targets, and folding the scale into an SAE is exact."""
import math

import pytest
import torch

from saelib.data.normalization import NORMALIZATIONS, estimate_scale
from saelib.models.relu import ReLUSAE


@pytest.fixture
def x():
    g = torch.Generator().manual_seed(0)
    return 7.0 * torch.randn(5000, 24, generator=g) + 3.0        # [n, d_in], far from unit norm


def test_unit_mean_squared_norm(x):
    s = estimate_scale(x, "unit_mean_squared_norm")
    assert (s * x).pow(2).sum(-1).mean().item() == pytest.approx(1.0, rel=1e-5)


def test_sqrt_d_in_mean_norm(x):
    s = estimate_scale(x, "sqrt_d_in_mean_norm")
    assert (s * x).norm(dim=-1).mean().item() == pytest.approx(math.sqrt(24), rel=1e-5)


def test_none_is_one(x):
    assert estimate_scale(x, "none") == 1.0


def test_chunks_give_the_same_scale(x):
    whole = estimate_scale(x, "unit_mean_squared_norm")
    assert estimate_scale(iter(x.split(333)), "unit_mean_squared_norm") == pytest.approx(whole, rel=1e-12)
    assert estimate_scale(x.half(), "sqrt_d_in_mean_norm") == pytest.approx(
        estimate_scale(x, "sqrt_d_in_mean_norm"), rel=1e-3)


def test_invalid_normalization_names_parameter_and_choices(x):
    with pytest.raises(ValueError, match="normalization='l2'.*unit_mean_squared_norm.*sqrt_d_in_mean_norm"):
        estimate_scale(x, "l2")
    with pytest.raises(ValueError, match="zero"):
        estimate_scale(torch.zeros(10, 4), "unit_mean_squared_norm")
    assert set(NORMALIZATIONS) == {"none", "unit_mean_squared_norm", "sqrt_d_in_mean_norm"}


def test_folded_sae_acts_on_raw_inputs(x):
    """An SAE trained on s*x, folded with SAE.fold_input_scaling(s), gives on x the same codes and x_hat/s."""
    torch.manual_seed(0)
    sae = ReLUSAE(24, 64)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.1)
    s = estimate_scale(x, "unit_mean_squared_norm")
    f_scaled, x_hat_scaled = sae.encode(s * x), sae(s * x)
    sae.fold_input_scaling(s)
    torch.testing.assert_close(sae.encode(x), f_scaled, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(sae(x), x_hat_scaled / s, rtol=1e-4, atol=1e-4)
