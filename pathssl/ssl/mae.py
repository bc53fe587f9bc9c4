"""MAE: He, Chen, Xie, Li, Dollar, Girshick, "Masked Autoencoders Are Scalable Vision
Learners", CVPR 2022, arXiv:2111.06377."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pathssl.augment.masking import split_by_mask
from pathssl.models.backbones import Backbone
from pathssl.ssl.base import METHODS, collapse_std
from pathssl.ssl.losses import masked_patch_loss, patchify
from pathssl.ssl.masked import MaskedImageMethod


def sincos_pos_embed(dim: int, grid_h: int, grid_w: int) -> Tensor:
    """Fixed 2-D sine-cosine position embeddings ``(grid_h * grid_w, dim)`` (row-major); half
    the channels encode the row, half the column. ``dim`` must be divisible by 4."""
    if dim % 4:
        raise ValueError(f"sin-cos embedding needs dim divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    rows, cols = torch.meshgrid(
        torch.arange(grid_h, dtype=torch.float64),
        torch.arange(grid_w, dtype=torch.float64),
        indexing="ij",
    )
    parts = []
    for pos in (rows.reshape(-1), cols.reshape(-1)):
        angle = pos[:, None] * omega[None]
        parts += [torch.sin(angle), torch.cos(angle)]
    return torch.cat(parts, dim=1).float()


@METHODS.register("mae")
class MAE(MaskedImageMethod):
    """MAE: the ViT encodes only the visible ``(1 - mask_ratio)`` of patches ``(B, 1 + K, E)``;
    a light Transformer decoder (``decoder_dim``, ``decoder_depth``, ``decoder_heads``, fixed
    sin-cos positions, a learned mask token) reconstructs every patch ``(B, N, p * p * 3)``.
    Loss: MSE on masked patches only, against per-patch normalised pixels (``norm_pix``).

    Views: 1 ``(B, 3, H, W)`` (H, W divisible by the patch size); extra views are ignored.
    The mask: see :class:`MaskedImageMethod` (at least one patch must stay visible).
    """

    def __init__(
        self,
        backbone: Backbone,
        mask_ratio: float = 0.75,
        decoder_dim: int = 512,
        decoder_depth: int = 8,
        decoder_heads: int = 16,
        norm_pix: bool = True,
    ) -> None:
        super().__init__(backbone, mask_ratio)
        self.norm_pix = norm_pix
        self.decoder_dim = decoder_dim
        p = self.vit.patch_size
        self.decoder_embed = nn.Linear(self.embed_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        nn.init.normal_(self.mask_token, std=0.02)
        layer = nn.TransformerEncoderLayer(
            decoder_dim,
            decoder_heads,
            dim_feedforward=4 * decoder_dim,
            dropout=0.0,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.decoder = nn.TransformerEncoder(layer, decoder_depth, enable_nested_tensor=False)
        self.decoder_norm = nn.LayerNorm(decoder_dim)
        self.decoder_pred = nn.Linear(decoder_dim, p * p * 3)

    def forward(self, views: list[Tensor], patch_mask: Tensor | None = None) -> dict[str, Tensor]:
        self.check_views(views, 1)
        x = views[0]
        p = self.vit.patch_size
        gh, gw = x.shape[-2] // p, x.shape[-1] // p
        mask = self.patch_mask(x, patch_mask)  # (B, N), True = masked
        ids_keep, ids_restore = split_by_mask(mask)  # (B, K), (B, N)
        if ids_keep.shape[1] == 0:
            raise ValueError(f"MAE: the patch mask hides all {gh * gw} patches; lower mask_ratio")
        latent = self.vit.forward_masked(x, ids_keep)  # (B, 1 + K, E)
        pred = self.decode(latent, ids_restore, gh, gw)  # (B, N, p*p*3)
        loss = masked_patch_loss(pred, patchify(x, p), mask, self.norm_pix)
        return {"loss": loss, "embed_std": collapse_std(latent[:, 0])}

    def decode(self, latent: Tensor, ids_restore: Tensor, gh: int, gw: int) -> Tensor:
        """``(B, 1 + K, E)`` visible latents -> ``(B, N, p * p * 3)`` pixel predictions."""
        y = self.decoder_embed(latent)
        b, n = ids_restore.shape
        masks = self.mask_token.expand(b, n - (y.shape[1] - 1), -1)
        patches = torch.cat([y[:, 1:], masks], dim=1)
        idx = ids_restore.unsqueeze(-1).expand(-1, -1, self.decoder_dim)
        patches = torch.gather(patches, 1, idx)  # back to image order
        pos = sincos_pos_embed(self.decoder_dim, gh, gw).to(y)
        y = torch.cat([y[:, :1], patches + pos], dim=1)
        y = self.decoder_norm(self.decoder(y))
        out: Tensor = self.decoder_pred(y[:, 1:])
        return out
