"""saelib.eval.features: top activations (one per document), label purity, its chance level, HTML contexts."""
import math

import torch

from saelib.eval.features import (
    TokenSample,
    context_html,
    label_purity,
    null_purity,
    purity_summary,
    top_activations,
    top_contexts_html,
)


def _sample(n_docs=12, length=5, seed=0):
    """n_docs documents of `length` tokens; topics cycle 0..2, sentiment alternates, token = position."""
    gen = torch.Generator().manual_seed(seed)
    doc = torch.arange(n_docs).repeat_interleave(length)
    pos = torch.arange(length).repeat(n_docs)
    labels = {"topic": doc % 3, "sentiment": doc % 2, "token": pos.clone()}
    classes = {"topic": ["a", "b", "c"], "sentiment": ["negative", "positive"],
               "token": [f"w{i}" for i in range(length)]}
    words = [[f"w{i}" for i in range(length)] for _ in range(n_docs)]
    return TokenSample(torch.randn(n_docs * length, 4, generator=gen), doc, pos, words, labels, classes)


def test_top_activations_take_one_token_per_document():
    s = _sample()
    codes = torch.zeros(len(s.doc), 2)
    codes[0:5, 0] = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0])        # document 0 dominates latent 0
    codes[7, 0] = 0.5                                             # one token of document 1
    top = top_activations(codes, k=2, doc=s.doc)
    assert top.index[0].tolist() == [0, 7] and top.values[0].tolist() == [5.0, 0.5]
    plain = top_activations(codes, k=2)
    assert plain.index[0].tolist() == [0, 1]                      # without doc: neighbours of one document


def test_label_purity_scores_a_topic_latent_one_and_leaves_dead_latents_out():
    s = _sample()
    codes = torch.zeros(len(s.doc), 3)
    codes[:, 0] = (s.labels["topic"] == 1).float() * (1 + s.pos)  # fires only in topic-1 documents
    codes[:, 1] = 1.0 + 0.01 * torch.arange(len(s.doc))           # fires everywhere
    top = top_activations(codes, k=4, doc=s.doc)
    purity = label_purity(top, s.labels["topic"])
    assert purity[0] == 1.0
    assert purity[1] < 1.0
    assert math.isnan(purity[2])                                  # dead: not scored
    assert label_purity(top, s.labels["token"])[0] == 1.0          # always at the last position


def test_null_purity_is_the_chance_level_of_random_documents():
    s = _sample(n_docs=60)
    assert null_purity(s.labels["topic"], k=1, doc=s.doc) == 1.0
    chance = null_purity(s.labels["topic"], k=30, doc=s.doc, n_draws=500)
    assert 1 / 3 <= chance < 0.6
    assert null_purity(s.labels["topic"], k=30, doc=s.doc, n_draws=500) == chance     # seeded


def test_purity_summary_reports_every_label_and_its_chance_level():
    s = _sample(n_docs=30)
    codes = torch.zeros(len(s.doc), 2)
    codes[:, 0] = (s.labels["sentiment"] == 1).float()
    codes[:, 1] = torch.rand(len(s.doc), generator=torch.Generator().manual_seed(1))
    out = purity_summary(s, codes, k=5)
    assert set(out) == {f"{n}_{w}" for n in ("topic", "sentiment", "token") for w in ("purity", "null")} | {
        "scored_latents"}
    assert out["scored_latents"] == 2
    assert out["sentiment_purity"] > out["sentiment_null"]


def test_context_html_shades_by_activation_and_escapes_text():
    html = context_html(["<b>", "good", "film"], [0.0, 2.0, 1.0], centre=1, window=1)
    assert "&lt;b&gt;" in html and "<b>" not in html
    assert "rgba(255,140,0,1.00)" in html and "rgba(255,140,0,0.50)" in html and "underline" in html
    s = _sample()
    codes = torch.zeros(len(s.doc), 1)
    codes[3, 0] = 1.0
    block = top_contexts_html(s, codes, latent=0, n=3, title="gated latent 0")
    assert block.count("<li>") == 1 and "gated latent 0" in block and "(a, negative; 1.00)" in block
    assert "never active" in top_contexts_html(s, torch.zeros(len(s.doc), 1), latent=0)
