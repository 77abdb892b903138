"""The sentiment probe study (docs/design.md §1): do SAE codes keep what a linear probe can read from the model?

For each layer, on labelled prompts "Review: ... Sentiment:" read at their last token:

    (a) raw     logistic regression on the hidden state h            [n, d_model]
    (b) sae     logistic regression on the SAE's codes f = SAE(s*h)   [n, d_sae]
    (c) pca     logistic regression on the top-k principal components of h, with k = the number of
                distinct SAE features active over the dataset (at least 1): as many directions as the
                SAE keeps, but chosen for variance rather than sparsity.

Every probe is the same scikit-learn pipeline (standardise, then L2-regularised logistic regression,
fixed seed), fitted on the train split and scored on both splits. The labelled data is a
`saelib.data.corpus.ProbeSlice` (the embedded corpus' `probe_slice`, or `load_hub_sentiment` for IMDB / SST-2
when a hub is reachable).
"""
from __future__ import annotations

import random
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from saelib.data.activations import check_hook_name
from saelib.data.corpus import PROBE_TEMPLATE, ProbeSlice
from saelib.data.registry import hub_reachable, tokenize_padded
from saelib.validation import check_choice, check_positive, check_range

# ----------------------------------------------------------------------------- hidden states

def resid_post_hooks(model) -> list[str]:
    """`blocks.{i}.hook_resid_post` for every layer: the residual stream after each block."""
    return [f"blocks.{i}.hook_resid_post" for i in range(model.cfg.n_layers)]


@torch.no_grad()
def last_token_states_from_tokens(model, tokens: torch.Tensor, lengths: torch.Tensor, hook_names: Sequence[str],
                                  batch_size: int = 64) -> dict[str, torch.Tensor]:
    """{hook_name: [n, d]} the activation at each example's last real token.

    tokens [n, seq] are right-padded; lengths [n] count the real tokens. With causal attention the padding
    after the last real token cannot change it, so no attention mask is needed. The forward pass stops
    after the deepest block that holds a hook. hook_z activations are flattened over heads.
    """
    for name in hook_names:
        check_hook_name(model, name)
    check_positive("batch_size", batch_size, integer=True)
    if tokens.ndim != 2 or lengths.shape != tokens.shape[:1] or int(lengths.min()) < 1:
        raise ValueError("tokens must be [n, seq] and lengths [n] with every length >= 1")
    blocks = [int(m.group(1)) for m in (re.match(r"blocks\.(\d+)\.", h) for h in hook_names) if m]
    stop = max(blocks) + 1 if len(blocks) == len(hook_names) else None      # None: run the whole model
    out: dict[str, list[torch.Tensor]] = {h: [] for h in hook_names}
    for start in range(0, tokens.shape[0], batch_size):
        batch = tokens[start:start + batch_size].to(model.cfg.device)        # [b, seq]
        last = (lengths[start:start + batch_size] - 1).to(model.cfg.device)  # [b]
        rows = torch.arange(len(batch), device=batch.device)

        def save(activation, hook, rows=rows, last=last):                    # [b, seq, ...]
            out[hook.name].append(activation[rows, last].flatten(start_dim=1).float().cpu())  # [b, d]

        model.run_with_hooks(batch, fwd_hooks=[(h, save) for h in hook_names], stop_at_layer=stop,
                             return_type=None)
    return {h: torch.cat(v) for h, v in out.items()}


def last_token_states(model, texts: Sequence[str], hook_names: Sequence[str] | None = None,
                      batch_size: int = 64) -> dict[str, torch.Tensor]:
    """{hook_name: [n, d]} the last-token activation of each text (default: resid_post of every layer)."""
    tokens, lengths = tokenize_padded(model, list(texts))   # the embedded word tokenizer or a hub model's own
    return last_token_states_from_tokens(model, tokens, lengths, hook_names or resid_post_hooks(model), batch_size)


# ----------------------------------------------------------------------------- probes

@dataclass
class ProbeResult:
    train_accuracy: float
    test_accuracy: float
    test_correct: np.ndarray | None = None     # [n_test] bool: which test examples the probe got right
    C: float | None = None                     # the inverse regularisation strength used (chosen by CV)


# Inverse L2 strengths searched by cross-validation (fit_probe(..., Cs=CV_CS)): 1e-3 .. 1e2, 4 values (the
# notebook fits ~40 cross-validated probes; a finer grid mostly costs time)
CV_CS = tuple(float(c) for c in np.logspace(-3, 2, 4))


def fit_probe(train_x, train_y, test_x, test_y, *, n_components: int | None = None, seed: int = 0,
              max_iter: int = 2000, C: float = 1.0, Cs: Sequence[float] | None = None,
              cv: int = 3) -> ProbeResult:
    """Logistic regression (after standardising) on [n, d] features; with n_components, on that many
    principal components of the features instead (PCA fitted on the train split).

    With `Cs`, the inverse regularisation strength is chosen among them by `cv`-fold stratified
    cross-validation on the train split only (LogisticRegressionCV), then refitted on the whole train split;
    otherwise `C` is used. The result records which test examples were classified correctly, for paired
    comparisons of two probes on the same examples (`mcnemar`)."""
    check_positive("max_iter", max_iter, integer=True)
    check_positive("C", C)
    check_positive("cv", cv, integer=True)
    train_x, test_x = _numpy(train_x), _numpy(test_x)
    train_y, test_y = np.asarray(train_y), np.asarray(test_y)
    steps: list = []
    if n_components is not None:
        check_positive("n_components", n_components, integer=True)
        steps.append(PCA(n_components=min(n_components, *train_x.shape), random_state=seed))
    if Cs is not None:
        for c in Cs:
            check_positive("Cs", c)
        from sklearn.linear_model import LogisticRegressionCV
        from sklearn.model_selection import StratifiedKFold

        folds = StratifiedKFold(n_splits=cv, shuffle=True, random_state=seed)
        model = LogisticRegressionCV(Cs=list(Cs), cv=folds, max_iter=max_iter, random_state=seed)
    else:
        model = LogisticRegression(C=C, max_iter=max_iter, random_state=seed)
    steps += [StandardScaler(), model]
    with warnings.catch_warnings():    # scikit-learn 1.8 announces future defaults of LogisticRegressionCV
        warnings.simplefilter("ignore", FutureWarning)
        probe = make_pipeline(*steps).fit(train_x, train_y)
    correct = probe.predict(test_x) == test_y
    chosen = float(np.ravel(model.C_)[0]) if Cs is not None else float(C)
    return ProbeResult(float(probe.score(train_x, train_y)), float(correct.mean()), correct, chosen)


def mcnemar(correct_a, correct_b) -> dict[str, float]:
    """Exact two-sided McNemar test of two classifiers on the same examples ([n] bool arrays of which
    examples each got right): only the discordant examples count (a right and b wrong: `a_only`; the
    reverse: `b_only`); under "equally accurate" a_only ~ Binomial(a_only + b_only, 1/2).
    Returns a_only, b_only, the accuracy difference (a - b) and the p-value."""
    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"correct_a and correct_b must be 1-D of the same non-zero length; got {a.shape}, {b.shape}")
    a_only, b_only = int((a & ~b).sum()), int((~a & b).sum())
    if a_only + b_only == 0:
        p = 1.0
    else:
        from scipy.stats import binomtest

        p = float(binomtest(a_only, a_only + b_only, 0.5).pvalue)
    return {"a_only": a_only, "b_only": b_only, "difference": float(a.mean() - b.mean()), "p_value": p}


def count_active_features(codes: torch.Tensor) -> int:
    """Number of distinct features active (non-zero) on at least one example: codes [n, d_sae]."""
    return int((codes != 0).any(dim=0).sum())


def _numpy(x) -> np.ndarray:
    return x.detach().double().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64)


@dataclass
class LayerProbes:
    hook_name: str
    raw: ProbeResult
    sae: ProbeResult | None = None              # probes on SAE codes (when an SAE is given for this hook)
    pca: ProbeResult | None = None              # probes on n_components principal components
    n_active_features: int | None = None        # distinct SAE features active over train + test
    n_components: int | None = None             # = max(1, n_active_features)

    def as_row(self) -> dict:
        row = {"hook_name": self.hook_name, "raw_train": self.raw.train_accuracy, "raw_test": self.raw.test_accuracy}
        for name in ("sae", "pca"):
            result = getattr(self, name)
            row[f"{name}_train"] = result.train_accuracy if result else None
            row[f"{name}_test"] = result.test_accuracy if result else None
        row.update(n_active_features=self.n_active_features, n_components=self.n_components)
        return row


@torch.no_grad()
def reconstruction_error(sae, x: torch.Tensor) -> dict[str, float]:
    """How well `sae` reconstructs x [n, d_in] (already in the SAE's input scale):
    nmse = E||x - x_hat||^2 / E||x||^2 (comparable between a corpus and a narrow slice) and
    fvu  = E||x - x_hat||^2 / E||x - E x||^2 (the share of *this set's* variation the SAE loses)."""
    param = next(sae.parameters())
    x = x.to(param.device, param.dtype)
    err = (sae.decode(sae.encode(x)) - x).pow(2).sum(-1).mean()
    return {"nmse": float(err / x.pow(2).sum(-1).mean()),
            "fvu": float(err / (x - x.mean(0)).pow(2).sum(-1).mean().clamp_min(1e-30))}


@dataclass
class SAEProbe:
    """One SAE at one hook on a probe slice: its codes' probe, the matched PCA probe, and its fidelity there."""

    n_active_features: int          # distinct features active on at least one example (train + test)
    n_components: int               # = max(1, n_active_features), the PCA probe's components
    sae: ProbeResult                # probe on the SAE codes
    pca: ProbeResult                # probe on that many principal components of the raw states
    slice_nmse: float               # reconstruction error of the slice's states (reconstruction_error)
    slice_fvu: float


@torch.no_grad()
def probe_sae(states: torch.Tensor, data: ProbeSlice, sae, scale: float = 1.0, *, seed: int = 0,
              Cs: Sequence[float] | None = CV_CS, cv: int = 3, max_iter: int = 2000) -> SAEProbe:
    """Probes (b) and (c) for one SAE on raw states [n_train + n_test, d] (train rows first), which the SAE
    reads multiplied by `scale` (the input scale it was trained with). Regularisation chosen by CV."""
    n_train = len(data.train_texts)
    if states.shape[0] != n_train + len(data.test_texts):
        raise ValueError(f"states has {states.shape[0]} rows; the slice has {n_train} + {len(data.test_texts)}")
    param = next(sae.parameters())
    x = (states * scale).to(param.device, param.dtype)
    codes = sae.encode(x).cpu()                                                    # [n, d_sae]
    n_active = count_active_features(codes)
    fit: dict[str, Any] = dict(seed=seed, Cs=Cs, cv=cv, max_iter=max_iter)
    err = reconstruction_error(sae, x)
    return SAEProbe(n_active, max(1, n_active),
                    fit_probe(codes[:n_train], data.train_labels, codes[n_train:], data.test_labels, **fit),
                    fit_probe(states[:n_train], data.train_labels, states[n_train:], data.test_labels,
                              n_components=max(1, n_active), **fit),
                    err["nmse"], err["fvu"])


@torch.no_grad()
def probe_study(model, data: ProbeSlice, hook_names: Sequence[str] | None = None,
                saes: Mapping[str, torch.nn.Module] | None = None, scales: Mapping[str, float] | None = None,
                *, seed: int = 0, max_iter: int = 2000, batch_size: int = 64) -> list[LayerProbes]:
    """Probes (a) raw, and for hooks with an SAE in `saes` also (b) SAE codes and (c) PCA, per hook.

    hook_names default to the SAEs' hooks, or resid_post of every layer when no SAE is given. `scales`
    holds the input scale each SAE was trained with (default 1.0: scale folded into the weights).
    """
    saes, scales = dict(saes or {}), dict(scales or {})
    hook_names = list(hook_names or saes or resid_post_hooks(model))
    texts = list(data.train_texts) + list(data.test_texts)
    n_train = len(data.train_texts)
    states = last_token_states(model, texts, hook_names, batch_size)
    fit: dict[str, Any] = dict(seed=seed, max_iter=max_iter)
    results = []
    for hook in hook_names:
        h = states[hook]                                                        # [n, d]
        layer = LayerProbes(hook, fit_probe(h[:n_train], data.train_labels, h[n_train:], data.test_labels, **fit))
        if hook in saes:
            sae: Any = saes[hook]
            param = next(sae.parameters())
            codes = sae.encode((h * scales.get(hook, 1.0)).to(param.device, param.dtype)).cpu()   # [n, d_sae]
            layer.n_active_features = count_active_features(codes)
            layer.n_components = max(1, layer.n_active_features)
            layer.sae = fit_probe(codes[:n_train], data.train_labels, codes[n_train:], data.test_labels, **fit)
            layer.pca = fit_probe(h[:n_train], data.train_labels, h[n_train:], data.test_labels,
                                  n_components=layer.n_components, **fit)
        results.append(layer)
    return results


# ----------------------------------------------------------------------------- hub datasets

HUB_SENTIMENT = {  # name -> (dataset id, config, text column, label column, split)
    "imdb": ("stanfordnlp/imdb", None, "text", "label", "train"),
    "sst2": ("stanfordnlp/sst2", None, "sentence", "label", "train"),
}


def load_hub_sentiment(name: str = "imdb", n: int = 1000, seed: int = 0, test_frac: float = 0.25,
                       max_words: int = 100) -> ProbeSlice:
    """`n` short labelled examples of IMDB or SST-2 (at most `max_words` words, labels balanced) inside
    the same prompt as the embedded probe slice, as a ProbeSlice. Needs the `datasets` package and a
    reachable hub; offline it fails within seconds with a clear message."""
    check_choice("name", name, HUB_SENTIMENT)
    check_positive("n", n, integer=True)
    check_range("test_frac", test_frac, 0.0, 1.0, inclusive=False)
    if not hub_reachable():
        raise ConnectionError(f"the {name!r} dataset needs the Hugging Face hub, which is not reachable from here "
                              "(or HF_HUB_OFFLINE is set); the embedded probe slice works offline: "
                              "saelib.data.corpus.probe_slice()")
    import datasets

    dataset_id, config, text_col, label_col, split = HUB_SENTIMENT[name]
    rows = datasets.load_dataset(dataset_id, config, split=split)
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    wanted = {0: n // 2, 1: n - n // 2}
    examples: list[tuple[str, int]] = []
    for i in order:
        text = " ".join(rows[i][text_col].replace("<br />", " ").split())              # IMDB has HTML breaks
        label = int(rows[i][label_col])
        if label in wanted and wanted[label] > 0 and len(text.split()) <= max_words:
            wanted[label] -= 1
            examples.append((PROBE_TEMPLATE.format(review=text), label))
            if len(examples) == n:
                break
    if len(examples) < n:
        raise ValueError(f"n={n} is out of range: {name!r} has only {len(examples)} balanced examples of "
                         f"at most max_words={max_words} words")
    n_test = max(1, round(n * test_frac))
    test, train = examples[:n_test], examples[n_test:]
    return ProbeSlice([t for t, _ in train], [y for _, y in train], [t for t, _ in test], [y for _, y in test])
