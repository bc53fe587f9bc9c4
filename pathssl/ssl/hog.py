"""Histograms of oriented gradients in torch, per patch (MaskFeat targets).

Definition (Dalal & Triggs 2005, as in ``skimage.feature.hog``): per channel, central
differences ``[-1, 0, 1]`` (zero on the image border), unsigned orientation in ``[0, 180)``
hard-binned into ``nbins`` equal bins (no interpolation), magnitude averaged over each
``cell_size x cell_size`` cell, then L2 normalisation ``v / sqrt(|v|^2 + eps^2)``:

- ``norm="cell"`` (default, MaskFeat's reference ``HOGLayerC``): each cell's ``nbins``-bin
  histogram of each channel on its own;
- ``norm="patch"``: each patch's ``(cells, cells, nbins)`` block per channel (skimage's
  ``block_norm="L2"`` on blocks aligned with the patches).

MaskFeat (Wei et al. 2022) uses 9 bins, 8x8 cells and per-RGB-channel histograms; its reference
code differs in using a Sobel filter and a Gaussian spatial weighting of the magnitudes, which
are not reproduced here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def hog_patch_features(
    images: Tensor,
    patch_size: int = 16,
    cell_size: int = 8,
    nbins: int = 9,
    eps: float = 1e-5,
    norm: str = "cell",
) -> Tensor:
    """``(B, C, H, W) -> (B, N, C * k * k * nbins)`` with ``k = patch_size // cell_size`` and
    ``N`` patches in row-major order; each row is ``(C, k, k, nbins)`` flattened. ``norm``:
    ``cell`` or ``patch`` (see the module docstring)."""
    if norm not in ("cell", "patch"):
        raise ValueError(f"HOG norm must be 'cell' or 'patch', got {norm!r}")
    if patch_size % cell_size:
        raise ValueError("patch_size must be a multiple of cell_size")
    b, c, h, w = images.shape
    if h % patch_size or w % patch_size:
        raise ValueError(f"image {h}x{w} is not divisible by patch {patch_size}")
    x = images
    g_row = torch.zeros_like(x)
    g_col = torch.zeros_like(x)
    g_row[..., 1:-1, :] = x[..., 2:, :] - x[..., :-2, :]
    g_col[..., :, 1:-1] = x[..., :, 2:] - x[..., :, :-2]
    magnitude = torch.sqrt(g_row**2 + g_col**2)
    angle = torch.rad2deg(torch.atan2(g_row, g_col)) % 180.0
    bins = torch.div(angle, 180.0 / nbins, rounding_mode="floor").long().clamp_(0, nbins - 1)
    hist = torch.zeros(b, c, nbins, h, w, dtype=x.dtype, device=x.device)
    hist.scatter_(2, bins.unsqueeze(2), magnitude.unsqueeze(2))
    cells = F.avg_pool2d(hist.reshape(b, c * nbins, h, w), cell_size)  # (B, C*nbins, Hc, Wc)
    k = patch_size // cell_size
    hp, wp = h // patch_size, w // patch_size
    cells = cells.reshape(b, c, nbins, hp, k, wp, k)
    blocks = cells.permute(0, 3, 5, 1, 4, 6, 2)  # (B, hp, wp, C, k, k, nbins)
    if norm == "cell":
        blocks = blocks / torch.sqrt(blocks.pow(2).sum(-1, keepdim=True) + eps**2)
        return blocks.reshape(b, hp * wp, c * k * k * nbins)
    blocks = blocks.reshape(b, hp * wp, c, k * k * nbins)
    scale = torch.sqrt(blocks.pow(2).sum(-1, keepdim=True) + eps**2)
    return (blocks / scale).reshape(b, hp * wp, c * k * k * nbins)


def hog_dim(channels: int, patch_size: int, cell_size: int, nbins: int) -> int:
    """Length of one patch's HOG vector."""
    return channels * (patch_size // cell_size) ** 2 * nbins
