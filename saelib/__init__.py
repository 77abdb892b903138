"""saelib: a minimal, fast companion library to DeepMind's Gated and JumpReLU sparse autoencoder papers."""
from saelib.models.architectures import ARCHITECTURES, create_sae
from saelib.models.base import SAE, LossOutput
from saelib.models.gated import GatedSAE
from saelib.models.jumprelu import JumpReLUSAE
from saelib.models.relu import ReLUSAE
from saelib.models.topk import TopKSAE
from saelib.training.loop import NonFiniteError, TrainConfig, train_sae
from saelib.io import load_sae, save_sae
from saelib.eval.metrics import evaluate_sae
from saelib.eval.synthetic import SyntheticActivations
from saelib.data.registry import load_model, load_text_dataset, model_tokenize, tokenize_padded, get_tokenizer
from saelib.data.corpus import generate_corpus, probe_slice

__all__ = ["SAE", "LossOutput", "ReLUSAE", "GatedSAE", "JumpReLUSAE", "TopKSAE", "ARCHITECTURES", "create_sae",
           "TrainConfig", "train_sae", "NonFiniteError", "save_sae", "load_sae", "evaluate_sae",
           "SyntheticActivations", "load_model", "load_text_dataset", "model_tokenize", "tokenize_padded",
           "get_tokenizer", "generate_corpus", "probe_slice"]
