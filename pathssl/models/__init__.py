"""Backbones (ResNet, ViT) by name and the heads SSL methods put on them."""

from pathssl.models.backbones import (
    BACKBONES,
    ResNetBackbone,
    ViTBackbone,
    build_backbone,
    trunk_state_dict,
)
from pathssl.models.heads import DINOHead, MLPHead

__all__ = [
    "BACKBONES",
    "DINOHead",
    "MLPHead",
    "ResNetBackbone",
    "ViTBackbone",
    "build_backbone",
    "trunk_state_dict",
]
