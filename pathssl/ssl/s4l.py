"""S4L, self-supervised semi-supervised learning: Zhai, Oliver, Kolesnikov, Beyer, "S4L:
Self-Supervised Semi-Supervised Learning", ICCV 2019, arXiv:1905.03670.

One network, one step, two batches: unlabelled tiles ``x_u`` and labelled images ``x_l``
(``data.labelled``, :mod:`pathssl.train.labelled`), and

    L = L_cls(x_l) + weight * L_self

where ``L_cls`` is the cross-entropy of a linear classifier on the pooled features and
``L_self`` the self-supervised loss, averaged over the unlabelled and the labelled batch (the
paper applies it to both; ``ssl_on_labelled=False``: the unlabelled batch only). The paper's two
variants:

* :class:`S4LRotation` -- every image at its 4 quarter turns (:func:`rotate_four`); ``L_self``:
  4-way rotation cross-entropy; ``L_cls`` on all 4 turns of each labelled image.
* :class:`S4LExemplar` -- ``V`` views of every image (the view recipe's; the paper: 8 Inception
  crops with HSV noise and mirroring); ``L_self``: the batch-hard triplet loss with a soft
  margin (Hermans et al. 2017, arXiv:1703.07737) on L2-normalised embeddings, the views of one
  image being one identity; ``L_cls`` on every view of each labelled image.

The paper's settings (ImageNet, ResNet-50v2 x4): labelled and unlabelled batches of equal size,
``weight`` 1, SGD with momentum, weight decay 1e-3.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pathssl.models.backbones import Backbone
from pathssl.ssl.base import METHODS, LabelledBatch, SSLMethod, collapse_std, multi_crop_apply
from pathssl.ssl.heads import MLPHead
from pathssl.ssl.rotation import rotate_four
from pathssl.ssl.supervised import classification_loss


def batch_hard_triplet(z: Tensor, identity: Tensor, margin: float = 0.0) -> Tensor:
    """Batch-hard triplet loss with a soft margin (Hermans et al. 2017): for every anchor ``a``,
    ``softplus(max_p d(a, p) + margin - min_n d(a, n))`` over the other items of its identity
    (``p``) and the items of other identities (``n``); mean over anchors.

    ``z`` ``(N, D)`` embeddings, ``identity`` ``(N,)``; ``d`` is the Euclidean distance
    ``sqrt(max(|a - b|^2, 1e-12))``. An anchor without positives contributes
    ``softplus(-inf) = 0``."""
    z = z.float()
    sq = (z * z).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * z @ z.T).clamp_min(1e-12)
    d = d2.sqrt()
    same = identity[:, None] == identity[None, :]
    eye = torch.eye(len(z), dtype=torch.bool, device=z.device)
    hardest_pos = d.masked_fill(~same | eye, float("-inf")).amax(1)
    hardest_neg = d.masked_fill(same, float("inf")).amin(1)
    return F.softplus(hardest_pos + margin - hardest_neg).mean()


def _labelled(method: SSLMethod, labelled: LabelledBatch | None) -> LabelledBatch:
    if labelled is None:
        raise ValueError(f"{type(method).__name__} needs a labelled batch: forward(..., labelled=)")
    return labelled


@METHODS.register("s4l_rotation")
class S4LRotation(SSLMethod):
    """S4L-Rotation: backbone ``(4 (B_u + B_l), E)`` in one pass -> rotation head (as
    :class:`pathssl.ssl.rotation.Rotation`'s: ``head_layers`` layers) ``(., 4)`` and a linear
    classifier ``(4 B_l, num_classes)``.

    Views: 1 square view of the tiles ``(B_u, 3, S, S)`` and of the labelled images
    ``(B_l, 3, S, S)`` (``labelled.views[0]``)."""

    needs_labels: ClassVar[bool] = True
    default_recipe: ClassVar[str | None] = "rotation"

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int = 2,
        weight: float = 1.0,
        ssl_on_labelled: bool = True,
        head_layers: int = 1,
        head_hidden_dim: int = 512,
    ) -> None:
        super().__init__(backbone)
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.n_global_views = 1
        self.weight = weight
        self.ssl_on_labelled = ssl_on_labelled
        self.rotation_head = MLPHead(self.embed_dim, head_hidden_dim, 4, num_layers=head_layers)
        self.classifier = nn.Linear(self.embed_dim, num_classes)

    def forward(
        self, views: list[Tensor], labelled: LabelledBatch | None = None
    ) -> dict[str, Tensor]:
        lab = _labelled(self, labelled)
        self.check_views(views, 1)
        self.check_views(lab.views, 1)
        xu, ru = rotate_four(views[0])
        xl, rl = rotate_four(lab.views[0])
        h = self.backbone(torch.cat([xu, xl]))
        hu, hl = h[: len(xu)], h[len(xu) :]
        rot_logits_u = self.rotation_head(hu)
        rot_losses = [F.cross_entropy(rot_logits_u, ru)]
        if self.ssl_on_labelled:
            rot_losses.append(F.cross_entropy(self.rotation_head(hl), rl))
        loss_self = torch.stack(rot_losses).mean()
        # rotate_four stacks all images at 0 degrees, then at 90, ...: labels repeat 4 times
        loss_cls, acc = classification_loss(self.classifier(hl), lab.labels.repeat(4))
        rot_acc = (rot_logits_u.detach().argmax(1) == ru).float().mean()
        return {
            "loss": loss_cls + self.weight * loss_self,
            "loss_classification": loss_cls.detach(),
            "loss_self": loss_self.detach(),
            "accuracy": acc,
            "rotation_accuracy": rot_acc,
            "embed_std": collapse_std(hu[: views[0].shape[0]]),
        }


@METHODS.register("s4l_exemplar")
class S4LExemplar(SSLMethod):
    """S4L-Exemplar: ``V = 2 + n_local_views`` views of every tile and labelled image, through
    the backbone per view size (:func:`multi_crop_apply`) -> a linear embedding
    ``(., triplet_dim)``, L2-normalised, for :func:`batch_hard_triplet` (the paper: 1000-D,
    margin 0), and a linear classifier ``(V B_l, num_classes)``.

    Views: the recipe's ``V`` views ``(B_u, 3, s, s)`` of the tiles and ``(B_l, 3, s, s)`` of
    the labelled images (``n_local_views`` defaults to the recipe's views beyond 2)."""

    needs_labels: ClassVar[bool] = True
    default_recipe: ClassVar[str | None] = "simclr"

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int = 2,
        weight: float = 1.0,
        ssl_on_labelled: bool = True,
        triplet_dim: int = 1000,
        margin: float = 0.0,
        n_local_views: int = 0,
    ) -> None:
        super().__init__(backbone)
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.n_global_views = 2
        self.n_local_views = n_local_views
        self.weight = weight
        self.ssl_on_labelled = ssl_on_labelled
        self.margin = margin
        self.embedding = nn.Linear(self.embed_dim, triplet_dim)
        self.classifier = nn.Linear(self.embed_dim, num_classes)

    def triplet(self, h: Tensor) -> Tensor:
        """``(V, B, E)`` features of ``V`` views of ``B`` images -> the triplet loss."""
        v, b = h.shape[:2]
        z = F.normalize(self.embedding(h.flatten(0, 1)), dim=-1)
        identity = torch.arange(b, device=h.device).repeat(v)  # view-major, like flatten
        return batch_hard_triplet(z, identity, self.margin)

    def forward(
        self, views: list[Tensor], labelled: LabelledBatch | None = None
    ) -> dict[str, Tensor]:
        lab = _labelled(self, labelled)
        n = self.n_global_views + self.n_local_views
        self.check_views(views, n)
        self.check_views(lab.views, n)
        bu = views[0].shape[0]
        both = [torch.cat([u, v]) for u, v in zip(views[:n], lab.views[:n], strict=True)]
        h = torch.stack(multi_crop_apply(self.backbone, both))  # (V, B_u + B_l, E)
        hu, hl = h[:, :bu], h[:, bu:]
        losses = [self.triplet(hu)]
        if self.ssl_on_labelled:
            losses.append(self.triplet(hl))
        loss_self = torch.stack(losses).mean()
        loss_cls, acc = classification_loss(self.classifier(hl.flatten(0, 1)), lab.labels.repeat(n))
        return {
            "loss": loss_cls + self.weight * loss_self,
            "loss_classification": loss_cls.detach(),
            "loss_self": loss_self.detach(),
            "accuracy": acc,
            "embed_std": collapse_std(hu[0]),
        }
