"""What a batch means to the training loop (:class:`pathssl.train.loop.BatchStep`).

:class:`ViewStep` (SSL): uint8 tiles ``(B, 3, S, S)`` (decoded by DataLoader workers, or JPEG bytes
decoded on the GPU) -> batched views on the device (``recipe.torch()``), normalised by the
training tiles' mean/std -> ``method(views)``. :class:`SupervisedStep`: ``{"image", **targets}``
-> ``module(images, targets)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from pathssl.data import decode_jpeg_batch


class ViewStep:
    """SSL: uint8 tiles -> normalised views -> ``model(views)``.

    ``views``: a module ``(B, 3, S, S) uint8 -> {"views": [(B, 3, s, s) float in [0, 1]]}``
    called as ``views(x, generator)``; ``mean``/``std``: per-channel normalisation (RGB, [0, 1]
    scale)."""

    def __init__(
        self,
        views: nn.Module,
        mean: Sequence[float],
        std: Sequence[float],
        device: torch.device,
        generator: torch.Generator,
        channels_last: bool = False,
    ) -> None:
        self.views = views
        self.device = device
        self.generator = generator
        self.channels_last = channels_last
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)

    def images(self, batch: dict[str, Any]) -> Tensor:
        """The batch's tiles as ``(B, 3, S, S)`` uint8 on the device."""
        if "jpeg" in batch:
            return decode_jpeg_batch(batch["jpeg"], self.device)
        x: Tensor = batch["image"]
        return x.to(self.device, non_blocking=True)

    @torch.no_grad()
    def make_views(self, images: Tensor) -> list[Tensor]:
        out = self.views(images, self.generator)
        views = [(v.float() - self.mean) / self.std for v in out["views"]]
        if self.channels_last:
            views = [v.contiguous(memory_format=torch.channels_last) for v in views]
        return views

    def prepare(self, batch: dict[str, Any]) -> list[Tensor]:
        return self.make_views(self.images(batch))

    def forward(self, model: nn.Module, inputs: list[Tensor]) -> dict[str, Tensor]:
        out: dict[str, Tensor] = model(inputs)
        return out


class SupervisedStep:
    """Supervised: ``{image_key: images, **targets}`` -> ``model(images, targets)``."""

    def __init__(self, device: torch.device, image_key: str = "image") -> None:
        self.device = device
        self.image_key = image_key

    def prepare(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        moved = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        return moved.pop(self.image_key), moved

    def forward(
        self, model: nn.Module, inputs: tuple[Tensor, dict[str, Tensor]]
    ) -> dict[str, Tensor]:
        out: dict[str, Tensor] = model(*inputs)
        return out
