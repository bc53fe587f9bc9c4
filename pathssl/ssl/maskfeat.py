"""MaskFeat: Wei, Fan, Xie, Wu, Yuille, Feichtenhofer, "Masked Feature Prediction for
Self-Supervised Visual Pre-Training", CVPR 2022, arXiv:2112.09133."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pathssl.models.backbones import Backbone
from pathssl.ssl.base import METHODS, collapse_std
from pathssl.ssl.hog import hog_dim, hog_patch_features
from pathssl.ssl.losses import masked_patch_loss
from pathssl.ssl.masked import MaskedImageMethod


@METHODS.register("maskfeat")
class MaskFeat(MaskedImageMethod):
    """MaskFeat: a fraction ``mask_ratio`` of patch tokens is replaced by a learned mask token,
    the full sequence goes through the ViT ``(B, 1 + N, E)`` and a linear head predicts each
    patch's HOG descriptor ``(B, N, 3 * k * k * nbins)`` (:func:`hog_patch_features` on the input
    image, 8x8 cells, 9 bins, per RGB channel, each cell's histogram L2-normalised as in the
    reference code; ``hog_norm="patch"`` normalises per patch instead). Loss: MSE on masked
    patches only.

    Differences from the paper: uniform random patch masking (the paper uses block-wise
    masking) and the HOG definition noted in :mod:`pathssl.ssl.hog`.
    Views: 1 ``(B, 3, H, W)``; extra views are ignored. The mask: see
    :class:`MaskedImageMethod`.
    """

    def __init__(
        self,
        backbone: Backbone,
        mask_ratio: float = 0.4,
        cell_size: int = 8,
        nbins: int = 9,
        hog_norm: str = "cell",
    ) -> None:
        super().__init__(backbone, mask_ratio)
        if hog_norm not in ("cell", "patch"):
            raise ValueError(f"MaskFeat: hog_norm must be 'cell' or 'patch', got {hog_norm!r}")
        self.cell_size = cell_size
        self.nbins = nbins
        self.hog_norm = hog_norm
        self.mask_token = nn.Parameter(torch.zeros(1, 1, self.embed_dim))
        nn.init.normal_(self.mask_token, std=0.02)
        self.head = nn.Linear(self.embed_dim, hog_dim(3, self.vit.patch_size, cell_size, nbins))

    def forward(self, views: list[Tensor], patch_mask: Tensor | None = None) -> dict[str, Tensor]:
        self.check_views(views, 1)
        x = views[0]
        mask = self.patch_mask(x, patch_mask)  # (B, N), True = masked
        tokens, pos = self.vit.patch_embed(x)  # (B, N, E), (1, 1 + N, E)
        weight = mask.to(tokens.dtype).unsqueeze(-1)  # (B, N, 1); tokens are bf16 under autocast
        fill = self.mask_token.to(tokens.dtype).expand_as(tokens)
        tokens = torch.lerp(tokens, fill, weight)
        out = self.vit.encode(tokens, pos)  # (B, 1 + N, E)
        pred = self.head(out[:, 1:])
        with torch.no_grad():
            target = hog_patch_features(
                x.float(), self.vit.patch_size, self.cell_size, self.nbins, norm=self.hog_norm
            )
        loss = masked_patch_loss(pred, target.to(pred.dtype), mask, norm_target=False)
        return {"loss": loss, "embed_std": collapse_std(out[:, 0])}
