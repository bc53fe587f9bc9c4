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

from pathssl.models.backbones import Backbone, ViTBackbone
from pathssl.ssl import dist
from pathssl.ssl.base import METHODS, MomentumTargetMethod, collapse_std
from pathssl.ssl.heads import MLPHead
from pathssl.ssl.losses import info_nce_queue, moco_v3_contrastive
from pathssl.ssl.shuffle_bn import shuffle_bn_encode


@METHODS.register("moco_v2")
class MoCoV2(MomentumTargetMethod):
    """MoCo v2: query encoder (backbone + 2-layer MLP without BN) on view 0, momentum key
    encoder on view 1, InfoNCE against a FIFO queue of ``queue_size`` past keys ``(K, D)``.

    Keys of the whole global batch (all ranks) are enqueued in ``on_step_end`` (oldest
    overwritten first), only for steps the loop applied: the keys of a step skipped by the NaN
    guard never reach the queue. The key encoder is then moved by EMA with constant
    ``momentum``.

    ``shuffle_bn`` (default True, the paper's Shuffling BN, :mod:`pathssl.ssl.shuffle_bn`): the
    key encoder's BatchNorm sees another batch composition than the query's. Across processes
    each rank encodes a shard of the shuffled global batch; in one process the shuffled batch
    is encoded in ``shuffle_bn_groups`` groups (None: ``batch // 32``, the paper's 32 images
    per GPU, at least 2; never under 2 images a group). Queries keep their batch's statistics.
    No effect for a backbone without BatchNorm (ViT). Views: 2 global ``(B, 3, H, W)``.
    """

    cosine_momentum = False
    queue: Tensor
    queue_ptr: Tensor

    def __init__(
        self,
        backbone: Backbone,
        proj_hidden_dim: int = 2048,
        proj_dim: int = 128,
        queue_size: int = 65536,
        temperature: float = 0.2,
        momentum: float = 0.999,
        shuffle_bn: bool = True,
        shuffle_bn_groups: int | None = None,
    ) -> None:
        super().__init__(backbone)
        if shuffle_bn_groups is not None and shuffle_bn_groups < 1:
            raise ValueError(f"shuffle_bn_groups must be >= 1 or None, got {shuffle_bn_groups}")
        self.projector = MLPHead(
            self.embed_dim, proj_hidden_dim, proj_dim, num_layers=2, hidden_bn=False
        )
        self.shuffle_bn = shuffle_bn
        self.shuffle_bn_groups = shuffle_bn_groups
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
            if self.training:  # (W * B, D) in rank order; this rank's keys are its rows
                k_all = F.normalize(self.keys(views[1]), dim=1)
                b, r = q.shape[0], dist.rank()
                k = k_all[r * b : (r + 1) * b]
                # replaced, not appended: the keys of a step the loop skipped (NaN guard,
                # no on_step_end) are dropped
                self._pending = [k_all]
            else:  # eval: running BN statistics, nothing to shuffle or enqueue
                k = F.normalize(self.key_encoder(views[1]), dim=1)
        loss = info_nce_queue(q, k, self.queue.clone(), self.temperature)
        return {"loss": loss, "embed_std": collapse_std(h)}

    @property
    def sync_bn(self) -> bool:
        """Whether the training loop should synchronise BatchNorm across processes: not with
        Shuffling BN, whose point is per-rank statistics (the reference uses no SyncBN; with it
        query and key would share the global batch's statistics again)."""
        return not self.shuffle_bn

    @torch.no_grad()
    def keys(self, x: Tensor) -> Tensor:
        """Key-encoder outputs (not normalised) for the key views ``x`` ``(B, 3, H, W)`` of this
        rank -> ``(W * B, D)`` for the global batch in rank order, with Shuffling BN when on."""
        if self.shuffle_bn:
            return shuffle_bn_encode(self.key_encoder, x, self.shuffle_bn_groups)
        return dist.gather_no_grad(self.key_encoder(x))

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
        backbone: Backbone,
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
