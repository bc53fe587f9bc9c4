"""Stain and geometry augmentation for pathology, in two backends with one semantics.

* albumentations transforms (CPU, one (H, W, 3) uint8 image at a time): :class:`HEDJitter`,
  :class:`RandStainNA`, :class:`MacenkoNormalize`, :class:`ReinhardNormalize`,
  :class:`MacenkoAugment`, :class:`Dihedral`, :class:`FieldOfViewCrop`;
* batched torch twins on (B, 3, H, W) tensors, CPU or GPU (``pathssl.augment.torch_ops``):
  ``BatchHEDJitter``, ``BatchRandStainNA``, ``BatchMacenkoNormalize``, ``BatchReinhardNormalize``,
  ``BatchMacenkoAugment``, ``BatchDihedral``, ``BatchRandomResizedCrop``, ``BatchMultiFOVCrop``;
* view recipes by name (:data:`RECIPES`, :func:`build_recipe`, :func:`load_recipe`): every
  recipe can add RandStainNA, Macenko augmentation, Reinhard/Macenko normalisation to a target
  and multi-field-of-view crops to its views (:mod:`.recipes`, :class:`ViewSpec`), and the
  one patch-mask sampler every masked path uses (``random_patch_mask``, in
  ``pathssl.augment.masking``);
* :func:`compute_stain_stats` (RandStainNA statistics of tile stores) and :func:`preview_grid`.

The torch names are imported lazily (``from pathssl.augment import BatchHEDJitter`` works).
"""

from __future__ import annotations

import importlib
from typing import Any

from .albu import (
    Dihedral,
    FieldOfViewCrop,
    HEDJitter,
    MacenkoAugment,
    MacenkoNormalize,
    RandStainNA,
    ReinhardNormalize,
)
from .geometry import FOVCrop, dihedral, multi_fov_crop
from .macenko import MacenkoStains, fit_macenko
from .randstainna import (
    StainStats,
    compute_stain_stats,
    sample_templates,
    stats_from_images,
    tile_stats,
)
from .recipes import RECIPES, build_recipe, load_recipe, with_fov
from .reinhard import ReinhardTarget, fit_reinhard, reinhard_normalize
from .stain import apply_od_affine, hed_jitter, hed_to_rgb, restandardise, rgb_to_hed, rgb_to_od
from .view_recipe import ViewRecipe
from .view_spec import ViewSpec

_LAZY = {
    "BatchDihedral": "torch_ops",
    "BatchHEDJitter": "torch_ops",
    "BatchMacenkoAugment": "torch_ops",
    "BatchMacenkoNormalize": "torch_ops",
    "BatchMultiFOVCrop": "torch_ops",
    "BatchRandStainNA": "torch_ops",
    "BatchRandomResizedCrop": "torch_ops",
    "BatchReinhardNormalize": "torch_ops",
    "fit_macenko_batch": "torch_ops",
    "random_patch_mask": "masking",
    "preview_grid": "preview",
    "load_preview_images": "preview",
    "write_preview": "preview",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "RECIPES",
    "Dihedral",
    "FOVCrop",
    "FieldOfViewCrop",
    "HEDJitter",
    "MacenkoAugment",
    "MacenkoNormalize",
    "MacenkoStains",
    "RandStainNA",
    "ReinhardNormalize",
    "ReinhardTarget",
    "StainStats",
    "ViewRecipe",
    "ViewSpec",
    "apply_od_affine",
    "build_recipe",
    "compute_stain_stats",
    "dihedral",
    "fit_macenko",
    "fit_reinhard",
    "hed_jitter",
    "hed_to_rgb",
    "load_recipe",
    "multi_fov_crop",
    "reinhard_normalize",
    "restandardise",
    "rgb_to_hed",
    "rgb_to_od",
    "sample_templates",
    "stats_from_images",
    "tile_stats",
    "with_fov",
    *_LAZY,
]
