"""Backbones (ResNet, ViT) by name; the projector heads SSL methods put on them live in
:mod:`pathssl.ssl.heads`."""

from pathssl.models import resnet_v2, split, vit_variants
from pathssl.models.backbones import (
    BACKBONES,
    ResNetBackbone,
    ViTBackbone,
    build_backbone,
    trunk_state_dict,
)

__all__ = [
    "BACKBONES",
    "ResNetBackbone",
    "ViTBackbone",
    "build_backbone",
    "resnet_v2",
    "split",
    "trunk_state_dict",
    "vit_variants",
]
