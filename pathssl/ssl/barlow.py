"""Barlow Twins: Zbontar, Jing, Misra, LeCun, Deny, "Barlow Twins: Self-Supervised Learning via
Redundancy Reduction", ICML 2021, arXiv:2103.03230."""

from __future__ import annotations

import torch
from torch import Tensor

from pathssl.models.backbones import Backbone
from pathssl.ssl.base import METHODS, SSLMethod, collapse_std
from pathssl.ssl.heads import MLPHead
from pathssl.ssl.losses import barlow_twins_loss


@METHODS.register("barlow_twins")
class BarlowTwins(SSLMethod):
    """Barlow Twins: backbone ``(B, E)`` -> 3-layer projector (BN + ReLU hidden) ``(B, D)``;
    loss on the ``(D, D)`` cross-correlation of the two views' batch-standardised projections
    over the global batch. Views: 2 global ``(B, 3, H, W)``.
    """

    def __init__(
        self,
        backbone: Backbone,
        proj_dim: int = 8192,
        lambd: float = 0.0051,
    ) -> None:
        super().__init__(backbone)
        self.projector = MLPHead(self.embed_dim, proj_dim, proj_dim, num_layers=3)
        self.lambd = lambd

    def forward(self, views: list[Tensor]) -> dict[str, Tensor]:
        self.check_views(views, 2)
        h = self.backbone(torch.cat(views[:2]))
        z1, z2 = self.projector(h).chunk(2)
        loss = barlow_twins_loss(z1, z2, self.lambd)
        return {"loss": loss, "embed_std": collapse_std(h)}
