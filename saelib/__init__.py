"""saelib: a small, fast PyTorch companion to DeepMind's Gated and JumpReLU sparse autoencoder papers.

    from saelib import JumpReLUSAE, TrainConfig, train_sae, evaluate_sae, save_sae, load_sae

The models (ReLU / April-update, Gated, JumpReLU, TopK, BatchTopK), one training loop for all of them, the
metrics (including the corrected relative reconstruction bias and the first version's), SAELens-layout
save/load, and the language models by name (`load_model("embedded")` works offline). The layers below
(saelib.models, .fast, .training, .data, .eval, .lab) are described in docs/design.md §2.
"""
from __future__ import annotations

from saelib.data.activations import ActivationBuffer, ActivationCache, cache_activations
from saelib.data.corpus import generate_corpus, probe_slice
from saelib.data.registry import get_tokenizer, load_model, load_text_dataset, model_tokenize, tokenize_padded
from saelib.eval.lm_metrics import evaluate_lm, loss_recovered
from saelib.interop import from_sae_lens, load_gemma_scope_npz, to_sae_lens
from saelib.io import load_sae, save_sae
from saelib.kernels import KERNELS, get_kernel
from saelib.metrics import (
    MetricsAccumulator,
    cosine_similarity,
    dead_features,
    dense_features,
    evaluate_sae,
    explained_variance,
    feature_frequencies,
    fraction_of_variance_unexplained,
    l0,
    mse,
    relative_reconstruction_bias,
    relative_reconstruction_bias_v1,
)
from saelib.models.architectures import ARCHITECTURES, create_sae
from saelib.models.base import SAE, LossOutput
from saelib.models.batchtopk import BatchTopKSAE
from saelib.models.gated import GatedSAE
from saelib.models.jumprelu import JumpReLUSAE
from saelib.models.relu import ReLUSAE
from saelib.models.topk import TopKSAE
from saelib.synthetic import SyntheticActivations, feature_recovery
from saelib.train import NonFiniteError, TrainConfig, train_sae


def _version() -> str:
    """The installed distribution's version (from pyproject.toml); for an uninstalled source tree, the
    version line of the pyproject.toml beside the package; "0+unknown" when neither is there."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("saelib")
    except PackageNotFoundError:
        import re
        from pathlib import Path

        pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
        found = re.search(r'^version\s*=\s*"([^"]+)"', pyproject.read_text(), re.M) if pyproject.is_file() else None
        return found.group(1) if found else "0+unknown"


__version__ = _version()

__all__ = [
    "__version__",
    # models
    "SAE", "LossOutput", "ReLUSAE", "GatedSAE", "JumpReLUSAE", "TopKSAE", "BatchTopKSAE", "ARCHITECTURES",
    "create_sae", "KERNELS", "get_kernel",
    # training
    "TrainConfig", "train_sae", "NonFiniteError",
    # metrics
    "evaluate_sae", "relative_reconstruction_bias", "relative_reconstruction_bias_v1", "l0", "mse",
    "fraction_of_variance_unexplained", "explained_variance", "cosine_similarity", "feature_frequencies",
    "dead_features", "dense_features", "MetricsAccumulator", "evaluate_lm", "loss_recovered",
    # save / load
    "save_sae", "load_sae", "to_sae_lens", "from_sae_lens", "load_gemma_scope_npz",
    # language models, text and activations
    "load_model", "load_text_dataset", "model_tokenize", "tokenize_padded", "get_tokenizer", "generate_corpus",
    "probe_slice", "ActivationBuffer", "ActivationCache", "cache_activations",
    # synthetic ground truth
    "SyntheticActivations", "feature_recovery",
]
