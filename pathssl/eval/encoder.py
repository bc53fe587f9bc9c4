"""Encoders for evaluation: build or load one, extract frozen features (fine-tuning:
:mod:`pathssl.eval.finetune`).

A pretraining checkpoint (``pathssl pretrain``) is a ``torch.save`` dict with ``"trunk"`` (a
torchvision-named backbone state dict) and ``"meta"`` (``backbone`` name, optional
``backbone_params`` / ``image_size``, normalisation ``mean`` / ``std``, ``tile_mpp``); see
``pathssl/train/checkpoint.py``. External encoder files (torchvision ImageNet weights, timm /
DINO / DINOv2 checkpoints, published pathology encoders, BiT ``.npz``) load through the same call
(:mod:`pathssl.models.external`). Without a checkpoint the backbone is randomly initialised (a
useful floor for any probe). :func:`tile_dataset` reads labelled tiles at the encoder's
``tile_mpp``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from pathssl.eval.data import LabelledTiles, TileImages
from pathssl.models.backbones import Backbone, build_backbone
from pathssl.models.external import IMAGENET_MEAN, IMAGENET_STD
from pathssl.models.pretrained import load_pretrained


@dataclass
class Encoder:
    """A backbone ``(B, 3, H, W) -> (B, D)`` with the normalisation its training used."""

    model: Backbone
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    name: str
    tile_mpp: float | None = None  # resolution of the tiles it was trained on (None: unknown)

    def normalise(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` uint8 -> normalised float32."""
        m = torch.tensor(self.mean, device=images.device).view(1, 3, 1, 1)
        s = torch.tensor(self.std, device=images.device).view(1, 3, 1, 1)
        return (images.float() / 255.0 - m) / s


def load_encoder(
    backbone: str | None = None,
    checkpoint: str | Path | None = None,
    image_size: int = 224,
    seed: int = 0,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    tile_mpp: float | str | None = None,
) -> Encoder:
    """The checkpoint's trunk, or, without a checkpoint, a randomly initialised ``backbone``
    (seeded) with ImageNet normalisation (or ``mean``/``std``) and ``tile_mpp`` as given.

    ``checkpoint``: a pathssl pretraining checkpoint (its ``meta`` names the backbone,
    normalisation and ``tile_mpp``) or an external encoder file (``torchvision:resnet50``, a timm
    / DINO / DINOv2 ``.pth`` / ``.bin`` / ``.safetensors``, a BiT ``.npz``:
    :mod:`pathssl.models.external`), whose ``mean``/``std``/``tile_mpp`` come from the
    arguments (required unless its layout defines them; ``tile_mpp="none"``: unknown)."""
    if checkpoint is None:
        if backbone is None:
            raise ValueError("give a backbone name or a checkpoint")
        torch.manual_seed(seed)
        params: dict[str, Any] = {"image_size": image_size} if backbone.startswith("vit") else {}
        model = build_backbone(backbone, **params)
        m, s = mean or IMAGENET_MEAN, std or IMAGENET_STD
        mpp = None if tile_mpp is None or str(tile_mpp).lower() == "none" else float(tile_mpp)
        return Encoder(model.eval(), _rgb(m), _rgb(s), backbone, mpp)
    model, meta = load_pretrained(
        checkpoint,
        expect_backbone=backbone,
        image_size=image_size,
        mean=mean,
        std=std,
        tile_mpp=tile_mpp,
    )
    name = str(meta.get("backbone", backbone))
    mpp = meta.get("tile_mpp")
    return Encoder(
        model.eval(),
        _rgb(meta.get("mean", IMAGENET_MEAN)),
        _rgb(meta.get("std", IMAGENET_STD)),
        name,
        float(mpp) if mpp is not None else None,
    )


def _rgb(values: Sequence[float]) -> tuple[float, float, float]:
    v = [float(x) for x in values]
    if len(v) != 3:
        raise ValueError(f"mean and std take 3 values (R, G, B), got {v}")
    return v[0], v[1], v[2]


def tile_dataset(
    encoder: Encoder,
    tiles: LabelledTiles,
    size: int = 224,
    log: Callable[[str], None] | None = print,
) -> TileImages:
    """``tiles`` as the encoder reads them: at its ``tile_mpp`` (resampled when the tiles' mpp
    differs by more than 10 %, see :class:`~pathssl.eval.data.TileImages`), ``size`` px; ``log``
    gets one line saying at which mpp."""
    if encoder.tile_mpp is None and log is not None:
        known = "unknown" if tiles.mpp is None else f"{tiles.mpp:g} um/px"
        log(f"tiles ({known}) taken as they are: encoder {encoder.name} records no tile_mpp")
    return TileImages(tiles, size, target_mpp=encoder.tile_mpp, log=log)


def _loader(dataset: Dataset[tuple[Tensor, int]], batch_size: int, shuffle: bool) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=0)


@torch.no_grad()
def extract_features(
    encoder: Encoder,
    dataset: Dataset[tuple[Tensor, int]],
    batch_size: int = 64,
    device: str | torch.device = "cpu",
) -> tuple[Tensor, Tensor]:
    """Frozen features ``(N, D)`` float32 and labels ``(N,)`` int64 of a dataset of
    ``((3, H, W) uint8, label)`` items, on the CPU."""
    model = encoder.model.to(device).eval()
    feats, labels = [], []
    for images, y in _loader(dataset, batch_size, shuffle=False):
        feats.append(model(encoder.normalise(images.to(device))).float().cpu())
        labels.append(torch.as_tensor(y).long())
    if not feats:
        raise ValueError("empty dataset")
    return torch.cat(feats), torch.cat(labels)


def feature_dim(encoder: Encoder) -> int:
    """Output width D of the encoder (the backbones' ``embed_dim``)."""
    return int(encoder.model.embed_dim)
