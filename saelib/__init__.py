"""saelib: a minimal, fast companion library to DeepMind's Gated and JumpReLU sparse autoencoder papers."""
from .architectures import ARCHITECTURES, create_sae
from .base import SAE, LossOutput
from .gated import GatedSAE
from .jumprelu import JumpReLUSAE
from .relu import ReLUSAE
from .topk import TopKSAE
from .train import NonFiniteError, TrainConfig, train_sae

__all__ = ["SAE", "LossOutput", "ReLUSAE", "GatedSAE", "JumpReLUSAE", "TopKSAE", "ARCHITECTURES", "create_sae",
           "TrainConfig", "train_sae", "NonFiniteError"]
