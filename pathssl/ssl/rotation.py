"""Rotation prediction: Gidaris, Singh, Komodakis, "Unsupervised Representation Learning by
Predicting Image Rotations", ICLR 2018, arXiv:1803.07728 (the pretext of S4L, Zhai et al. 2019).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from pathssl.models.backbones import Backbone
from pathssl.ssl.base import METHODS, SSLMethod, collapse_std
from pathssl.ssl.heads import MLPHead


def rotate_four(x: Tensor) -> tuple[Tensor, Tensor]:
    """``(B, C, S, S)`` -> every image at 0, 90, 180 and 270 degrees ``(4B, C, S, S)`` (all B
    images at 0 first, then at 90, ...) and the labels ``(4B,)`` long (0..3, quarter turns
    counter-clockwise)."""
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"rotation needs square views, got {tuple(x.shape[-2:])}")
    rotated = torch.cat([torch.rot90(x, k, dims=(-2, -1)) for k in range(4)])
    labels = torch.arange(4, device=x.device).repeat_interleave(x.shape[0])
    return rotated, labels


@METHODS.register("rotation")
class Rotation(SSLMethod):
    """4-way rotation prediction: each view is shown at the four quarter turns (Gidaris et al.
    found all four per image in one batch best); backbone ``(4B, E)`` -> head (``head_layers``
    linear layers, hidden ``head_hidden_dim`` with BN + ReLU) ``(4B, 4)`` -> cross-entropy.

    Tissue has no canonical orientation: what a network can learn here on slides is a question
    for the benchmark table (kNN against random init), not an assumption.

    Views: 1 square ``(B, 3, S, S)`` (the ``rotation`` recipe has no dihedral step, which would
    randomise the label).
    """

    def __init__(
        self,
        backbone: Backbone,
        head_layers: int = 1,
        head_hidden_dim: int = 512,
    ) -> None:
        super().__init__(backbone)
        self.n_global_views = 1
        self.head = MLPHead(self.embed_dim, head_hidden_dim, 4, num_layers=head_layers)

    def forward(self, views: list[Tensor]) -> dict[str, Tensor]:
        self.check_views(views, 1)
        x, labels = rotate_four(views[0])
        h = self.backbone(x)
        logits = self.head(h)
        loss = F.cross_entropy(logits, labels)
        acc = (logits.detach().argmax(1) == labels).float().mean()
        return {"loss": loss, "accuracy": acc, "embed_std": collapse_std(h[: views[0].shape[0]])}
