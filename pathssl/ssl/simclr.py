"""SimCLR: Chen, Kornblith, Norouzi, Hinton, "A Simple Framework for Contrastive Learning of
Visual Representations", ICML 2020, arXiv:2002.05709."""

from __future__ import annotations

import torch
from torch import Tensor

from pathssl.models.backbones import Backbone
from pathssl.ssl.base import METHODS, SSLMethod, collapse_std
from pathssl.ssl.heads import MLPHead
from pathssl.ssl.losses import nt_xent


@METHODS.register("simclr")
class SimCLR(SSLMethod):
    """SimCLR: two views -> backbone ``(B, E)`` -> 2-layer MLP ``(B, proj_dim)`` -> NT-Xent over
    the global batch (all ranks, gathered with gradient).

    Views: 2 global ``(B, 3, H, W)``.
    """

    def __init__(
        self,
        backbone: Backbone,
        proj_hidden_dim: int = 2048,
        proj_dim: int = 128,
        temperature: float = 0.1,
    ) -> None:
        super().__init__(backbone)
        self.projector = MLPHead(self.embed_dim, proj_hidden_dim, proj_dim, num_layers=2)
        self.temperature = temperature

    def forward(self, views: list[Tensor]) -> dict[str, Tensor]:
        self.check_views(views, 2)
        h = self.backbone(torch.cat(views[:2]))
        z1, z2 = self.projector(h).chunk(2)
        loss = nt_xent(z1, z2, self.temperature)
        return {"loss": loss, "embed_std": collapse_std(h)}
