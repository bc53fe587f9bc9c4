"""DINO: Caron, Touvron, Misra, Jegou, Mairal, Bojanowski, Joulin, "Emerging Properties in
Self-Supervised Vision Transformers", ICCV 2021, arXiv:2104.14294."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pathssl.models.backbones import Backbone
from pathssl.ssl import dist
from pathssl.ssl.base import METHODS, MomentumTargetMethod, collapse_std, multi_crop_apply
from pathssl.ssl.heads import DINOHead
from pathssl.ssl.losses import dino_loss


@METHODS.register("dino")
class DINO(MomentumTargetMethod):
    """DINO self-distillation with multi-crop.

    Student = backbone ``(B, E)`` + :class:`DINOHead` ``(B, out_dim)`` on every crop; teacher =
    EMA of the student (cosine momentum ``momentum`` -> 1) on the 2 global crops. Teacher
    outputs are centred (``center`` ``(1, out_dim)``, an EMA of the global-batch mean with
    ``center_momentum``) and sharpened by a teacher temperature that rises linearly from
    ``warmup_teacher_temp`` to ``teacher_temp`` over ``warmup_teacher_temp_steps``. The last head
    layer gets no gradient during the first ``freeze_last_layer_steps`` steps.

    Views: 2 global ``(B, 3, H, W)`` then ``n_local_views`` local ``(B, 3, h, w)``.
    """

    center: Tensor

    def __init__(
        self,
        backbone: Backbone,
        out_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        norm_last_layer: bool = True,
        student_temp: float = 0.1,
        teacher_temp: float = 0.04,
        warmup_teacher_temp: float = 0.04,
        warmup_teacher_temp_steps: int = 0,
        center_momentum: float = 0.9,
        momentum: float = 0.996,
        freeze_last_layer_steps: int = 0,
        n_local_views: int = 8,
    ) -> None:
        super().__init__(backbone)
        self.head = DINOHead(
            self.embed_dim, out_dim, hidden_dim, bottleneck_dim, norm_last_layer=norm_last_layer
        )
        self.teacher = self.init_target(momentum)
        self.student_temp = student_temp
        self.teacher_temp = teacher_temp
        self.warmup_teacher_temp = warmup_teacher_temp
        self.warmup_teacher_temp_steps = warmup_teacher_temp_steps
        self.center_momentum = center_momentum
        self.freeze_last_layer_steps = freeze_last_layer_steps
        self.n_local_views = n_local_views
        self.register_buffer("center", torch.zeros(1, out_dim))

    def teacher_temp_at(self, step: int) -> float:
        w = self.warmup_teacher_temp_steps
        if step >= w:
            return self.teacher_temp
        return self.warmup_teacher_temp + (self.teacher_temp - self.warmup_teacher_temp) * step / w

    def forward(self, views: list[Tensor]) -> dict[str, Tensor]:
        self.check_views(views, 2)
        with torch.no_grad():
            teacher_out = self.teacher(torch.cat(views[:2])).chunk(2)
        feats = multi_crop_apply(self.backbone, views)
        student_out = self.head(torch.cat(feats)).chunk(len(views))
        t_temp = self.teacher_temp_at(int(self.global_step))
        loss = dino_loss(
            list(student_out), list(teacher_out), self.center, self.student_temp, t_temp
        )
        if self.training:
            self.update_center(torch.cat(teacher_out))
        return {
            "loss": loss,
            "embed_std": collapse_std(feats[0]),
            "teacher_temp": torch.tensor(t_temp),
        }

    @torch.no_grad()
    def update_center(self, teacher_out: Tensor) -> None:
        """``center = m * center + (1 - m) * mean over the global batch of teacher logits``."""
        batch_center = dist.all_reduce_mean(teacher_out.mean(dim=0, keepdim=True))
        self.center.mul_(self.center_momentum).add_(batch_center, alpha=1 - self.center_momentum)

    def on_after_backward(self, step: int) -> None:
        if step < self.freeze_last_layer_steps:
            self.head.last_weight.grad = None
            self.head.last_gain.grad = None

    def online(self) -> nn.Sequential:
        return nn.Sequential(self.backbone, self.head)

    def target_network(self) -> nn.Module:
        return self.teacher

    def export_backbone(self) -> nn.Module:
        """The teacher's backbone (the paper evaluates the teacher)."""
        teacher_backbone: nn.Module = self.teacher[0]
        return teacher_backbone
