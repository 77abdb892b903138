"""Models by name: the embedded one offline, hub ones failing fast offline; one tokenization for all."""
import time

import pytest
import torch

from saelib.data.corpus import probe_slice
from saelib.data.registry import (
    MODEL_NAMES,
    get_tokenizer,
    hub_reachable,
    load_model,
    load_text_dataset,
    model_tokenize,
    tokenize_padded,
)


@pytest.fixture(scope="module")
def model():
    return load_model("embedded")


def test_unknown_names_list_the_allowed_ones():
    with pytest.raises(ValueError, match="gpt2-small"):
        load_model("gpt-5")
    with pytest.raises(ValueError, match="heldout"):
        load_text_dataset("embedded", split="validation")


@pytest.mark.parametrize("name", [n for n in MODEL_NAMES if n != "embedded"])
def test_hub_model_offline_fails_fast_with_a_clear_message(name, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.time()
    with pytest.raises(ConnectionError, match="embedded model works offline"):
        load_model(name)
    with pytest.raises(ConnectionError, match="embedded"):
        load_text_dataset(name, "train")
    assert time.time() - start < 5


def test_hub_probe_returns_within_its_timeout():
    start = time.time()
    hub_reachable(timeout=1.0)          # whatever the answer on this machine, it must not hang
    assert time.time() - start < 3


def test_embedded_model_and_text(model, monkeypatch):
    from transformer_lens import HookedTransformer

    assert isinstance(model, HookedTransformer) and model.cfg.n_layers >= 4 and not model.training
    texts = list(load_text_dataset("embedded", "heldout", n_docs=20))
    assert len(texts) == 20 and all(isinstance(t, str) and t for t in texts)
    assert texts == list(load_text_dataset("embedded", "heldout", n_docs=20))
    assert texts != list(load_text_dataset("embedded", "train", n_docs=20))


def test_model_tokenize_packs_documents(model):
    texts = list(load_text_dataset("embedded", "heldout", n_docs=50))
    tokens = model_tokenize(model, texts, ctx_len=32)
    tok = get_tokenizer(model)
    n_total = sum(len(tok.encode(t)) for t in texts)
    assert tokens.dtype == torch.long and tokens.shape == (n_total // 32, 32)
    assert tokens[0, 0] == tok.bos_id
    assert (tokens == tok.bos_id).sum() >= len(texts) - 2           # one BOS per (kept) document
    assert tokens.max() < model.cfg.d_vocab


def test_tokenize_padded_keeps_last_token_states(model):
    texts = probe_slice(n=10, seed=0).train_texts[:8]
    tokens, lengths = tokenize_padded(model, texts)
    tok = get_tokenizer(model)
    assert tokens.shape == (8, int(lengths.max()))
    assert all(tok.decode([tokens[b, lengths[b] - 1]]) == ":" for b in range(8))
    with torch.no_grad():
        padded = model(tokens)                                      # [batch, T, d_vocab]
        for b in range(8):
            alone = model(tokens[b: b + 1, : lengths[b]])[0, -1]   # the same text without padding
            torch.testing.assert_close(padded[b, lengths[b] - 1], alone, rtol=1e-4, atol=1e-4)
