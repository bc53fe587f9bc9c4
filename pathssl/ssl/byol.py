"""BYOL: Grill et al., "Bootstrap Your Own Latent: A New Approach to Self-Supervised
Learning", NeurIPS 2020, arXiv:2006.07733."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pathssl.models.backbones import ResNetBackbone, ViTBackbone
from pathssl.ssl.base import (
    METHODS,
    SSLMethod,
    collapse_std,
    cosine_schedule,
    ema_update,
    make_target,
)
from pathssl.ssl.heads import MLPHead
from pathssl.ssl.losses import byol_loss


@METHODS.register("byol")
class BYOL(SSLMethod):
    """BYOL: online network backbone ``(B, E)`` -> projector ``(B, D)`` -> predictor ``(B, D)``;
    target network = EMA of backbone + projector. Loss: symmetrised ``2 - 2 cos(p, z')``.

    Target momentum (paper's tau) at step k of K: ``1 - (1 - momentum) (cos(pi k / K) + 1) / 2``,
    applied in ``on_step_end``. Views: 2 global ``(B, 3, H, W)``.
    """

    def __init__(
        self,
        backbone: ResNetBackbone | ViTBackbone,
        proj_hidden_dim: int = 4096,
        proj_dim: int = 256,
        momentum: float = 0.996,
    ) -> None:
        super().__init__(backbone)
        self.projector = MLPHead(self.embed_dim, proj_hidden_dim, proj_dim, num_layers=2)
        self.predictor = MLPHead(proj_dim, proj_hidden_dim, proj_dim, num_layers=2)
        self.target = make_target(nn.Sequential(self.backbone, self.projector))
        self.base_momentum = momentum

    def forward(self, views: list[Tensor]) -> dict[str, Tensor]:
        self.check_views(views, 2)
        x = torch.cat(views[:2])
        h = self.backbone(x)
        p1, p2 = self.predictor(self.projector(h)).chunk(2)
        with torch.no_grad():
            z1, z2 = self.target(x).chunk(2)
        loss = byol_loss(p1, z2) + byol_loss(p2, z1)
        return {"loss": loss, "embed_std": collapse_std(h)}

    def momentum_at(self, step: int, max_steps: int) -> float:
        return cosine_schedule(step, max_steps, self.base_momentum, 1.0)

    def on_step_end(self, step: int, max_steps: int) -> None:
        super().on_step_end(step, max_steps)
        online = nn.Sequential(self.backbone, self.projector)
        ema_update(self.target, online, self.momentum_at(step, max_steps))

    def export_backbone(self) -> nn.Module:
        return self.backbone
