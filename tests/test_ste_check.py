"""STE-versus-finite-difference checks (saelib.eval.ste_check) and the training-time threshold monitor."""
import copy
import math

import pytest
import torch

from saelib import JumpReLUSAE, ReLUSAE
from saelib.eval.monitor import ThresholdMonitor
from saelib.eval.ste_check import (
    finite_difference_threshold_gradient,
    gradient_agreement,
    perturb_thresholds,
    rectangle_window_terms,
    sparsity_gradient_paths,
    ste_threshold_gradients,
)
from saelib.training.loop import TrainConfig, train_sae


def _sae_and_data(penalty="l0", n=60_000, seed=0):
    """A small JumpReLU SAE whose thresholds sit inside the bulk of its pre-activations."""
    torch.manual_seed(seed)
    x = torch.randn(n, 12, dtype=torch.float64) * torch.linspace(0.2, 1.0, 12, dtype=torch.float64)
    sae = JumpReLUSAE(12, 24, penalty=penalty).double()
    with torch.no_grad():
        z = sae.pre_activations(x[:5000])
        sae.log_threshold.copy_(torch.log(torch.quantile(z, 0.7, dim=0)))   # 30% of tokens active
    return sae, x


def _brute_force_fd(sae, x, lam, h, i):
    """Central difference of the mean loss, computed by actually moving log_threshold[i]."""
    losses = []
    for sign in (1, -1):
        s = copy.deepcopy(sae).eval()
        with torch.no_grad():
            s.log_threshold[i] += sign * h
            losses.append(s.loss(x, lam).loss.item())
    return (losses[0] - losses[1]) / (2 * h)


@pytest.mark.parametrize("penalty", ["l0", "l1"])
def test_vectorised_finite_difference_matches_moving_the_threshold(penalty):
    sae, x = _sae_and_data(penalty, n=5_000)
    lam, h = 0.3, 0.05
    fd, stderr = finite_difference_threshold_gradient(sae, x, lam, h, batch_size=1024)
    for i in (0, 5, 17):
        assert fd[i].item() == pytest.approx(_brute_force_fd(sae, x, lam, h, i), rel=1e-9, abs=1e-12)
    assert torch.all(stderr > 0) and torch.all(stderr < fd.abs().max())


def test_ste_gradient_approximates_the_finite_difference():
    """The STE is a kernel density estimate of d E[L] / d log theta: with a moderate bandwidth on many
    tokens it agrees with a central difference of the true loss (different in every feature)."""
    sae, x = _sae_and_data()
    lam = 0.3
    fd, stderr = finite_difference_threshold_gradient(sae, x, lam, h=0.02)
    ste = ste_threshold_gradients(sae, x, lam, batch_size=6_000, bandwidth=0.02).mean(0)
    assert torch.corrcoef(torch.stack([ste, fd]))[0, 1] > 0.95
    assert (ste - fd).abs().max() < 0.2 * fd.abs().max()
    # and the sign of lambda's contribution: a larger lambda pushes every threshold up (gradient down)
    ste_more = ste_threshold_gradients(sae, x, lam + 1.0, batch_size=6_000, bandwidth=0.02).mean(0)
    assert torch.all(ste_more < ste)


def test_gradient_agreement_reads_correlation_slope_and_noise():
    fd = torch.tensor([1.0, -2.0, 3.0, 0.5, 7.0], dtype=torch.float64)
    stderr = torch.tensor([0.1, 0.1, 0.1, 0.1, 0.0], dtype=torch.float64)   # the last feature is not compared
    noise = torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=torch.float64)[:, None]
    batches = 0.5 * fd + 2.0 * noise * torch.ones(5, dtype=torch.float64)   # mean 0.5 fd, rms sqrt(0.25 fd^2 + 4)
    a = gradient_agreement(batches, fd, stderr)
    assert a["features"] == 4
    assert a["correlation"] == pytest.approx(1.0) and a["slope"] == pytest.approx(0.5)
    snr = (0.5 * fd[:4].abs() / (0.25 * fd[:4] ** 2 + 4).sqrt()).median()
    assert a["step_snr"] == pytest.approx(float(snr))


def test_batch_gradients_average_to_the_full_gradient():
    sae, x = _sae_and_data(n=4_000)
    bandwidths = sae.bandwidths.clone()
    per_batch = ste_threshold_gradients(sae, x, 0.3, batch_size=1_000, bandwidth=0.05)
    assert per_batch.shape == (4, 24)
    full = ste_threshold_gradients(sae, x, 0.3, batch_size=4_000, bandwidth=0.05)[0]
    assert torch.allclose(per_batch.mean(0), full, rtol=1e-9, atol=1e-12)
    assert torch.equal(sae.bandwidths, bandwidths)          # the override is undone


def test_the_l0_term_reaches_only_the_threshold():
    sae, x = _sae_and_data(n=2_000)
    paths = sparsity_gradient_paths(sae, x)
    assert paths["log_threshold"] > 0
    assert all(v == 0.0 for name, v in paths.items() if name != "log_threshold")
    l1_paths = sparsity_gradient_paths(_sae_and_data("l1", n=2_000)[0], x)     # the L1 penalty reaches the encoder
    assert l1_paths["W_enc"] > 0 and l1_paths["b_enc"] > 0
    relu_paths = sparsity_gradient_paths(ReLUSAE(12, 24).double(), x)
    assert relu_paths["W_enc"] > 0


def test_checks_refuse_other_architectures_and_bad_values():
    x = torch.randn(10, 12)
    with pytest.raises(ValueError, match="JumpReLUSAE"):
        finite_difference_threshold_gradient(ReLUSAE(12, 24), x, 0.1, h=0.1)
    with pytest.raises(ValueError, match="h=-0.1"):
        finite_difference_threshold_gradient(JumpReLUSAE(12, 24), x, 0.1, h=-0.1)
    with pytest.raises(ValueError, match="batch_size=20"):
        ste_threshold_gradients(JumpReLUSAE(12, 24), x, 0.1, batch_size=20)


def test_monitor_records_without_changing_training():
    x = torch.randn(2_048, 12)
    cfg = TrainConfig(total_steps=30, batch_size=128, sparsity_coeff=0.1, lr=1e-2, progress=False, device="cpu")
    torch.manual_seed(0)
    plain = JumpReLUSAE(12, 24, theta_init=0.01)
    watched = copy.deepcopy(plain)
    train_sae(plain, x, cfg)
    monitor = ThresholdMonitor(x, watched, every=10, batch_size=cfg.batch_size, seed=cfg.seed)
    train_sae(watched, monitor, cfg)
    assert all(torch.equal(a, b) for a, b in zip(plain.parameters(), watched.parameters(), strict=True))
    assert [r["step"] for r in monitor.records] == [0, 10, 20]
    first = monitor.records[0]
    assert first["theta_q50"] == pytest.approx(0.01) and first["log_theta_mean"] == pytest.approx(math.log(0.01))
    assert 0 <= first["window_fraction"] <= 1 and first["l0"] > 0
    assert monitor.records[-1]["theta_q50"] != pytest.approx(0.01)      # the thresholds moved
    with pytest.raises(ValueError, match="JumpReLUSAE"):
        ThresholdMonitor(x, ReLUSAE(12, 24), batch_size=128)


def test_rectangle_ste_is_the_linearised_finite_difference_over_its_window():
    """eqs. 11-12 with the rectangle kernel = a central difference of the batch loss over (theta -+ eps/2),
    exactly for the L0 term and for the loss linearised in the codes (jump height theta)."""
    sae, x = _sae_and_data(n=3_000)
    lam, eps = 0.3, 0.05
    ste = ste_threshold_gradients(sae, x, lam, batch_size=3_000, bandwidth=eps)[0]
    terms = rectangle_window_terms(sae, x, lam, bandwidth=eps)
    assert terms["in_window"].min() > 10                                    # every feature has tokens inside
    torch.testing.assert_close(ste, terms["linearised"], rtol=1e-10, atol=1e-13)
    sae.bandwidths.fill_(eps)                                               # the L0 term alone, lambda = 1
    sae.zero_grad(set_to_none=True)
    sae.loss(x, 1.0).sparsity.backward()
    torch.testing.assert_close(sae.log_threshold.grad, rectangle_window_terms(sae, x, 1.0)["fd_l0"],
                               rtol=1e-12, atol=1e-14)
    assert not torch.allclose(terms["fd"], terms["linearised"], rtol=1e-3)  # the jump's nonlinearity is real
    assert torch.corrcoef(torch.stack([terms["fd"], terms["linearised"]]))[0, 1] > 0.9


def test_window_finite_difference_matches_moving_the_threshold():
    sae, x = _sae_and_data(n=2_000)
    lam, eps = 0.3, 0.05
    terms = rectangle_window_terms(sae, x, lam, bandwidth=eps)
    theta = sae.threshold.detach()
    for i in (0, 7, 19):
        losses = []
        for sign in (1, -1):
            s = copy.deepcopy(sae).eval()
            with torch.no_grad():
                s.log_threshold[i] = torch.log(theta[i] + sign * eps / 2)
                losses.append(s.loss(x, lam).loss.item())
        brute = theta[i].item() * (losses[0] - losses[1]) / eps                  # d/dlog theta = theta d/dtheta
        assert terms["fd"][i].item() == pytest.approx(brute, rel=1e-9, abs=1e-12)


def test_perturbed_thresholds_move_within_the_spread_and_leave_the_sae_alone():
    sae, _ = _sae_and_data(n=100)
    before = sae.log_threshold.detach().clone()
    moved = perturb_thresholds(sae, spread=0.7, seed=3)
    shift = moved.log_threshold.detach() - before
    assert torch.equal(sae.log_threshold.detach(), before)
    assert shift.abs().max() <= 0.7 and shift.abs().max() > 0.5 and shift.min() < 0 < shift.max()
    assert torch.equal(perturb_thresholds(sae, 0.7, seed=3).log_threshold, moved.log_threshold)
    assert torch.equal(moved.W_enc, sae.W_enc)
    with pytest.raises(ValueError, match="penalty='l1'"):
        rectangle_window_terms(_sae_and_data("l1", n=100)[0], torch.randn(10, 12, dtype=torch.float64), 0.1)
