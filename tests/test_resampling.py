"""Resampling dead features (Anthropic): the new directions, the loss^2 sampling, and revived features."""
import pytest
import torch
from torch import nn

from saelib import GatedSAE, JumpReLUSAE, ReLUSAE
from saelib.training.loop import TrainConfig, train_sae
from saelib.training.resampling import ENCODER_SCALE, DeadFeatureTracker, resample_dead_features, sample_inputs_by_loss


def _adam_with_state(sae):
    opt = torch.optim.Adam(sae.parameters(), lr=1e-3)
    for p in sae.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    return opt


def test_dead_features_get_the_anthropic_directions_and_fresh_adam_state():
    torch.manual_seed(0)
    sae = ReLUSAE(8, 32)
    opt = _adam_with_state(sae)
    dead = torch.zeros(32, dtype=torch.bool)
    dead[[1, 5, 30]] = True
    inputs = torch.randn(3, 8) * 4
    before = {n: p.detach().clone() for n, p in sae.named_parameters()}
    moments_before = {n: opt.state[p]["exp_avg"].clone() for n, p in sae.named_parameters()}
    alive_norm = sae.W_enc[:, ~dead].norm(dim=0).mean()

    assert resample_dead_features(sae, opt, dead, inputs) == 3
    unit = inputs / inputs.norm(dim=1, keepdim=True)
    assert torch.allclose(sae.W_dec[dead], unit)                                     # decoder: x / ||x||
    assert torch.allclose(sae.W_enc[:, dead].T, ENCODER_SCALE * alive_norm * unit)    # 0.2 x mean alive norm
    assert (sae.b_enc[dead] == 0).all()
    for name, p in sae.named_parameters():
        feature_dim = 1 if name == "W_enc" else 0
        m = opt.state[p]["exp_avg"]
        if name != "b_dec":
            assert (m.index_select(feature_dim, dead.nonzero().squeeze(1)) == 0).all()   # reset
            keep = (~dead).nonzero().squeeze(1)
            assert torch.equal(m.index_select(feature_dim, keep),
                               moments_before[name].index_select(feature_dim, keep))
            assert torch.equal(p.index_select(feature_dim, keep), before[name].index_select(feature_dim, keep))
        else:
            assert torch.equal(p, before[name]) and torch.equal(m, moments_before[name])
    with torch.no_grad():                                                            # each fires on its input
        f = sae.encode(inputs)
    assert (f[torch.arange(3), dead.nonzero().squeeze(1)] > 0).all()


@pytest.mark.parametrize("mag_weights, mag_bias", [("r_mag", "free"), ("untied", "free"), ("r_mag", "tied")])
def test_gated_resampling_resets_the_magnitude_path(mag_weights, mag_bias):
    torch.manual_seed(0)
    sae = GatedSAE(8, 16, mag_weights=mag_weights, mag_bias=mag_bias)
    opt = _adam_with_state(sae)
    dead = torch.zeros(16, dtype=torch.bool)
    dead[[0, 7]] = True
    resample_dead_features(sae, opt, dead, torch.randn(2, 8))
    assert (sae.b_gate[dead] == 0).all() and (sae.magnitude_bias()[dead] == 0).all()
    if mag_weights == "r_mag":
        assert (sae.r_mag[dead] == 0).all() and (sae.r_mag[~dead] != 0).all()
    else:
        assert torch.equal(sae.W_mag[:, dead], sae.W_gate[:, dead])


def test_models_without_an_encoder_cannot_be_resampled():
    class Odd(nn.Module):
        W_dec = nn.Parameter(torch.zeros(4, 2))
    with pytest.raises(ValueError, match="W_enc/b_enc"):
        resample_dead_features(Odd(), None, torch.ones(4, dtype=torch.bool), torch.randn(4, 2))


class _Zero(nn.Module):
    """Reconstructs nothing, so an input's loss is ||x||^2."""

    def __init__(self):
        super().__init__()
        self.W_dec = nn.Parameter(torch.zeros(1, 2))

    def forward(self, x):
        return torch.zeros_like(x)


def test_inputs_are_sampled_with_probability_proportional_to_loss_squared():
    # two inputs with losses 1 and 4 (norms 1 and 2): P(second) = 16 / 17 under loss^2 (loss: 4/5)
    pool = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    sae, trials = _Zero(), 3000
    hits = 0
    for seed in range(trials):
        g = torch.Generator().manual_seed(seed)
        chosen = sample_inputs_by_loss(sae, lambda: pool, n_batches=1, k=1, generator=g)
        hits += int(chosen[0, 1] == 2.0)
    assert abs(hits / trials - 16 / 17) < 0.015, hits / trials


def test_sampling_is_without_replacement_over_a_stream_of_batches():
    batches = iter(torch.arange(60.0).reshape(6, 5, 2) + 1)                     # 6 batches of 5 inputs
    chosen = sample_inputs_by_loss(_Zero(), lambda: next(batches), n_batches=6, k=12,
                                   generator=torch.Generator().manual_seed(0))
    assert chosen.shape == (12, 2) and len(set(chosen[:, 0].tolist())) == 12
    assert chosen[:, 0].mean() > 30                                              # large inputs preferred


def test_tracker_marks_features_that_never_fired():
    tracker = DeadFeatureTracker(4, torch.device("cpu"))
    tracker.update(torch.tensor([0.0, 1.0, 0.0, 0.0]))          # each feature's max over a batch
    tracker.update(torch.tensor([0.0, 0.0, 2.0, 0.0]))
    assert tracker.dead_mask().tolist() == [True, False, False, True]
    tracker.reset()
    assert tracker.dead_mask().all()


@pytest.mark.parametrize("resample", [True, False])
def test_training_with_resampling_revives_dead_features(resample):
    torch.manual_seed(0)
    data = torch.randn(2048, 16)
    sae = ReLUSAE(16, 64, resample=resample)
    with torch.no_grad():
        sae.b_enc[:20] = -100.0                                                 # 20 features can never fire
    cfg = TrainConfig(total_steps=60, batch_size=128, lr=1e-3, sparsity_coeff=1e-3, resample_every=25,
                      resample_window=10, resample_pool=1024, lr_warmup_steps=10, log_every=10, progress=False)
    hist = train_sae(sae, data, cfg)
    with torch.no_grad():
        fires = (sae.encode(data) > 0).any(0)                                   # [d_sae]
    if resample:
        assert fires[:20].all(), f"still dead: {(~fires[:20]).sum()} of 20"
        assert sum(h["n_resampled"] for h in hist) >= 20
        assert hist[1]["lr"] == cfg.lr                                          # warm-up over by step 20
        assert hist[2]["lr"] == pytest.approx(0.5 * cfg.lr)                     # re-applied after step 25
    else:
        assert not fires[:20].any() and sum(h["n_resampled"] for h in hist) == 0


def test_jumprelu_does_not_ask_for_resampling():
    assert not JumpReLUSAE(4, 8).wants_resampling
