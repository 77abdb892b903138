"""Models and text by name, and one way to tokenize text for any of them.

"embedded" is saelib's own small model (saelib.data.embedded_model), loaded offline from the package. The
papers' models load through `HookedTransformer.from_pretrained` under the same call; only the name
changes. Without a reachable hub, asking for a hub model fails within seconds (a short connection
probe, no retries) with a message pointing at the embedded model.

Tokenization is uniform: `get_tokenizer(model)` returns the WordTokenizer for the embedded model (which
has no Hugging Face tokenizer, so `model.to_tokens` is unavailable for it) and a wrapper over
`model.to_tokens` for hub models; both have .encode(text) -> list[int] with BOS first, .bos_id, .pad_id.

Public
  MODEL_NAMES, DATASETS                      allowed model names and their default text datasets
  load_model(name, device="cpu")             -> HookedTransformer (eval mode)
  load_text_dataset(name, split, n_docs=None) -> iterable of str (split: "train" | "heldout")
  get_tokenizer(model)                       -> tokenizer with .encode / .bos_id / .pad_id
  model_tokenize(model, texts, ctx_len)      -> LongTensor [n_rows, ctx_len]: documents (BOS first)
                                                concatenated and cut into rows; for activations and CE
  tokenize_padded(model, texts, max_len=None) -> (tokens [batch, T], lengths [batch]): one row per text,
                                                right-padded; the last real token of row b is lengths[b]-1
  hub_reachable(timeout=3.0)                 -> bool
"""
from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterable, Iterator
from urllib.parse import urlparse

import torch

from saelib.data.tokenizer import WordTokenizer, pack_tokens, pad_tokens
from saelib.validation import check_choice

EMBEDDED = "embedded"
HUB_MODELS = {                      # our name -> transformer_lens name
    "gelu-1l": "gelu-1l",
    "pythia-70m-deduped": "pythia-70m-deduped",
    "gpt2-small": "gpt2-small",
    "gemma-2-2b": "gemma-2-2b",
}
MODEL_NAMES = (EMBEDDED, *HUB_MODELS)
DATASETS = {                        # model -> Hugging Face dataset of raw text (a "text" column, split "train")
    "gelu-1l": "NeelNanda/c4-code-20k",       # GELU-1L was trained on C4 + code
    "pythia-70m-deduped": "NeelNanda/pile-10k",
    "gpt2-small": "NeelNanda/c4-10k",         # a small web-text sample (OpenWebText itself is large)
    "gemma-2-2b": "NeelNanda/c4-10k",
}
HELDOUT_FRACTION = 0.1             # hub datasets have one split: the last 10% of rows are held out
SPLITS = ("train", "heldout")


# ============================================================================ hub access

def hub_reachable(timeout: float = 3.0) -> bool:
    """True if the Hugging Face hub answers a TCP connection within `timeout` seconds (no retries).

    HF_HUB_OFFLINE=1 means no. The probe (DNS lookup and connect) runs in a daemon thread so that a
    hanging DNS resolver cannot stall the caller beyond the timeout.
    """
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    result = []

    def probe():
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def _require_hub(what: str) -> None:
    if not hub_reachable():
        raise ConnectionError(
            f"{what} needs the Hugging Face hub, which is not reachable from here (or HF_HUB_OFFLINE is set). "
            f"The embedded model works offline: load_model({EMBEDDED!r}) / scale='default'.")


# ============================================================================ models and text

def load_model(name: str, device: str = "cpu"):
    """The model called `name` (one of MODEL_NAMES) as a transformer_lens HookedTransformer in eval mode."""
    check_choice("name", name, MODEL_NAMES)
    if name == EMBEDDED:
        from saelib.data.embedded_model import load_embedded_model

        return load_embedded_model(device=device)[0]
    _require_hub(f"model {name!r}")
    from transformer_lens import HookedTransformer

    return HookedTransformer.from_pretrained(HUB_MODELS[name], device=device).eval()


def load_text_dataset(name: str, split: str = "train", n_docs: int | None = None) -> Iterator[str]:
    """Texts to train and evaluate SAEs on for model `name`: the embedded corpus, or the model's hub dataset.

    For "embedded" the documents come from the corpus settings the shipped model was trained with
    (train: the training stream, heldout: the held-out stream), n_docs of them (default: as in training).
    """
    check_choice("name", name, MODEL_NAMES)
    check_choice("split", split, SPLITS)
    if name == EMBEDDED:
        from saelib.data.corpus import corpus_splits
        from saelib.data.embedded_model import shipped_settings

        s = shipped_settings()
        n = n_docs or s["n_train_docs" if split == "train" else "n_heldout_docs"]
        docs = corpus_splits(s["corpus_seed"], n_train=n if split == "train" else 1,
                             n_heldout=n if split == "heldout" else 1)[split]
        return (d.text for d in docs)
    _require_hub(f"dataset {DATASETS[name]!r}")
    import datasets

    rows = datasets.load_dataset(DATASETS[name], split="train")
    cut = int(len(rows) * (1 - HELDOUT_FRACTION))
    rows = rows.select(range(cut) if split == "train" else range(cut, len(rows)))
    if n_docs is not None:
        rows = rows.select(range(min(n_docs, len(rows))))
    return (r["text"] for r in rows)


# ============================================================================ tokenization, one way for every model

class HubTokenizer:
    """The WordTokenizer interface over a hub model's own tokenizer (through model.to_tokens)."""

    def __init__(self, model):
        self.model = model
        tok = model.tokenizer
        self.bos_id = tok.bos_token_id
        self.eos_id = tok.eos_token_id
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        self.vocab_size = model.cfg.d_vocab

    def encode(self, text: str, bos: bool = True) -> list[int]:
        return self.model.to_tokens(text, prepend_bos=bos, truncate=False, move_to_device=False)[0].tolist()

    def decode(self, ids: Iterable[int]) -> str:
        return self.model.to_string(torch.as_tensor(list(ids)))


_EMBEDDED_TOKENIZER: WordTokenizer | None = None


def get_tokenizer(model):
    """The tokenizer of `model`: its Hugging Face one (wrapped) if it has one, else the embedded WordTokenizer."""
    global _EMBEDDED_TOKENIZER
    if getattr(model, "tokenizer", None) is not None:
        return HubTokenizer(model)
    if _EMBEDDED_TOKENIZER is None:
        _EMBEDDED_TOKENIZER = WordTokenizer.for_corpus()
    if model.cfg.d_vocab != _EMBEDDED_TOKENIZER.vocab_size:
        raise ValueError(f"model has no tokenizer and d_vocab={model.cfg.d_vocab}, which is not the embedded "
                         f"tokenizer's vocab_size={_EMBEDDED_TOKENIZER.vocab_size}")
    return _EMBEDDED_TOKENIZER


def model_tokenize(model, texts: Iterable[str], ctx_len: int) -> torch.Tensor:
    """Texts -> LongTensor [n_rows, ctx_len]: each text BOS-first, all concatenated, cut into full rows."""
    tok = get_tokenizer(model)
    return pack_tokens((tok.encode(t) for t in texts), ctx_len)


def tokenize_padded(model, texts: Iterable[str], max_len: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Texts -> (tokens [batch, T], lengths [batch]): one BOS-first row per text, right-padded with pad_id."""
    tok = get_tokenizer(model)
    return pad_tokens([tok.encode(t) for t in texts], tok.pad_id, max_len)
