"""BYOL: Grill et al., "Bootstrap Your Own Latent: A New Approach to Self-Supervised
Learning", NeurIPS 2020, arXiv:2006.07733."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pathssl.models.backbones import Backbone
from pathssl.ssl.base import METHODS, MomentumTargetMethod, collapse_std
from pathssl.ssl.heads import MLPHead
from pathssl.ssl.losses import byol_loss


@METHODS.register("byol")
class BYOL(MomentumTargetMethod):
    """BYOL: online network backbone ``(B, E)`` -> projector ``(B, D)`` -> predictor ``(B, D)``;
    target network = EMA of backbone + projector. Loss: symmetrised ``2 - 2 cos(p, z')``.

    Target momentum (paper's tau) at step k of K: ``1 - (1 - momentum) (cos(pi k / K) + 1) / 2``,
    applied in ``on_step_end``. Views: 2 global ``(B, 3, H, W)``.
    """

    def __init__(
        self,
        backbone: Backbone,
        proj_hidden_dim: int = 4096,
        proj_dim: int = 256,
        momentum: float = 0.996,
    ) -> None:
        super().__init__(backbone)
        self.projector = MLPHead(self.embed_dim, proj_hidden_dim, proj_dim, num_layers=2)
        self.predictor = MLPHead(proj_dim, proj_hidden_dim, proj_dim, num_layers=2)
        self.target = self.init_target(momentum)

    def forward(self, views: list[Tensor]) -> dict[str, Tensor]:
        self.check_views(views, 2)
        x = torch.cat(views[:2])
        h = self.backbone(x)
        p1, p2 = self.predictor(self.projector(h)).chunk(2)
        with torch.no_grad():
            z1, z2 = self.target(x).chunk(2)
        loss = byol_loss(p1, z2) + byol_loss(p2, z1)
        return {"loss": loss, "embed_std": collapse_std(h)}

    def online(self) -> nn.Sequential:
        return nn.Sequential(self.backbone, self.projector)

    def target_network(self) -> nn.Module:
        return self.target
