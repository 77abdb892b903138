"""Probe-study utilities: last-token states, logistic-regression probes, active-feature counts, hub loader."""
import time

import pytest
import torch

from saelib.data.corpus import probe_slice
from saelib.eval.probe import (count_active_features, fit_probe, last_token_states, last_token_states_from_tokens,
                          load_hub_sentiment, probe_study, resid_post_hooks)
from saelib.data.registry import load_model, tokenize_padded
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
