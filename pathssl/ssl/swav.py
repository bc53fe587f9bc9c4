"""SwAV: Caron, Misra, Mairal, Goyal, Bojanowski, Joulin, "Unsupervised Learning of Visual
Features by Contrasting Cluster Assignments", NeurIPS 2020, arXiv:2006.09882."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pathssl.models.backbones import ResNetBackbone, ViTBackbone
from pathssl.ssl.base import METHODS, SSLMethod, collapse_std, multi_crop_apply
from pathssl.ssl.heads import MLPHead
from pathssl.ssl.losses import sinkhorn_knopp


@METHODS.register("swav")
class SwAV(SSLMethod):
    """SwAV with multi-crop: every crop -> backbone ``(B, E)`` -> projector -> L2-normalised
    ``(B, D)`` -> scores against ``num_prototypes`` unit prototypes ``(B, K)``. Codes for each
    global crop come from Sinkhorn-Knopp (``epsilon``, ``sinkhorn_iterations``) over the global
    batch; every other crop predicts them (softmax at ``temperature``).

    Prototypes are renormalised after every optimiser step and their gradients dropped during
    the first ``freeze_prototypes_steps`` steps. The feature queue of the paper (for small
    batches) is not implemented.

    Views: 2 global ``(B, 3, H, W)`` then ``n_local_views`` local ``(B, 3, h, w)``.
    """

    def __init__(
        self,
        backbone: ResNetBackbone | ViTBackbone,
        proj_hidden_dim: int = 2048,
        proj_dim: int = 128,
        num_prototypes: int = 3000,
        temperature: float = 0.1,
        epsilon: float = 0.05,
        sinkhorn_iterations: int = 3,
        freeze_prototypes_steps: int = 313,
        n_local_views: int = 6,
    ) -> None:
        super().__init__(backbone)
        self.projector = MLPHead(self.embed_dim, proj_hidden_dim, proj_dim, num_layers=2)
        self.prototypes = nn.Linear(proj_dim, num_prototypes, bias=False)
        self.temperature = temperature
        self.epsilon = epsilon
        self.sinkhorn_iterations = sinkhorn_iterations
        self.freeze_prototypes_steps = freeze_prototypes_steps
        self.n_local_views = n_local_views
        self.normalize_prototypes()

    @torch.no_grad()
    def normalize_prototypes(self) -> None:
        w = self.prototypes.weight
        w.copy_(F.normalize(w, dim=1))

    def forward(self, views: list[Tensor]) -> dict[str, Tensor]:
        self.check_views(views, 2)
        feats = multi_crop_apply(self.backbone, views)
        z = F.normalize(self.projector(torch.cat(feats)), dim=1)
        scores = self.prototypes(z).chunk(len(views))  # one (B, K) per crop
        loss = z.new_zeros(())
        for i in range(2):
            q = sinkhorn_knopp(scores[i].detach(), self.epsilon, self.sinkhorn_iterations)
            sub = z.new_zeros(())
            for v, s in enumerate(scores):
                if v != i:
                    sub = sub - (q * F.log_softmax(s / self.temperature, dim=1)).sum(1).mean()
            loss = loss + sub / (len(views) - 1)
        return {"loss": loss / 2, "embed_std": collapse_std(feats[0])}

    def on_after_backward(self, step: int) -> None:
        if step < self.freeze_prototypes_steps:
            for p in self.prototypes.parameters():
                p.grad = None

    def on_step_end(self, step: int, max_steps: int) -> None:
        super().on_step_end(step, max_steps)
        self.normalize_prototypes()
