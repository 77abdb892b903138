"""saelib: a minimal, fast companion library to DeepMind's Gated and JumpReLU sparse autoencoder papers."""
from .architectures import ARCHITECTURES, create_sae
from .base import SAE, LossOutput
from .gated import GatedSAE
from .jumprelu import JumpReLUSAE
from .relu import ReLUSAE
from .topk import TopKSAE
from .train import NonFiniteError, TrainConfig, train_sae
from .io import load_sae, save_sae
from .metrics import evaluate_sae
from .synthetic import SyntheticActivations
from .registry import load_model, load_text_dataset, model_tokenize, tokenize_padded, get_tokenizer
from .corpus import generate_corpus, probe_slice

__all__ = ["SAE", "LossOutput", "ReLUSAE", "GatedSAE", "JumpReLUSAE", "TopKSAE", "ARCHITECTURES", "create_sae",
           "TrainConfig", "train_sae", "NonFiniteError", "save_sae", "load_sae", "evaluate_sae",
           "SyntheticActivations", "load_model", "load_text_dataset", "model_tokenize", "tokenize_padded",
           "get_tokenizer", "generate_corpus", "probe_slice"]
