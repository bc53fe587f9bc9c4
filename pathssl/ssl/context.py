"""Context prediction: Doersch, Gupta, Efros, "Unsupervised Visual Representation Learning by
Context Prediction", ICCV 2015, arXiv:1505.05192."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pathssl.models.backbones import Backbone
from pathssl.ssl.base import METHODS, SSLMethod, collapse_std
from pathssl.ssl.heads import MLPHead
from pathssl.ssl.patches import (
    gather_patches,
    lattice,
    max_jitter,
    normalise_patches,
    patch_corners,
    patch_multiple,
    patch_side,
)

#: the 8 neighbours of the centre cell (row, col) of a 3x3 grid, row-major: label i = NEIGHBOURS[i]
NEIGHBOURS = ((0, 0), (0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2))


def context_pairs(
    x: Tensor, patch_fraction: float, jitter_fraction: float, multiple: int = 1
) -> tuple[Tensor, Tensor, Tensor]:
    """Centre + neighbour pairs of views ``x`` ``(B, C, H, W)`` on the centred 3x3 lattice:
    ``(pairs (B, 2, C, p, p), labels (B,) long in 0..7, corners (B, 2, 2))``. The neighbour is
    drawn uniformly (label first, then the jitter of both patches, from torch's global
    generator); patch ``i`` is ``x[b, :, r:r + p, c:c + p]`` at ``corners[b, i]``. Neighbouring
    patches are at least ``cell - p - 2 * jitter`` pixels apart (see :mod:`.patches`)."""
    cell, origin = lattice(x, 3)
    p = patch_side(cell, patch_fraction, multiple)
    j = max_jitter(cell, p, jitter_fraction)
    b = x.shape[0]
    labels = torch.randint(8, (b,), device=x.device)
    neigh = torch.tensor(NEIGHBOURS, device=x.device)[labels]  # (B, 2)
    centre = torch.ones_like(neigh)
    cells = torch.stack([centre, neigh], dim=1)  # (B, 2, 2)
    corners = patch_corners(b, cells, cell, p, j, origin, x.device)
    return gather_patches(x, corners, p), labels, corners


@METHODS.register("context")
class ContextPrediction(SSLMethod):
    """Context prediction: a centre patch and one of its 8 neighbours (gap and jitter between
    them, :func:`context_pairs`; each patch standardised on its own with ``normalise``, so
    stain level and edge continuity do not give the answer) -> shared backbone ``(2B, E)`` ->
    per-patch ``Linear + ReLU`` to ``pair_dim`` -> late fusion: concatenated ``(B, 2 pair_dim)``
    -> 2-layer MLP (``hidden_dim``) -> 8-way cross-entropy.

    Geometry (Doersch et al.: 96 px patches, 48 px gaps, up to 7 px jitter: ``patch_fraction``
    2/3 of the 144 px cell, ``jitter_fraction`` 0.05). Chromatic-aberration tricks of the paper
    do not apply to slides.

    Views: 1 ``(B, 3, H, W)``; the backbone sees ``p``-pixel patches.
    """

    def __init__(
        self,
        backbone: Backbone,
        patch_fraction: float = 2 / 3,
        jitter_fraction: float = 0.05,
        normalise: bool = True,
        pair_dim: int = 512,
        hidden_dim: int = 4096,
    ) -> None:
        super().__init__(backbone)
        self.n_global_views = 1
        self.patch_fraction = patch_fraction
        self.jitter_fraction = jitter_fraction
        self.normalise = normalise
        self.multiple = patch_multiple(backbone)
        self.patch_fc = nn.Sequential(nn.Linear(self.embed_dim, pair_dim), nn.ReLU(inplace=True))
        self.classifier = MLPHead(2 * pair_dim, hidden_dim, 8, num_layers=2)

    def forward(self, views: list[Tensor]) -> dict[str, Tensor]:
        self.check_views(views, 1)
        pairs, y, _ = context_pairs(
            views[0], self.patch_fraction, self.jitter_fraction, self.multiple
        )
        if self.normalise:
            pairs = normalise_patches(pairs)
        b = pairs.shape[0]
        h = self.backbone(pairs.flatten(0, 1))  # (2B, E): centre, neighbour, centre, ...
        logits = self.classifier(self.patch_fc(h).reshape(b, -1))
        loss = F.cross_entropy(logits, y)
        acc = (logits.detach().argmax(1) == y).float().mean()
        return {"loss": loss, "accuracy": acc, "embed_std": collapse_std(h)}
