"""Supervised training through the one loop: cross-entropy of a linear classifier on the
trunk's pooled features, on the labelled stream only (BiT-style supervised upstream training,
Kolesnikov et al. 2020, arXiv:1912.11370; and the "supervised only" baseline of S4L, Zhai et al.
2019, arXiv:1905.03670, trained on the same labels as :mod:`pathssl.ssl.s4l`).

The labelled images come from ``data.labelled`` (any ``pathssl eval`` dataset; see
:mod:`pathssl.train.labelled`): a seeded, stratified ``fraction`` of its training side.
"""

from __future__ import annotations

from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from pathssl.models.backbones import Backbone
from pathssl.ssl.base import METHODS, LabelledBatch, SSLMethod, collapse_std


def classification_loss(
    logits: Tensor, labels: Tensor, label_smoothing: float = 0.0
) -> tuple[Tensor, Tensor]:
    """``(B, C)`` logits, ``(B,)`` labels -> (mean cross-entropy, detached top-1 accuracy)."""
    loss = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    acc = (logits.detach().argmax(1) == labels).float().mean()
    return loss, acc


@METHODS.register("supervised")
class Supervised(SSLMethod):
    """Backbone ``(B, E)`` -> linear layer ``(B, num_classes)`` -> cross-entropy (with optional
    ``label_smoothing``) on the first view of each labelled image.

    Views: ``views`` are the labelled batch's views (``uses_tiles = False``: no unlabelled
    tiles are read); ``labelled.labels`` ``(B,)`` long."""

    needs_labels: ClassVar[bool] = True
    uses_tiles: ClassVar[bool] = False
    default_recipe: ClassVar[str | None] = "rotation"

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int = 2,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__(backbone)
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.n_global_views = 1
        self.label_smoothing = label_smoothing
        self.classifier = nn.Linear(self.embed_dim, num_classes)

    def forward(
        self, views: list[Tensor], labelled: LabelledBatch | None = None
    ) -> dict[str, Tensor]:
        if labelled is None:
            raise ValueError("supervised needs a labelled batch: forward(views, labelled=...)")
        self.check_views(labelled.views, 1)
        h = self.backbone(labelled.views[0])
        loss, acc = classification_loss(self.classifier(h), labelled.labels, self.label_smoothing)
        return {"loss": loss, "accuracy": acc, "embed_std": collapse_std(h)}
