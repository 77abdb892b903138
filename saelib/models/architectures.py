"""Architectures by name: `create_sae("jumprelu", d_in, d_sae, **options)`."""
from __future__ import annotations

from saelib.models.base import SAE
from saelib.models.batchtopk import BatchTopKSAE
from saelib.models.gated import GatedSAE
from saelib.models.jumprelu import JumpReLUSAE
from saelib.models.relu import ReLUSAE
from saelib.models.topk import TopKSAE
from saelib.validation import check_choice

ARCHITECTURES: dict[str, type[SAE]] = {cls.architecture: cls for cls in (ReLUSAE, GatedSAE, JumpReLUSAE, TopKSAE,
                                                                        BatchTopKSAE)}


def create_sae(architecture: str, d_in: int, d_sae: int, **options) -> SAE:
    """Build an SAE by architecture name ("standard", "gated", "jumprelu", "topk", "batchtopk")."""
    check_choice("architecture", architecture, ARCHITECTURES)
    return ARCHITECTURES[architecture](d_in, d_sae, **options)
