"""MoCo v2 and MoCo v3.

- MoCo v2: Chen, Fan, Girshick, He, "Improved Baselines with Momentum Contrastive Learning",
  arXiv:2003.04297 (2020), on He et al., "Momentum Contrast for Unsupervised Visual
  Representation Learning", CVPR 2020.
- MoCo v3: Chen, Xie, He, "An Empirical Study of Training Self-Supervised Vision
  Transformers", ICCV 2021, arXiv:2104.02057.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pathssl.models.backbones import ResNetBackbone, ViTBackbone
from pathssl.ssl import dist
from pathssl.ssl.base import METHODS, MomentumTargetMethod, collapse_std
from pathssl.ssl.heads import MLPHead
from pathssl.ssl.losses import info_nce_queue, moco_v3_contrastive


@METHODS.register("moco_v2")
class MoCoV2(MomentumTargetMethod):
    """MoCo v2: query encoder (backbone + 2-layer MLP without BN) on view 0, momentum key
    encoder on view 1, InfoNCE against a FIFO queue of ``queue_size`` past keys ``(K, D)``.

    Keys of the whole global batch (all ranks) are enqueued in ``on_step_end`` (oldest
    overwritten first), only for steps the loop applied: the keys of a step skipped by the NaN
    guard never reach the queue. The key encoder is then moved by EMA with constant
    ``momentum``.
    Shuffle-BN is not implemented (use SyncBN or a ViT). Views: 2 global ``(B, 3, H, W)``.
    """

    cosine_momentum = False
    queue: Tensor
    queue_ptr: Tensor

    def __init__(
        self,
        backbone: ResNetBackbone | ViTBackbone,
        proj_hidden_dim: int = 2048,
        proj_dim: int = 128,
        queue_size: int = 65536,
        temperature: float = 0.2,
        momentum: float = 0.999,
    ) -> None:
        super().__init__(backbone)
        self.projector = MLPHead(
            self.embed_dim, proj_hidden_dim, proj_dim, num_layers=2, hidden_bn=False
        )
        self.key_encoder = self.init_target(momentum)
        self.temperature = temperature
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, proj_dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self._pending: list[Tensor] = []

    def forward(self, views: list[Tensor]) -> dict[str, Tensor]:
        self.check_views(views, 2)
        h = self.backbone(views[0])
        q = F.normalize(self.projector(h), dim=1)
        with torch.no_grad():
            k = F.normalize(self.key_encoder(views[1]), dim=1)
        loss = info_nce_queue(q, k, self.queue.clone(), self.temperature)
        if self.training:  # replaced, not appended: keys of a step the loop skipped (NaN
            self._pending = [dist.gather_no_grad(k)]  # guard, no on_step_end) are dropped
        return {"loss": loss, "embed_std": collapse_std(h)}

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        """Write ``keys`` ``(n, D)`` at the queue pointer (wrapping), advance the pointer."""
        size = self.queue.shape[0]
        keys = keys[-size:]
        idx = (self.queue_ptr + torch.arange(keys.shape[0], device=keys.device)) % size
        self.queue[idx] = keys.to(self.queue.dtype)
        self.queue_ptr.copy_((self.queue_ptr + keys.shape[0]) % size)

    def online(self) -> nn.Sequential:
        return nn.Sequential(self.backbone, self.projector)

    def target_network(self) -> nn.Module:
        return self.key_encoder

    def on_step_end(self, step: int, max_steps: int) -> None:
        super().on_step_end(step, max_steps)  # EMA of the key encoder
        for keys in self._pending:
            self.enqueue(keys)
        self._pending.clear()


@METHODS.register("moco_v3")
class MoCoV3(MomentumTargetMethod):
    """MoCo v3: backbone -> 3-layer projector (BN, last BN affine-free) -> 2-layer predictor;
    momentum encoder (backbone + projector) with a cosine momentum schedule from ``momentum``
    to 1. Symmetrised InfoNCE against the keys of the global batch, scaled by ``2T``.

    ``frozen_patch_projection`` (ViT; default True, the paper's stability trick, Sec. 4.2):
    the patch projection keeps its random initialisation (stop-gradient). The projector's and
    predictor's BatchNorm layers are synchronised across processes by the training loop
    (SyncBN, for ViT and ResNet alike). Views: 2 global ``(B, 3, H, W)``.
    """

    def __init__(
        self,
        backbone: ResNetBackbone | ViTBackbone,
        hidden_dim: int = 4096,
        out_dim: int = 256,
        temperature: float = 0.2,
        momentum: float = 0.99,
        frozen_patch_projection: bool = True,
    ) -> None:
        super().__init__(backbone)
        if frozen_patch_projection and isinstance(backbone, ViTBackbone):
            backbone.conv_proj.requires_grad_(False)
        self.projector = MLPHead(self.embed_dim, hidden_dim, out_dim, num_layers=3, last_bn=True)
        self.predictor = MLPHead(out_dim, hidden_dim, out_dim, num_layers=2)
        self.momentum_encoder = self.init_target(momentum)
        self.temperature = temperature

    def forward(self, views: list[Tensor]) -> dict[str, Tensor]:
        self.check_views(views, 2)
        h = self.backbone(torch.cat(views[:2]))
        q1, q2 = self.predictor(self.projector(h)).chunk(2)
        with torch.no_grad():
            k1, k2 = self.momentum_encoder(torch.cat(views[:2])).chunk(2)
        t = self.temperature
        loss = moco_v3_contrastive(q1, k2, t) + moco_v3_contrastive(q2, k1, t)
        return {"loss": loss, "embed_std": collapse_std(h)}

    def online(self) -> nn.Sequential:
        return nn.Sequential(self.backbone, self.projector)

    def target_network(self) -> nn.Module:
        return self.momentum_encoder
