"""MAE: He, Chen, Xie, Li, Dollar, Girshick, "Masked Autoencoders Are Scalable Vision
Learners", CVPR 2022, arXiv:2111.06377."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pathssl.models.backbones import ResNetBackbone, ViTBackbone
from pathssl.ssl.base import METHODS, SSLMethod, collapse_std
from pathssl.ssl.losses import masked_patch_loss, patchify


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


def random_masking(
    batch: int, num_patches: int, mask_ratio: float, device: torch.device
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-sample uniform random masking. Returns ``ids_keep`` ``(B, K)``, ``mask`` ``(B, N)``
    (1 = masked) and ``ids_restore`` ``(B, N)`` (undoes the shuffle)."""
    keep = max(1, int(round(num_patches * (1 - mask_ratio))))
    noise = torch.rand(batch, num_patches, device=device)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = torch.ones(batch, num_patches, device=device)
    mask[:, :keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return ids_shuffle[:, :keep], mask, ids_restore


@METHODS.register("mae")
class MAE(SSLMethod):
    """MAE: the ViT encodes only the visible ``(1 - mask_ratio)`` of patches ``(B, 1 + K, E)``;
    a light Transformer decoder (``decoder_dim``, ``decoder_depth``, ``decoder_heads``, fixed
    sin-cos positions, a learned mask token) reconstructs every patch ``(B, N, p * p * 3)``.
    Loss: MSE on masked patches only, against per-patch normalised pixels (``norm_pix``).

    Views: 1 ``(B, 3, H, W)`` (H, W divisible by the patch size); extra views are ignored.
    """

    vit_only = True

    def __init__(
        self,
        backbone: ResNetBackbone | ViTBackbone,
        mask_ratio: float = 0.75,
        decoder_dim: int = 512,
        decoder_depth: int = 8,
        decoder_heads: int = 16,
        norm_pix: bool = True,
    ) -> None:
        super().__init__(backbone)
        assert isinstance(backbone, ViTBackbone)
        self.vit: ViTBackbone = backbone
        self.n_global_views = 1
        self.mask_ratio = mask_ratio
        self.norm_pix = norm_pix
        self.decoder_dim = decoder_dim
        p = backbone.patch_size
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

    def forward(self, views: list[Tensor]) -> dict[str, Tensor]:
        self.check_views(views, 1)
        x = views[0]
        p = self.vit.patch_size
        gh, gw = x.shape[-2] // p, x.shape[-1] // p
        n = gh * gw
        ids_keep, mask, ids_restore = random_masking(x.shape[0], n, self.mask_ratio, x.device)
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
