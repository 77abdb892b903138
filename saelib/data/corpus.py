"""The embedded corpus: short English reviews from a small seeded grammar, each labelled with its sentiment.

No model or data hub is reachable by default, so saelib makes its own text (docs/design.md §3). The grammar
is small but has the structure an SAE should find in a real language model:

  * six topics (films, restaurants, books, products, hotels, albums), each with its own entities, aspects,
    neutral facts and topic-specific adjectives (several hundred words in all);
  * agreement: "the plot was" / "the songs were", "my sister loves" / "my parents love",
    "she ... her" / "he ... his", "it" / "they" for singular / plural items, "a" / "an", one tense per
    document (past or present) with do-support in negation ("did not", "does not", "do not");
  * sentiment carried by a lexicon of positive and negative words, *changed by context*: a negator
    ("not", "never") anywhere before an evaluative word in its clause flips its sign, an intensifier
    ("very", "really", ...) right before it doubles its weight. "good" therefore occurs in negative
    reviews and "bad" in positive ones: the label is not readable from single tokens.

The words and the labelling rule (`sentiment_score`) live in saelib/data/lexicon.py (re-exported here);
the generator never emits a tie, so every document has a label.

About a quarter of the documents are wrapped in a rating prompt, "Review: <text> Sentiment: positive."
The *probe slice* (`probe_slice`) is a narrow part of that distribution, as IMDB reviews are of web
text: short film reviews inside the same prompt, cut after "Sentiment:", with their labels. With
`template=HELD_OUT_TEMPLATE` the same reviews sit in a prompt family the corpus never contains (read at a
position no training text has), for probing SAEs on text unrepresentative of their training distribution.

Public functions
  generate_document(rng, ...)          -> Document(text, label, topic)     one document from a random.Random
  generate_corpus(n, seed)             -> list[Document]                   deterministic for a seed
  corpus_splits(seed, n_train, n_heldout) -> {"train": [...], "heldout": [...]}  disjoint seeded streams
  probe_slice(n, seed, test_frac)      -> ProbeSlice(train_texts, train_labels, test_texts, test_labels)
                                          (template=HELD_OUT_TEMPLATE: a prompt family the corpus never has)
  template_in_corpus(template, docs)   -> documents containing a template's read-out context
  sentiment_score(text) / sentiment_label(text)   the compositional labelling rule above
  vocabulary()                         -> sorted list of every word/punctuation token the grammar can emit
  word_tokens(text)                    -> the lower-cased word/punctuation split used everywhere
"""
from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass

from saelib.data.lexicon import (  # the words and the labelling rule, re-exported
    CITIES,
    DISHES,
    EVALUATION_VERBS,
    EVENTS,
    FEMALE,
    INTENSIFIERS,
    MALE,
    NEGATIVE_GENERAL,
    NEGATIVE_VERBS,
    NEGATORS,
    PLACES,
    PLURAL_ONLY_RELATIVES,
    POLARITY,
    POSITIVE_GENERAL,
    POSITIVE_VERBS,
    RELATIVES,
    ROLES,
    SURNAMES,
    TIMES,
    TOPIC_NAMES,
    TOPICS,
    Topic,
    sentiment_label,
    sentiment_score,
    vocabulary,
    word_tokens,
)
from saelib.validation import check_choice, check_positive, check_range, check_seed

__all__ = [
    "Document", "generate_document", "generate_corpus", "corpus_splits", "PROBE_TOPIC", "PROBE_TEMPLATE",
    "HELD_OUT_TEMPLATE", "PROBE_TEMPLATES", "ProbeSlice", "probe_slice", "template_in_corpus",
    "CITIES", "DISHES", "EVALUATION_VERBS", "EVENTS", "FEMALE", "INTENSIFIERS", "MALE", "NEGATIVE_GENERAL",
    "NEGATIVE_VERBS", "NEGATORS", "PLACES", "PLURAL_ONLY_RELATIVES", "POLARITY", "POSITIVE_GENERAL",
    "POSITIVE_VERBS", "RELATIVES", "ROLES", "SURNAMES", "TIMES", "TOPIC_NAMES", "TOPICS", "Topic",
    "sentiment_label", "sentiment_score", "vocabulary", "word_tokens",
]

# ============================================================================ the grammar

@dataclass(frozen=True)
class Document:
    text: str
    label: int        # 1 positive, 0 negative (from `sentiment_score`)
    topic: str


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _be(plural: bool, past: bool) -> str:
    return ("were" if plural else "was") if past else ("are" if plural else "is")


def _do(plural: bool, past: bool) -> str:
    return "did" if past else ("do" if plural else "does")


def _verb(base: str, plural: bool, past: bool) -> str:
    third_singular, past_form = {**POSITIVE_VERBS, **NEGATIVE_VERBS}[base]
    return past_form if past else (base if plural else third_singular)


class _Writer:
    """Holds one document's fixed choices (topic, tense, entity, kind) and writes its sentences."""

    def __init__(self, rng: random.Random, topic: Topic):
        self.rng, self.topic = rng, topic
        self.past = rng.random() < 0.6
        self.entity = rng.choice(topic.entities)
        self.kind = rng.choice(topic.kinds)

    # --- people -----------------------------------------------------------------------------------
    def subject(self) -> tuple[str, bool]:
        """A sentence subject and whether it is grammatically plural (drives verb agreement)."""
        r = self.rng.random()
        if r < 0.35:
            return "I", True                  # "I" takes the plural verb form: I love / I do not
        if r < 0.5:
            return "we", True
        if r < 0.7:
            sing, plur = self.rng.choice(RELATIVES)
            return ("my " + plur, True) if self.rng.random() < 0.4 else ("my " + sing, False)
        if r < 0.8:
            return "my " + self.rng.choice(PLURAL_ONLY_RELATIVES), True
        return self.rng.choice(FEMALE + MALE), False

    def relative(self) -> str:
        sing, plur = self.rng.choice(RELATIVES)
        return "My " + self.rng.choice([sing, plur])

    def full_name(self) -> str:
        return self.rng.choice(FEMALE + MALE) + " " + self.rng.choice(SURNAMES)

    # --- evaluative clauses -------------------------------------------------------------------------
    def adjective(self, polarity: int) -> str:
        own = self.topic.positive if polarity > 0 else self.topic.negative
        general = POSITIVE_GENERAL if polarity > 0 else NEGATIVE_GENERAL
        return self.rng.choice(own if self.rng.random() < 0.6 else general)

    def evaluation(self, polarity: int) -> str:
        """A clause whose score has sign `polarity`: a direct word (maybe intensified) or a negated opposite."""
        rng = self.rng
        negate = rng.random() < 0.35
        word_polarity = -polarity if negate else polarity
        neg = "not " if negate else ""
        intens = "" if negate or rng.random() < 0.65 else rng.choice(INTENSIFIERS[:-1]) + " "  # not "highly"
        verb_intens = intens and rng.choice(["really ", "truly "])                              # "really loved"
        aspect, plural = rng.choice(self.topic.aspects)
        form = rng.random()
        if form < 0.45:                                   # the plot was (very | not) gripping
            adj = self.adjective(word_polarity)
            return f"the {aspect} {_be(plural, self.past)} {neg}{intens}{adj}"
        if form < 0.75:                                   # my sister (really) loved / did not like the soup
            subj, subj_plural = self.subject()
            verb = rng.choice(EVALUATION_VERBS[word_polarity])
            if negate:
                return f"{subj} {_do(subj_plural, self.past)} not {verb} the {aspect}"
            return f"{subj} {verb_intens}{_verb(verb, subj_plural, self.past)} the {aspect}"
        if form < 0.9:                                    # it was (not) a (really) clever film
            head = intens + self.adjective(word_polarity)
            return f"it {_be(False, self.past)} {neg}{_article(head)} {head} {self.kind}"
        subj, subj_plural = self.subject()                # my parents thought the rooms were not clean
        adj = self.adjective(word_polarity)
        think = "thought" if self.past else ("think" if subj_plural else "thinks")
        return f"{subj} {think} the {aspect} {_be(plural, self.past)} {neg}{intens}{adj}"

    def verdict(self, polarity: int) -> str:
        rng = self.rng
        if rng.random() < 0.5:
            if polarity > 0:
                return f"Overall, I would {rng.choice(['', '', 'highly ', 'really '])}recommend it."
            return f"Overall, I would {rng.choice(NEGATORS)} recommend it."
        return "Overall, " + self.evaluation(polarity) + "."

    # --- neutral facts ------------------------------------------------------------------------------
    def fact(self) -> str:
        rng = self.rng
        role, gender = rng.choice(ROLES)
        event = rng.choice(EVENTS).format(pos="her" if gender == "F" else "his")
        dish, dish2 = rng.sample(DISHES, 2)
        template = rng.choice(self.topic.facts)
        return template.format(
            E=self.entity, kind=self.kind, a_kind=f"{_article(self.kind)} {self.kind}", Full=self.full_name(),
            Name2=rng.choice(FEMALE + MALE), place=rng.choice(PLACES), City=rng.choice(CITIES), time=rng.choice(TIMES),
            Rel=self.relative(),
            role=role, event=event, dish=dish, dish2=dish2)


def _sentence(clause: str) -> str:
    clause = clause.strip()
    return clause[0].upper() + clause[1:] + ("" if clause.endswith(".") else ".")


def generate_document(rng: random.Random, topic: str | None = None, prompt_rate: float = 0.25,
                      n_evaluations: tuple[int, int] = (1, 3), n_facts: tuple[int, int] = (0, 2),
                      contrast_rate: float = 0.4) -> Document:
    """One labelled review. Sentences: facts, evaluations (optionally one contrast "..., but ..."), verdict.

    The target polarity is drawn first and every evaluation is written to carry it, except the contrast
    clause which carries the opposite one; the label is then read back from the text with
    `sentiment_score` (ties are redrawn), so the label always follows the compositional rule.
    """
    if topic is not None:
        check_choice("topic", topic, TOPIC_NAMES)
    while True:
        t = TOPICS[TOPIC_NAMES.index(topic)] if topic else rng.choice(TOPICS)
        w = _Writer(rng, t)
        polarity = rng.choice([1, -1])
        sentences = [w.fact() for _ in range(rng.randint(*n_facts))]
        for _ in range(rng.randint(*n_evaluations)):
            if rng.random() < contrast_rate:
                sentences.append(_sentence(w.evaluation(polarity) + ", but " + w.evaluation(-polarity)))
            else:
                sentences.append(_sentence(w.evaluation(polarity)))
        rng.shuffle(sentences)
        sentences.append(w.verdict(polarity))
        body = " ".join(sentences)
        score = sentiment_score(body)
        if score == 0:
            continue
        label = int(score > 0)
        if rng.random() < prompt_rate:
            body = f"Review: {body} Sentiment: {'positive' if label else 'negative'}."
        return Document(body, label, t.name)


# ============================================================================ corpora and the probe slice

def generate_corpus(n: int, seed: int = 0, **kwargs) -> list[Document]:
    """`n` documents from `random.Random(seed)`: the same list for the same seed on every platform."""
    check_positive("n", n, integer=True)
    check_seed(seed)
    rng = random.Random(seed)
    return [generate_document(rng, **kwargs) for _ in range(n)]


def corpus_splits(seed: int = 0, n_train: int = 20_000, n_heldout: int = 2_000) -> dict[str, list[Document]]:
    """Train and held-out documents from two independent seeded streams (2 * seed and 2 * seed + 1)."""
    return {"train": generate_corpus(n_train, seed=2 * seed), "heldout": generate_corpus(n_heldout, seed=2 * seed + 1)}


PROBE_TOPIC = "film"
PROBE_TEMPLATE = "Review: {review} Sentiment:"
# A prompt family the corpus never contains, for probing an SAE on text unrepresentative of its training
# distribution (as the original study did): the corpus writes "Review:" only right after a document's BOS
# and "Sentiment:" only between a review and its label word, so a review *followed by* "Review:" (read at
# that ":") never occurs in the text the model or any SAE here is trained on. `template_in_corpus` checks it.
HELD_OUT_TEMPLATE = "Sentiment: {review} Review:"
PROBE_TEMPLATES = {"trained": PROBE_TEMPLATE, "held_out": HELD_OUT_TEMPLATE}


@dataclass
class ProbeSlice:
    train_texts: list[str]
    train_labels: list[int]
    test_texts: list[str]
    test_labels: list[int]


def probe_slice(n: int = 1200, seed: int = 1234, test_frac: float = 0.25, topic: str = PROBE_TOPIC, *,
                template: str = PROBE_TEMPLATE, n_test: int | None = None) -> ProbeSlice:
    """Short reviews of one topic inside a fixed prompt (default "Review: ... Sentiment:"), labels balanced.

    The model is to be read at the last token. With the default template, a model trained on this corpus
    predicts the sentiment word there; `template=HELD_OUT_TEMPLATE` (or any "{review}" template) wraps the
    same reviews in a prompt the corpus never contains. Reviews are 1-2 evaluations and a verdict, no
    neutral facts, each text once. `n_test` (< n) fixes the test size instead of `test_frac`.
    """
    check_positive("n", n, integer=True)
    check_range("test_frac", test_frac, 0.0, 1.0, inclusive=False)
    if "{review}" not in template:
        raise ValueError(f"template={template!r} must contain '{{review}}'")
    if n_test is not None:
        check_positive("n_test", n_test, integer=True)
        if n_test >= n:
            raise ValueError(f"n_test={n_test} is out of range; allowed: 1 .. n - 1 = {n - 1}")
    check_seed(seed)
    rng = random.Random(seed)
    wanted = {0: n // 2, 1: n - n // 2}                # balanced labels
    examples: list[tuple[str, int]] = []
    seen: set[str] = set()
    while len(examples) < n:
        doc = generate_document(rng, topic=topic, prompt_rate=0.0, n_evaluations=(1, 2), n_facts=(0, 0))
        if doc.text not in seen and wanted[doc.label] > 0:   # no duplicates: train and test never share a text
            seen.add(doc.text)
            wanted[doc.label] -= 1
            examples.append((template.format(review=doc.text), doc.label))
    rng.shuffle(examples)
    n_test = max(1, round(n * test_frac)) if n_test is None else n_test
    test, train = examples[:n_test], examples[n_test:]
    return ProbeSlice([t for t, _ in train], [y for _, y in train], [t for t, _ in test], [y for _, y in test])


def template_in_corpus(template: str, docs: Iterable[Document | str]) -> int:
    """How many of `docs` (Documents or texts) contain the template's read-out context: the word tokens after
    "{review}" (e.g. "review :"), preceded by at least one token of the document (so not the document's own
    opening). 0 for HELD_OUT_TEMPLATE on any corpus this module generates; > 0 for PROBE_TEMPLATE."""
    tail = word_tokens(template.split("{review}", 1)[1]) if "{review}" in template else []
    if not tail:
        raise ValueError(f"template={template!r} needs '{{review}}' followed by the text the model is read at")
    count = 0
    for d in docs:
        toks = word_tokens(d if isinstance(d, str) else d.text)
        if any(toks[i:i + len(tail)] == tail for i in range(1, len(toks) - len(tail) + 1)):
            count += 1
    return count
