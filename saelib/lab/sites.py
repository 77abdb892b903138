"""Where an experiment's activations come from: a language model's hook (`LMSite`, activations cached once on
disk per model weights, hook and scale) or synthetic data with known features (`SyntheticSite`).
"""
from __future__ import annotations

import hashlib
import math

import torch

from saelib.lab.paths import output_dir
from saelib.lab.scales import Scale
from saelib.lab.timing import timed
from saelib.models.base import SAE


class Site:
    """Where training and evaluation activations come from (subclasses: LMSite, SyntheticSite)."""

    scale: Scale
    d_in: int
    key: dict              # identifies the activations (part of every run's cache key)
    eval_acts: torch.Tensor   # [eval_tokens, d_in], already scaled

    def train_batches(self, batch_size: int, seed: int):  # -> an object with next_batch()/state_dict()
        raise NotImplementedError

    def extra_metrics(self, sae: SAE) -> dict:
        return {}

    def recipe(self) -> dict | None:
        """How a worker process rebuilds this site (saelib.lab.workers): {"kind", "kwargs", "key"}; None when it
        cannot be rebuilt from plain arguments."""
        return None


def model_fingerprint(model: torch.nn.Module, max_elements: int = 50_000_000) -> str:
    """A short hash of a model's weights (names, shapes, values), part of every LM cache key.

    Models up to `max_elements` parameters are hashed whole; larger ones (hub models) through an evenly
    strided sample of each tensor, which still tells apart any two checkpoints in practice."""
    digest = hashlib.sha256()
    state = model.state_dict()
    total = sum(t.numel() for t in state.values())
    for name, tensor in sorted(state.items()):
        flat = tensor.detach().reshape(-1).cpu()
        if total > max_elements:
            flat = flat[:: max(1, flat.numel() * 64 // max_elements)]
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        flat = flat.clone(memory_format=torch.contiguous_format)          # stride 1, even for one element
        digest.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    return digest.hexdigest()[:16]


class LMSite(Site):
    """Activations of a language model at one hook, cached once on disk per (model, hook, scale)."""

    def __init__(self, model_name: str, hook: str, scale: Scale, *, seed: int = 0,
                 normalization: str = "unit_mean_squared_norm", device: str = "cpu", model=None,
                 lm_eval_tokens: int | None = None, progress: bool = True):
        from saelib.data.activations import ActivationCache, activation_cache_complete, cache_activations, hook_d_in
        from saelib.data.registry import load_model

        self.model_name, self.hook, self.scale, self.seed = model_name, hook, scale, seed
        self.normalization, self.device, self.lm_eval_tokens = normalization, device, lm_eval_tokens
        self.model = model if model is not None else load_model(model_name, device=device)
        self.d_in = hook_d_in(self.model, hook)
        ctx = self.model.cfg.n_ctx
        weights = model_fingerprint(self.model)          # retrained or swapped weights: new activations
        self.key = {"model": model_name, "weights": weights, "hook": hook, "train_tokens": scale.train_tokens,
                    "eval_tokens": scale.eval_tokens, "normalization": normalization, "ctx": ctx}
        root = output_dir(scale.name) / "cache" / model_name / weights / hook.replace(".", "_")
        # enough packed rows for the kept (non-BOS) positions; documents are generated/streamed lazily
        rows_needed = {split: math.ceil(n * 1.25 / (ctx - 1)) + 1 for split, n in
                       (("train", scale.train_tokens), ("heldout", scale.eval_tokens))}
        paths = {}
        for split, n_tokens in (("train", scale.train_tokens), ("heldout", scale.eval_tokens)):
            path = root / f"{split}_{n_tokens}"
            if not activation_cache_complete(path):                 # missing, interrupted or damaged
                with timed("activation_extraction", scale=scale.name):
                    tokens = self._tokens(split, rows_needed[split], ctx)
                    cache_activations(self.model, hook, tokens, n_tokens, path, progress=progress)
            paths[split] = path
        self._train_path = paths["train"]
        train = ActivationCache(paths["train"], batch_size=1, normalization=normalization)
        self.scale_factor = train.scale
        held = ActivationCache(paths["heldout"], batch_size=1, normalization=normalization, scale=self.scale_factor)
        self.eval_acts = held.tensor()                                           # [eval_tokens, d_in]
        n_rows = max(1, (lm_eval_tokens or scale.eval_tokens) // ctx)
        self.lm_tokens = self._tokens("heldout", n_rows, ctx)[:n_rows]

    def recipe(self) -> dict | None:
        # a model passed in by hand is rebuilt from the registry; the worker checks the weights' fingerprint (key)
        return {"kind": "lm", "key": self.key,
                "kwargs": {"model_name": self.model_name, "hook": self.hook, "scale": self.scale, "seed": self.seed,
                           "normalization": self.normalization, "device": "cpu",
                           "lm_eval_tokens": self.lm_eval_tokens}}

    def _tokens(self, split: str, n_rows: int, ctx: int) -> torch.Tensor:
        """n_rows packed rows [n_rows, ctx] of the model's text for `split`, generating/streaming documents
        until there are enough."""
        from saelib.data.registry import load_text_dataset, model_tokenize

        n_docs = 64
        while True:                                              # grow until the packed rows suffice
            tokens = model_tokenize(self.model, load_text_dataset(self.model_name, split, n_docs=n_docs), ctx)
            if tokens.shape[0] >= n_rows:
                return tokens[:n_rows]
            n_docs = math.ceil(n_docs * max(2.0, 1.2 * n_rows / max(1, tokens.shape[0])))

    def train_batches(self, batch_size: int, seed: int):
        from saelib.data.activations import ActivationCache

        return ActivationCache(self._train_path, batch_size=batch_size, normalization=self.normalization,
                               scale=self.scale_factor, seed=seed)

    def extra_metrics(self, sae: SAE) -> dict:
        from saelib.eval.lm_metrics import evaluate_lm, lm_reference

        with timed("lm_evaluation", scale=self.scale.name):
            if getattr(self, "_lm_reference", None) is None:      # the clean and zero-ablated runs, once per site
                n_rows, ctx = self.lm_tokens.shape
                resid_bytes = n_rows * ctx * self.model.cfg.d_model * 4
                self._lm_reference = lm_reference(self.model, self.hook, self.lm_tokens,
                                                  keep_resid=resid_bytes <= 512 * 2**20)
            lm = evaluate_lm(self.model, sae, self.hook, self.lm_tokens, scale=self.scale_factor,
                             reference=self._lm_reference)
        return {k: v for k, v in lm.as_dict().items() if k in
                ("ce_clean", "ce_sae", "ce_zero", "delta_lm_loss", "loss_recovered")}


class SyntheticSite(Site):
    """Activations with known sparse features in superposition (saelib.eval.synthetic)."""

    def __init__(self, scale: Scale, *, seed: int = 0, normalization: str = "unit_mean_squared_norm",
                 **synthetic_options):
        from saelib.data.normalization import estimate_scale
        from saelib.eval.synthetic import SyntheticActivations

        self.scale, self.seed, self.normalization = scale, seed, normalization
        self.synthetic_options = dict(synthetic_options)
        self.data = SyntheticActivations(seed=seed, **synthetic_options)
        self.d_in = self.data.d_in
        self.key = {"synthetic": {k: v for k, v in sorted(synthetic_options.items())}, "seed": seed,
                    "normalization": normalization,
                    "train_tokens": scale.train_tokens, "eval_tokens": scale.eval_tokens}
        train_acts = self.data.sample(scale.train_tokens, seed=seed + 1)             # [train_tokens, d_in]
        self.scale_factor = estimate_scale(train_acts, normalization)
        self.train_acts = train_acts * self.scale_factor
        self.eval_acts = self.data.sample(scale.eval_tokens, seed=seed + 2) * self.scale_factor

    def recipe(self) -> dict | None:
        return {"kind": "synthetic", "key": self.key,
                "kwargs": {"scale": self.scale, "seed": self.seed, "normalization": self.normalization,
                           **self.synthetic_options}}

    def train_batches(self, batch_size: int, seed: int):
        return self.train_acts             # train_sae draws seeded minibatches from a tensor

    def extra_metrics(self, sae: SAE) -> dict:
        from saelib.eval.synthetic import feature_recovery

        return {"feature_recovery": float(feature_recovery(self.data.directions, sae.W_dec.detach())),
                "true_l0": float(self.data.true_l0)}
