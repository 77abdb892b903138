"""Probe-study utilities: last-token states, logistic-regression probes, active-feature counts, hub loader."""
import time

import pytest
import torch

from saelib.data.corpus import HELD_OUT_TEMPLATE, probe_slice
from saelib.data.registry import load_model, tokenize_padded
from saelib.eval.probe import (
    CV_CS,
    count_active_features,
    fit_probe,
    last_token_states,
    last_token_states_from_tokens,
    load_hub_sentiment,
    mcnemar,
    probe_sae,
    probe_study,
    reconstruction_error,
    resid_post_hooks,
)
from saelib.models.relu import ReLUSAE

# The raw-state probe at the last layer must reach this held-out accuracy on the embedded probe slice
# (300 test examples, balanced: chance is 0.5). Measured 0.80 (train 0.90) with the first shipped model;
# 0.70 is ~7 standard errors above chance and leaves room for a retrained model.
MIN_RAW_TEST_ACCURACY = 0.70


@pytest.fixture(scope="module")
def model():
    return load_model("embedded")


@pytest.fixture(scope="module")
def data():
    return probe_slice(n=1200, seed=1234)


def test_count_active_features():
    codes = torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.5], [0.0, 0.0, 0.0, 0.0]])
    assert count_active_features(codes) == 2
    assert count_active_features(torch.zeros(5, 7)) == 0


def test_fit_probe_raw_and_pca():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 20, generator=g)
    y = (x[:, 0] > 0).long()
    x[:, 5:] *= 10                                            # high-variance noise dims dominate the PCs
    result = fit_probe(x[:300], y[:300], x[300:], y[300:])
    assert result.test_accuracy > 0.9 and result.train_accuracy > 0.9
    top_pcs = fit_probe(x[:300], y[:300], x[300:], y[300:], n_components=3)
    assert top_pcs.test_accuracy < 0.7                        # the signal is in a low-variance direction
    with pytest.raises(ValueError, match="n_components=0"):
        fit_probe(x[:300], y[:300], x[300:], y[300:], n_components=0)


def test_last_token_states_read_the_last_real_token(model):
    texts = ["Review: The plot was good. Sentiment:", "Review: Bad. Sentiment:", "A film."]
    tokens, lengths = tokenize_padded(model, texts)
    hooks = ["blocks.1.hook_resid_post", "blocks.0.attn.hook_z"]
    states = last_token_states_from_tokens(model, tokens, lengths, hooks, batch_size=2)
    for i, text in enumerate(texts):                          # each text alone, unpadded
        alone, n = tokenize_padded(model, [text])
        _, cache = model.run_with_cache(alone)
        for hook in hooks:
            torch.testing.assert_close(states[hook][i], cache[hook][0, n[0] - 1].flatten(), rtol=1e-5, atol=1e-5)
    assert states["blocks.0.attn.hook_z"].shape == (3, model.cfg.n_heads * model.cfg.d_head)


def test_raw_last_layer_probe_beats_chance(model, data):
    last = resid_post_hooks(model)[-1]
    states = last_token_states(model, data.train_texts + data.test_texts, [last])[last]
    n = len(data.train_texts)
    result = fit_probe(states[:n], data.train_labels, states[n:], data.test_labels)
    assert len(data.test_labels) >= 250
    assert result.test_accuracy >= MIN_RAW_TEST_ACCURACY, result


def test_probe_study_with_saes(model):
    small = probe_slice(n=300, seed=7)
    d = model.cfg.d_model
    torch.manual_seed(0)
    some = ReLUSAE(d, 64)                                     # random directions: features fire on some examples
    silent = ReLUSAE(d, 64)
    with torch.no_grad():
        silent.b_enc.fill_(-1e6)                              # no feature ever fires
    saes = {"blocks.0.hook_resid_post": silent, "blocks.2.hook_resid_post": some}
    rows = probe_study(model, small, saes=saes, scales={"blocks.2.hook_resid_post": 0.1})
    assert [r.hook_name for r in rows] == list(saes)
    assert rows[0].n_active_features == 0 and rows[0].n_components == 1
    assert rows[0].sae.train_accuracy <= 0.6                   # constant codes: a majority-class probe
    assert 0 < rows[1].n_active_features <= 64 and rows[1].n_components == rows[1].n_active_features
    for row in rows:
        for result in (row.raw, row.sae, row.pca):
            assert 0.0 <= result.test_accuracy <= 1.0
        assert set(row.as_row()) >= {"raw_test", "sae_test", "pca_test", "n_active_features"}
    only_raw = probe_study(model, small, hook_names=resid_post_hooks(model))
    assert len(only_raw) == model.cfg.n_layers and all(r.sae is None for r in only_raw)


def test_hub_loader_fails_fast_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(ConnectionError, match="not reachable.*probe_slice"):
        load_hub_sentiment("imdb", n=100)
    assert time.perf_counter() - start < 5.0
    with pytest.raises(ValueError, match="name='yelp'.*'imdb'.*'sst2'"):
        load_hub_sentiment("yelp")


def test_mcnemar_counts_only_discordant_examples():
    import numpy as np

    a = np.array([True] * 8 + [False] * 2 + [True] * 50 + [False] * 40)      # 8 a-only, 2 b-only, 90 ties
    b = np.array([False] * 8 + [True] * 2 + [True] * 50 + [False] * 40)
    out = mcnemar(a, b)
    assert (out["a_only"], out["b_only"]) == (8, 2)
    assert out["difference"] == pytest.approx(0.06)
    assert out["p_value"] == pytest.approx(2 * (1 + 10 + 45) / 2 ** 10)     # exact two-sided binomial, n = 10
    assert mcnemar(a, a)["p_value"] == 1.0
    with pytest.raises(ValueError, match="same non-zero length"):
        mcnemar(a, b[:5])


def test_cross_validated_probe_records_its_choice_and_test_predictions():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(600, 30, generator=g)
    y = (x[:, 0] + 0.3 * torch.randn(600, generator=g) > 0).long()
    result = fit_probe(x[:400], y[:400], x[400:], y[400:], Cs=CV_CS)
    assert result.C in CV_CS
    assert result.test_correct.shape == (200,) and result.test_correct.mean() == pytest.approx(result.test_accuracy)
    assert result.test_accuracy > 0.85
    noise = fit_probe(torch.randn(400, 30, generator=g), y[:400], x[400:], y[400:], Cs=CV_CS)
    assert noise.test_accuracy < 0.65                                          # labels unrelated to the features


def test_probe_sae_counts_features_and_matches_pca_components(model):
    small = probe_slice(n=200, seed=3, template=HELD_OUT_TEMPLATE)
    hook = "blocks.1.hook_resid_post"
    states = last_token_states(model, small.train_texts + small.test_texts, [hook])[hook]
    torch.manual_seed(0)
    sae = ReLUSAE(model.cfg.d_model, 64)
    result = probe_sae(states, small, sae, scale=0.1, Cs=(0.1, 1.0))
    codes = sae.encode(states * 0.1)
    assert result.n_active_features == count_active_features(codes) > 0
    assert result.n_components == result.n_active_features
    err = reconstruction_error(sae, states * 0.1)
    assert (result.slice_nmse, result.slice_fvu) == (pytest.approx(err["nmse"]), pytest.approx(err["fvu"]))
    assert err["fvu"] > err["nmse"] > 0                     # the slice varies less than its norm: fvu > nmse
    with pytest.raises(ValueError, match="rows"):
        probe_sae(states[:10], small, sae)


def test_reconstruction_error_of_a_perfect_and_a_silent_sae():
    x = torch.randn(100, 8) + 3.0
    silent = ReLUSAE(8, 16)
    with torch.no_grad():
        silent.b_enc.fill_(-1e6)
        silent.b_dec.zero_()
    err = reconstruction_error(silent, x)                    # x_hat = 0: nmse 1, fvu = E||x||^2 / E||x - mean||^2
    assert err["nmse"] == pytest.approx(1.0)
    assert err["fvu"] == pytest.approx(float(x.pow(2).sum(-1).mean() / (x - x.mean(0)).pow(2).sum(-1).mean()), rel=1e-5)
