"""Reading a pretraining checkpoint's encoder: the one place every later stage loads it from.

A checkpoint written by ``pathssl pretrain`` is a ``torch.save`` dict with ``"trunk"`` (the
backbone's state dict with torchvision parameter names) and ``"meta"`` (``backbone`` name, optional
``backbone_params`` / ``image_size``, normalisation ``mean`` / ``std``, ``tile_mpp``, ...).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pathssl.models.backbones import Backbone, build_backbone


def read_pretrained(
    path: str | Path, expect_backbone: str | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(trunk state dict, meta)`` of a pretraining checkpoint (tensors-only loading).

    Raises FileNotFoundError for a missing file and ValueError when ``expect_backbone`` is given
    and the checkpoint holds another backbone.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    ckpt: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    if "trunk" not in ckpt:
        raise ValueError(f"{path} is not a pathssl pretraining checkpoint (no 'trunk')")
    meta: dict[str, Any] = dict(ckpt.get("meta", {}))
    name = meta.get("backbone")
    if expect_backbone is not None and name not in (None, expect_backbone):
        raise ValueError(f"checkpoint {path} holds a {name} trunk, not {expect_backbone}")
    return ckpt["trunk"], meta


def load_pretrained(
    path: str | Path, expect_backbone: str | None = None, image_size: int | None = None
) -> tuple[Backbone, dict[str, Any]]:
    """The checkpoint's backbone, built by name from its ``meta`` with its weights loaded
    (eval mode, CPU), and the ``meta``. ``image_size`` is the ViT input size when the
    checkpoint does not record one."""
    trunk, meta = read_pretrained(path, expect_backbone)
    name = str(meta.get("backbone", expect_backbone))
    params = dict(meta.get("backbone_params", {}))
    if name.startswith("vit"):
        params.setdefault("image_size", int(meta.get("image_size", image_size or 224)))
    backbone = build_backbone(name, **params)
    backbone.load_state_dict(trunk)
    return backbone.eval(), meta
