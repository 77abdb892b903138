"""The embedded corpus: deterministic for a seed, grammatical agreement, compositional sentiment."""
import re

import pytest

from saelib.data.corpus import (
    TOPICS,
    corpus_splits,
    generate_corpus,
    probe_slice,
    sentiment_label,
    sentiment_score,
    vocabulary,
    word_tokens,
)
from saelib.data.tokenizer import WordTokenizer


def test_deterministic_for_a_seed():
    assert generate_corpus(200, seed=7) == generate_corpus(200, seed=7)
    assert generate_corpus(200, seed=7) != generate_corpus(200, seed=8)
    a, b = corpus_splits(seed=3, n_train=50, n_heldout=50), corpus_splits(seed=3, n_train=50, n_heldout=50)
    assert a == b
    assert not {d.text for d in a["train"]} & {d.text for d in a["heldout"]} or len(a["train"]) < 50


@pytest.mark.parametrize("positive, negative", [
    ("The plot was good.", "The plot was not good."),
    ("The rooms were dirty, but the staff were really friendly.",
     "The rooms were dirty, but the staff were not friendly."),
    ("My parents love the soup.", "My parents do not love the soup."),
    ("Overall, I would recommend it.", "Overall, I would never recommend it."),
    ("The pasta was not bland.", "The pasta was bland."),
])
def test_negation_flips_the_label(positive, negative):
    assert sentiment_label(positive) == 1
    assert sentiment_label(negative) == 0


def test_intensifiers_change_mixed_reviews():
    assert sentiment_score("The acting was very good, but the plot was bad.") == 1
    assert sentiment_score("The acting was good, but the plot was very bad.") == -1
    assert sentiment_score("The acting was not very good.") == -1      # negation wins over the intensifier


def test_generated_sentences_and_their_negations_get_opposite_labels():
    docs = generate_corpus(400, seed=1)
    pattern = re.compile(r"^The ([a-z ]+) (was|were|is|are) ([a-z]+)\.$")
    pairs = 0
    for doc in docs:
        for sentence in re.split(r"(?<=\.) ", doc.text.removeprefix("Review: ")):
            m = pattern.match(sentence)
            if m and sentiment_score(sentence) != 0:
                negated = f"The {m[1]} {m[2]} not {m[3]}."
                assert sentiment_label(negated) == 1 - sentiment_label(sentence), (sentence, negated)
                pairs += 1
    assert pairs > 50


def test_labels_follow_the_rule_and_are_not_readable_from_single_words():
    docs = generate_corpus(2000, seed=2)
    assert all(d.label == sentiment_label(d.text) for d in docs)
    assert 0.4 < sum(d.label for d in docs) / len(docs) < 0.6
    # every common sentiment word occurs in documents of both labels
    for word in ["good", "great", "bad", "boring", "love"]:
        labels = {d.label for d in docs if word in word_tokens(d.text)}
        assert labels == {0, 1}, word
    assert {d.topic for d in docs} == {t.name for t in TOPICS}
    assert any(d.text.startswith("Review: ") and d.text.endswith(("Sentiment: positive.", "Sentiment: negative."))
               for d in docs)


def test_agreement():
    text = " ".join(d.text for d in generate_corpus(2000, seed=4)).lower()
    for topic in TOPICS:
        for noun, plural in topic.aspects:
            wrong = ["was", "is"] if plural else ["were", "are"]
            for verb in wrong:
                assert f"the {noun} {verb} " not in text, (noun, verb)
    for bad in ["my parents loves", "my sister love", "i loves", "we does", "i does", "it are", "it were"]:
        assert not re.search(rf"\b{bad}\b", text), bad
    assert not re.search(r"\ba [aeiou]", text) and not re.search(r"\ban [^aeiou ]", text)


def test_facts_are_neutral():
    for topic in TOPICS:
        for template in topic.facts:
            assert sentiment_score(re.sub(r"\{\w+\}", "X", template)) == 0, template


def test_vocabulary_covers_the_corpus():
    tok = WordTokenizer.for_corpus()
    assert len(vocabulary()) >= 500
    ids = [i for d in generate_corpus(1000, seed=5) for i in tok.encode(d.text)]
    assert tok.unk_id not in ids


def test_probe_slice():
    ps = probe_slice(n=400, seed=11, test_frac=0.25)
    assert len(ps.train_texts) == 300 and len(ps.test_texts) == 100
    labels = ps.train_labels + ps.test_labels
    assert sum(labels) == 200                                          # balanced
    assert not set(ps.train_texts) & set(ps.test_texts)
    texts = ps.train_texts + ps.test_texts
    assert all(t.startswith("Review: ") and t.endswith(" Sentiment:") for t in texts)
    assert all(sentiment_label(t) == y for t, y in zip(texts, labels, strict=True))
    assert probe_slice(n=400, seed=11, test_frac=0.25) == ps
    with pytest.raises(ValueError, match="test_frac"):
        probe_slice(n=10, test_frac=1.5)


def test_held_out_template_never_occurs_in_the_training_text():
    from saelib.data.corpus import HELD_OUT_TEMPLATE, PROBE_TEMPLATE, template_in_corpus

    docs = corpus_splits(seed=0, n_train=3000, n_heldout=1)["train"]
    assert template_in_corpus(HELD_OUT_TEMPLATE, docs) == 0
    assert template_in_corpus(PROBE_TEMPLATE, [d.text for d in docs]) > 300          # ~25% carry the prompt
    assert template_in_corpus(HELD_OUT_TEMPLATE, ["The plot was good. Review: the end"]) == 1
    with pytest.raises(ValueError, match="template="):
        template_in_corpus("no placeholder", docs)


def test_probe_slice_with_a_template_and_a_fixed_test_size():
    from saelib.data.corpus import HELD_OUT_TEMPLATE

    s = probe_slice(n=400, seed=2, template=HELD_OUT_TEMPLATE, n_test=300)
    assert (len(s.train_texts), len(s.test_texts)) == (100, 300)
    assert all(t.startswith("Sentiment: ") and t.endswith(" Review:") for t in s.train_texts + s.test_texts)
    assert not set(s.train_texts) & set(s.test_texts)
    assert abs(sum(s.train_labels + s.test_labels) - 200) == 0                    # balanced over the slice
    assert [sentiment_label(t.split(": ", 1)[1].rsplit(" Review:", 1)[0]) for t in s.test_texts] == s.test_labels
    with pytest.raises(ValueError, match="n_test=400"):
        probe_slice(n=400, n_test=400)
    with pytest.raises(ValueError, match="template="):
        probe_slice(n=10, template="Review:")
