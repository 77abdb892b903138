"""The shipped embedded model: loads offline, reproduces its recorded held-out loss, has real structure."""
import math

import pytest
import torch

from saelib.data.corpus import probe_slice
from saelib.data.embedded_model import (
    N_CHECK_ROWS,
    EmbeddedModelConfig,
    bigram_entropy,
    heldout_tokens,
    lm_loss,
    load_embedded_model,
    train_embedded_model,
    unigram_entropy,
)
from saelib.data.tokenizer import WordTokenizer


@pytest.fixture(scope="module")
def shipped():
    return load_embedded_model()


def test_loads_offline_with_its_tokenizer(shipped, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, tokenizer, record = load_embedded_model()
    assert model.cfg.n_layers >= 4 and model.cfg.d_vocab == tokenizer.vocab_size
    assert tokenizer.id_to_token == WordTokenizer.for_corpus().id_to_token   # corpus and vocab still agree


def test_reproduces_its_recorded_heldout_loss(shipped):
    model, tokenizer, record = shipped
    rows = heldout_tokens(record["settings"], tokenizer)[:N_CHECK_ROWS]      # [64, n_ctx]
    assert lm_loss(model, rows) == pytest.approx(record["heldout_loss_check"], abs=1e-3)


def test_loss_far_below_unigram_entropy(shipped):
    model, tokenizer, record = shipped
    rows = heldout_tokens(record["settings"], tokenizer)
    assert unigram_entropy(rows) == pytest.approx(record["unigram_entropy"], abs=1e-9)  # same corpus as recorded
    # "far below": less than half the unigram entropy, and below the bigram entropy (context is used)
    assert record["heldout_loss"] < 0.5 * record["unigram_entropy"]
    assert record["heldout_loss"] < record["bigram_entropy"]


def test_predicts_the_sentiment_word_of_the_probe_prompt(shipped):
    """Real structure: after "Review: ... Sentiment:" the model prefers the right one of positive/negative."""
    model, tokenizer, _ = shipped
    ps = probe_slice(n=200, seed=99)
    pos, neg = tokenizer.token_to_id["positive"], tokenizer.token_to_id["negative"]
    correct = 0
    with torch.no_grad():
        for text, label in zip(ps.train_texts, ps.train_labels, strict=True):
            logits = model(torch.tensor([tokenizer.encode(text)]))[0, -1]   # [d_vocab]
            correct += int((logits[pos] > logits[neg]) == bool(label))
    assert correct / len(ps.train_texts) > 0.75             # chance is 0.5; the shipped model scores 0.85


def test_entropies_on_known_streams():
    cycle = (torch.arange(81) % 8).repeat(4, 1)           # [4, 81] 0..7 repeating: bigram fully predictable
    assert unigram_entropy(cycle) == pytest.approx(math.log(8))
    assert bigram_entropy(cycle) == pytest.approx(0.0, abs=1e-12)
    g = torch.Generator().manual_seed(0)
    iid = torch.randint(0, 4, (64, 512), generator=g)     # independent tokens: H(X_t | X_t-1) ~ H(X) ~ log 4
    assert bigram_entropy(iid) == pytest.approx(math.log(4), abs=0.01)


def test_training_is_deterministic_for_a_seed():
    cfg = EmbeddedModelConfig(n_layers=1, d_model=16, n_heads=2, d_mlp=32, n_ctx=16, n_train_docs=40,
                              n_heldout_docs=20, steps=3, batch_size=4, warmup_steps=1)
    def silent(line):
        return None

    (a, ra), (b, rb) = train_embedded_model(cfg, log=silent), train_embedded_model(cfg, log=silent)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    assert ra["heldout_loss"] == rb["heldout_loss"]
    c, _ = train_embedded_model(EmbeddedModelConfig(**{**vars(cfg), "seed": 1}), log=silent)
    assert not torch.equal(a.W_E, c.W_E)


def test_config_validation():
    with pytest.raises(ValueError, match="n_layers"):
        EmbeddedModelConfig(n_layers=0)
    with pytest.raises(ValueError, match="n_heads"):
        EmbeddedModelConfig(d_model=10, n_heads=3)


def test_missing_files_never_train_unless_asked(tmp_path):
    with pytest.raises(FileNotFoundError, match="train_embedded_model.py"):
        load_embedded_model(directory=tmp_path)


def test_damaged_files_are_refused_by_name_or_regenerated(tmp_path, monkeypatch):
    import shutil

    from saelib.data import embedded_model as E

    for name in (E.WEIGHTS_FILE, E.CONFIG_FILE):
        shutil.copy(E.ASSETS / name, tmp_path / name)
    weights = (tmp_path / E.WEIGHTS_FILE).read_bytes()
    (tmp_path / E.WEIGHTS_FILE).write_bytes(weights[: len(weights) // 2])           # truncated weights
    with pytest.raises(ValueError, match="embedded_model.safetensors"):
        E.load_embedded_model(directory=tmp_path)
    text = (tmp_path / E.CONFIG_FILE).read_text()
    (tmp_path / E.CONFIG_FILE).write_text(text[: len(text) // 2])                   # truncated JSON
    with pytest.raises(ValueError, match="embedded_model.json"):
        E.load_embedded_model(directory=tmp_path)

    tiny = EmbeddedModelConfig(n_layers=1, d_model=16, n_heads=2, d_mlp=32, n_ctx=16, n_train_docs=40,
                               n_heldout_docs=20, steps=3, batch_size=4, warmup_steps=1)
    real = E.train_embedded_model
    monkeypatch.setattr(E, "train_embedded_model", lambda cfg: real(tiny, log=lambda line: None))
    with pytest.warns(RuntimeWarning, match="damaged"):
        model, _, _ = E.load_embedded_model(directory=tmp_path, train_if_missing=True)
    assert model.cfg.n_layers == 1
    assert E.load_embedded_model(directory=tmp_path)[0].cfg.n_layers == 1        # repaired: loads, no training
