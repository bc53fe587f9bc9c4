"""What the masked image models (MAE, MaskFeat) share: a ViT backbone, one view, and a patch
mask from the one sampler :func:`pathssl.augment.masking.random_patch_mask`."""

from __future__ import annotations

import torch
from torch import Tensor

from pathssl.augment.masking import random_patch_mask
from pathssl.models.backbones import Backbone, ViTBackbone
from pathssl.ssl.base import SSLMethod


class MaskedImageMethod(SSLMethod):
    """Base of the masked image models: ViT only, one global view ``(B, 3, H, W)`` (H, W
    divisible by the patch size), a fraction ``mask_ratio`` of its ``N = (H / p) (W / p)``
    patches masked.

    ``forward(views, patch_mask=None)``: ``patch_mask`` ``(B, N)`` bool (True = masked), e.g.
    the ``"patch_mask"`` of a masked view recipe, is used as given; without it a mask is drawn
    with ``mask_ratio`` from torch's global generator.
    """

    vit_only = True

    def __init__(self, backbone: Backbone, mask_ratio: float) -> None:
        super().__init__(backbone)
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(
                f"{type(self).__name__}: mask_ratio {mask_ratio} must lie strictly between 0 and 1"
            )
        assert isinstance(backbone, ViTBackbone)
        self.vit: ViTBackbone = backbone
        self.n_global_views = 1
        self.mask_ratio = mask_ratio

    def patch_mask(self, x: Tensor, given: Tensor | None = None) -> Tensor:
        """The ``(B, N)`` bool mask (True = masked) for the view ``x`` ``(B, 3, H, W)``:
        ``given`` after a shape check, else a fresh :func:`random_patch_mask` draw."""
        p = self.vit.patch_size
        shape = (x.shape[0], (x.shape[-2] // p) * (x.shape[-1] // p))
        if given is None:
            return random_patch_mask(*shape, self.mask_ratio, device=x.device)
        if tuple(given.shape) != shape:
            raise ValueError(
                f"{type(self).__name__}: patch mask of shape {tuple(given.shape)} does not fit "
                f"views {tuple(x.shape)} with patch size {p} (needs {shape}); make the recipe's "
                "size and patch_size match the backbone's"
            )
        return given.to(device=x.device, dtype=torch.bool)
