"""A word-level tokenizer for the embedded corpus, and the two ways saelib turns token lists into tensors.

The embedded model does not use a Hugging Face tokenizer: its `model.tokenizer` is None and
`model.to_tokens` is therefore unavailable. Everything in saelib tokenizes through
`saelib.data.registry.get_tokenizer(model)` / `model_tokenize(...)` instead, which return this WordTokenizer
for the embedded model and a thin wrapper over `model.to_tokens` for hub models (same interface).

Text is lower-cased and split into words (runs of letters) and single punctuation characters
(`saelib.data.corpus.word_tokens`); unknown words map to <unk>. Ids: <pad>=0, <bos>=1, <eos>=2, <unk>=3,
then the sorted vocabulary.

Public
  WordTokenizer(words)          .encode(text, bos=True, eos=False) -> list[int]; .decode(ids) -> str;
                                .str_tokens(text); .vocab_size; .bos_id / .eos_id / .pad_id / .unk_id;
                                .to_dict() / WordTokenizer.from_dict(d); WordTokenizer.for_corpus()
  pack_tokens(token_lists, ctx_len)     -> LongTensor [n_rows, ctx_len]  documents concatenated, cut in rows
  pad_tokens(token_lists, pad_id, max_len=None) -> (LongTensor [batch, T], LongTensor [batch] lengths)
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from saelib.data.corpus import vocabulary, word_tokens
from saelib.validation import check_positive

SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]


class WordTokenizer:
    def __init__(self, words: Sequence[str]):
        words = list(words)
        if len(set(words)) != len(words) or set(words) & set(SPECIALS):
            raise ValueError("words must be unique and must not contain the special tokens " + ", ".join(SPECIALS))
        self.id_to_token: list[str] = SPECIALS + words
        self.token_to_id: dict[str, int] = {t: i for i, t in enumerate(self.id_to_token)}
        self.pad_id, self.bos_id, self.eos_id, self.unk_id = range(4)

    @classmethod
    def for_corpus(cls) -> WordTokenizer:
        """The tokenizer of the embedded corpus: every word its grammar can emit."""
        return cls(vocabulary())

    @property
    def vocab_size(self) -> int:
        return len(self.id_to_token)

    def encode(self, text: str, bos: bool = True, eos: bool = False) -> list[int]:
        ids = [self.token_to_id.get(t, self.unk_id) for t in word_tokens(text)]
        return [self.bos_id] * bos + ids + [self.eos_id] * eos

    def decode(self, ids: Iterable[int]) -> str:
        """Tokens joined by spaces (punctuation too: "the plot was good .")."""
        return " ".join(self.id_to_token[int(i)] for i in ids)

    def str_tokens(self, text: str, bos: bool = True) -> list[str]:
        return [self.id_to_token[i] for i in self.encode(text, bos=bos)]

    def to_dict(self) -> dict:
        return {"type": "word", "specials": SPECIALS, "words": self.id_to_token[len(SPECIALS):]}

    @classmethod
    def from_dict(cls, d: dict) -> WordTokenizer:
        if d.get("type") != "word" or d.get("specials") != SPECIALS:
            raise ValueError(f"not a saelib word tokenizer: type={d.get('type')!r}, specials={d.get('specials')!r}")
        return cls(d["words"])


def pack_tokens(token_lists: Iterable[list[int]], ctx_len: int) -> torch.Tensor:
    """Concatenate documents (each already starting with BOS) and cut the stream into rows of ctx_len.

    The standard way to feed a language model for activations and loss: no padding is wasted and
    every position is real text. Rows do not align with documents; the last partial row is dropped.
    """
    check_positive("ctx_len", ctx_len, integer=True)
    stream = [t for ids in token_lists for t in ids]
    n_rows = len(stream) // ctx_len
    if n_rows == 0:
        raise ValueError(f"ctx_len={ctx_len} is longer than all the text ({len(stream)} tokens); give more text")
    return torch.tensor(stream[: n_rows * ctx_len], dtype=torch.long).view(n_rows, ctx_len)  # [n_rows, ctx_len]


def pad_tokens(token_lists: Sequence[list[int]], pad_id: int,
               max_len: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One row per document, right-padded with pad_id (and cut at max_len if given).

    Returns tokens [batch, T] and lengths [batch]. With a causal model, right padding leaves every real
    position unchanged, so the last real token of row b sits at index lengths[b] - 1.
    """
    if max_len is not None:
        check_positive("max_len", max_len, integer=True)
        token_lists = [ids[:max_len] for ids in token_lists]
    lengths = torch.tensor([len(ids) for ids in token_lists], dtype=torch.long)          # [batch]
    if len(token_lists) == 0 or int(lengths.min()) == 0:
        raise ValueError("pad_tokens needs at least one document and no empty ones")
    tokens = torch.full((len(token_lists), int(lengths.max())), pad_id, dtype=torch.long)  # [batch, T]
    for b, ids in enumerate(token_lists):
        tokens[b, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return tokens, lengths
