"""Architectures by name: `create_sae("jumprelu", d_in, d_sae, **options)`."""
from __future__ import annotations

from .base import SAE, check_choice
from .gated import GatedSAE
from .jumprelu import JumpReLUSAE
from .relu import ReLUSAE
from .topk import TopKSAE

ARCHITECTURES: dict[str, type[SAE]] = {cls.architecture: cls for cls in (ReLUSAE, GatedSAE, JumpReLUSAE, TopKSAE)}


def create_sae(architecture: str, d_in: int, d_sae: int, **options) -> SAE:
    """Build an SAE by architecture name ("standard", "gated", "jumprelu", "topk")."""
    check_choice("architecture", architecture, ARCHITECTURES)
    return ARCHITECTURES[architecture](d_in, d_sae, **options)
