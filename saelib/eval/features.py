"""Looking at latents: top-activating contexts and a cheap, label-based interpretability proxy.

The embedded corpus is generated, so every token comes with labels we know exactly: the topic of its
document (film, restaurant, ...), the document's sentiment, and the token itself. For each latent we take
its `k` top-activating tokens on held-out documents and ask how *pure* they are in each label: the fraction
that share the most common value. A latent whose top activations all sit in hotel reviews has topic purity
1; one that fires on "not" wherever it appears has token purity 1.

    docs = corpus_sample(400, seed=1)
    sample = read_documents(model, hook, docs, scale_factor=site.scale_factor)      # activations + labels
    codes = encode(sae, sample.acts)                                                 # [n_tokens, d_sae]
    top = top_activations(codes, k=20)
    purity = label_purity(top, sample.labels["topic"])                               # [d_sae], nan if unused
    null = null_purity(sample.labels["topic"], k=20)                                 # random tokens' purity
    html = top_contexts_html(sample, codes, latent=7, n=5)                           # tokens shaded by activation

What the proxy can tell: whether a latent's strongest activations concentrate on one known label, and how
that compares across SAE families at equal L0 and against random tokens (`null_purity`). What it cannot
tell: whether a latent means anything the labels do not name (agreement, position, syntax), whether it is
*monosemantic* over its whole range (only the top k are scored), or whether the model *uses* it. A purity
of 1 in "token" is a token detector, not necessarily a useful feature; a low purity may be a perfectly
interpretable latent for a concept the corpus does not label.
"""
from __future__ import annotations

import html as _html
import math
from dataclasses import dataclass, field

import torch

from saelib.validation import check_positive

LABELS = ("topic", "sentiment", "token")


@dataclass
class TokenSample:
    """Held-out documents read at one hook: one row per kept (non-BOS, non-padding) token."""

    acts: torch.Tensor                          # [n, d_in], scaled as the SAEs were trained
    doc: torch.Tensor                           # [n] document index of each token
    pos: torch.Tensor                           # [n] position of the token in its document (BOS excluded)
    words: list[list[str]]                      # per document: its tokens as text (BOS excluded)
    labels: dict[str, torch.Tensor] = field(default_factory=dict)   # name -> [n] integer class per token
    classes: dict[str, list[str]] = field(default_factory=dict)     # name -> class names
    _chance: dict[tuple[str, int], float] = field(default_factory=dict, repr=False)

    def chance(self, label: str, k: int) -> float:
        """null_purity of `label` for k documents (computed once per sample, label and k)."""
        if (label, k) not in self._chance:
            self._chance[(label, k)] = null_purity(self.labels[label], k, doc=self.doc)
        return self._chance[(label, k)]


def corpus_sample(n_docs: int, seed: int = 1):
    """`n_docs` labelled documents from the embedded corpus generator (seeded; seed 1 is the held-out
    stream of corpus_splits(0), which no SAE or the model trained on)."""
    from saelib.data.corpus import generate_corpus

    check_positive("n_docs", n_docs, integer=True)
    return generate_corpus(n_docs, seed=seed)


@torch.no_grad()
def read_documents(model, hook: str, docs, *, scale_factor: float = 1.0, batch_size: int = 64) -> TokenSample:
    """Run `model` over each document (one BOS-first row each, cut at the model's context) and keep the
    activations at `hook` for every real token, with its document's topic and sentiment and its token id."""
    from saelib.data.activations import read_hook
    from saelib.data.registry import get_tokenizer, tokenize_padded

    tok = get_tokenizer(model)
    tokens, lengths = tokenize_padded(model, [d.text for d in docs], max_len=model.cfg.n_ctx)    # [B, T], [B]
    acts, doc_idx, pos = [], [], []
    for start in range(0, tokens.shape[0], batch_size):
        batch = tokens[start:start + batch_size]
        a = read_hook(model, batch.to(model.cfg.device), hook).float().cpu()                     # [b, T, d_in]
        for j in range(batch.shape[0]):
            n = int(lengths[start + j])
            acts.append(a[j, 1:n])                                                                # drop BOS
            doc_idx.append(torch.full((n - 1,), start + j, dtype=torch.long))
            pos.append(torch.arange(n - 1))
    doc_t, pos_t = torch.cat(doc_idx), torch.cat(pos)
    words = [[tok.decode([int(t)]) for t in tokens[i, 1:int(lengths[i])]] for i in range(tokens.shape[0])]
    topics = sorted({d.topic for d in docs})
    token_ids = torch.cat([tokens[i, 1:int(lengths[i])] for i in range(tokens.shape[0])])
    vocab = sorted(set(token_ids.tolist()))
    remap = {t: i for i, t in enumerate(vocab)}
    labels = {"topic": torch.tensor([topics.index(docs[i].topic) for i in doc_t.tolist()]),
              "sentiment": torch.tensor([docs[i].label for i in doc_t.tolist()]),
              "token": torch.tensor([remap[t] for t in token_ids.tolist()])}
    classes = {"topic": topics, "sentiment": ["negative", "positive"],
               "token": [tok.decode([t]) for t in vocab]}
    return TokenSample(torch.cat(acts) * scale_factor, doc_t, pos_t, words, labels, classes)


@torch.no_grad()
def encode(sae, acts: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """The SAE's codes for `acts` [n, d_in] -> [n, d_sae] (float32, on the CPU)."""
    device = next(sae.parameters()).device
    return torch.cat([sae.encode(acts[i:i + batch_size].to(device)).float().cpu()
                      for i in range(0, acts.shape[0], batch_size)])


@dataclass
class TopActivations:
    values: torch.Tensor      # [d_sae, k] largest activations of each latent, descending
    index: torch.Tensor       # [d_sae, k] the token rows they occur at


def top_activations(codes: torch.Tensor, k: int, doc: torch.Tensor | None = None) -> TopActivations:
    """Each latent's k largest activations over the tokens of `codes` [n, d_sae].

    With `doc` [n] (each token's document; a document's tokens contiguous), at most one token per document:
    each latent's strongest token in each document, then the k strongest documents. Neighbouring tokens of
    one document share its topic and sentiment, so without this a latent that fires on five tokens of one
    review would look perfectly "pure"."""
    check_positive("k", k, integer=True)
    if doc is None:
        k = min(k, codes.shape[0])
        values, index = codes.topk(k, dim=0)                                # [k, d_sae]
        return TopActivations(values.T.contiguous(), index.T.contiguous())
    bounds = torch.nonzero(torch.diff(doc, prepend=doc[:1] - 1)).squeeze(1).tolist() + [doc.shape[0]]
    per_doc = [codes[a:b].max(dim=0) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    doc_values = torch.stack([m.values for m in per_doc])                   # [n_docs, d_sae]
    doc_rows = torch.stack([m.indices + a for m, a in zip(per_doc, bounds[:-1], strict=True)])   # [n_docs, d_sae]
    k = min(k, doc_values.shape[0])
    values, which = doc_values.topk(k, dim=0)                               # [k, d_sae] document choices
    index = doc_rows.gather(0, which)                                       # [k, d_sae] token rows
    return TopActivations(values.T.contiguous(), index.T.contiguous())


def _purity_of(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """labels [m, k] integer classes -> [m] fraction of the most common class in each row."""
    counts = torch.zeros(labels.shape[0], n_classes, dtype=torch.long)
    counts.scatter_add_(1, labels, torch.ones_like(labels))
    return counts.max(dim=1).values.float() / labels.shape[1]


def label_purity(top: TopActivations, labels: torch.Tensor, min_active: int | None = None) -> torch.Tensor:
    """Per latent, the fraction of its top-k tokens that share the most common value of `labels` [n].

    Only latents active (> 0) on at least `min_active` (default: all k) of their top-k tokens are scored;
    the others get nan, so dead and nearly dead latents do not count as "pure"."""
    k = top.values.shape[1]
    need = k if min_active is None else min_active
    purity = _purity_of(labels[top.index], int(labels.max()) + 1)
    active = (top.values > 0).sum(dim=1) >= need
    return torch.where(active, purity, torch.full_like(purity, math.nan))


def null_purity(labels: torch.Tensor, k: int, doc: torch.Tensor | None = None, n_draws: int = 2000,
                seed: int = 0) -> float:
    """The mean purity of k tokens drawn at random, regardless of any latent (with `doc`: k distinct
    documents, one random token each, as top_activations picks them): the chance level a latent's purity
    should be compared with. It lies above the base rate of the most common class, since the most common
    class of a small random draw is often over-represented."""
    gen = torch.Generator().manual_seed(seed)
    if doc is None:
        draws = torch.randint(0, labels.shape[0], (n_draws, k), generator=gen)
    else:
        bounds = torch.nonzero(torch.diff(doc, prepend=doc[:1] - 1)).squeeze(1)
        lengths = torch.diff(bounds, append=torch.tensor([doc.shape[0]]))
        k = min(k, bounds.shape[0])
        docs = torch.stack([torch.randperm(bounds.shape[0], generator=gen)[:k] for _ in range(n_draws)])
        offsets = (torch.rand(docs.shape, generator=gen) * lengths[docs]).long()
        draws = bounds[docs] + offsets
    return float(_purity_of(labels[draws], int(labels.max()) + 1).mean())


def purity_summary(sample: TokenSample, codes: torch.Tensor, k: int = 20) -> dict[str, float]:
    """Mean purity over scored latents for each label (top k documents per latent, one token each), the
    chance level (`<label>_null`), and how many latents were scored (active in all k documents)."""
    top = top_activations(codes, k, doc=sample.doc)
    out: dict[str, float] = {}
    for name in LABELS:
        purity = label_purity(top, sample.labels[name])
        scored = purity[~purity.isnan()]
        out[f"{name}_purity"] = float(scored.mean()) if scored.numel() else math.nan
        out[f"{name}_null"] = sample.chance(name, top.values.shape[1])
    out["scored_latents"] = float((~label_purity(top, sample.labels["topic"]).isnan()).sum())
    return out


# ----------------------------------------------------------------------------- showing contexts

def context_html(words: list[str], values: list[float] | torch.Tensor, centre: int, *, window: int = 8,
                 vmax: float | None = None) -> str:
    """One context as HTML: `window` tokens either side of `centre`, each shaded by its activation
    (white at 0, orange at vmax), the centre token underlined; hover shows the value."""
    values = [float(v) for v in values]
    top = vmax if vmax is not None else max(max(values, default=0.0), 1e-12)
    lo, hi = max(0, centre - window), min(len(words), centre + window + 1)
    spans = []
    for i in range(lo, hi):
        a = max(0.0, min(1.0, values[i] / top)) if top > 0 else 0.0
        style = f"background:rgba(255,140,0,{a:.2f});padding:0 1px;border-radius:2px"
        if i == centre:
            style += ";text-decoration:underline;font-weight:bold"
        spans.append(f'<span style="{style}" title="{values[i]:.3f}">{_html.escape(words[i])}</span>')
    return ("… " if lo > 0 else "") + " ".join(spans) + (" …" if hi < len(words) else "")


def top_contexts_html(sample: TokenSample, codes: torch.Tensor, latent: int, n: int = 5, *, window: int = 8,
                      title: str | None = None) -> str:
    """HTML block with the `n` top-activating contexts of one latent (at most one per document), each
    followed by its document's topic and sentiment."""
    column = codes[:, latent]                                                     # [n_tokens]
    order = column.argsort(descending=True).tolist()
    seen: set[int] = set()
    rows: list[str] = []
    vmax = float(column.max()) if column.numel() else 0.0
    for row in order:
        if len(rows) >= n or column[row] <= 0:
            break
        d = int(sample.doc[row])
        if d in seen:
            continue
        seen.add(d)
        doc_rows = (sample.doc == d).nonzero().squeeze(1)                          # this document's token rows
        values = column[doc_rows]
        topic = sample.classes["topic"][int(sample.labels["topic"][row])]
        sentiment = sample.classes["sentiment"][int(sample.labels["sentiment"][row])]
        rows.append(f"<li>{context_html(sample.words[d], values, int(sample.pos[row]), window=window, vmax=vmax)}"
                    f' <span style="color:#888;font-size:85%">({topic}, {sentiment}; {float(column[row]):.2f})</span>'
                    "</li>")
    head = f"<b>{_html.escape(title)}</b>" if title else f"<b>latent {latent}</b>"
    body = "".join(rows) if rows else "<li><i>never active on these documents</i></li>"
    return f'<div style="font-family:monospace;font-size:85%;margin-bottom:6px">{head}<ol>{body}</ol></div>'
