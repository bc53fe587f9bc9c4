"""Batched geometry on (B, C, H, W) tensors with per-sample random draws, on CPU or GPU.

Images and masks take the same per-sample parameters: masks ((B, H, W) or (B, C, H, W) integer
maps) are resampled with nearest neighbour so labels are never blended.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def dihedral(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Per-sample dihedral element ``k[i]`` (0-7) on (B, ..., H, W) with square H = W.

    Same convention as :func:`pathssl.augment.geometry.dihedral` (``np.rot90`` counter-clockwise
    quarter turns ``k % 4`` in the image plane, then a horizontal flip if ``k >= 4``).
    """
    out = torch.empty_like(x)
    k = k.to(x.device)
    for e in range(8):
        idx = (k == e).nonzero(as_tuple=True)[0]
        if idx.numel() == 0:
            continue
        y = torch.rot90(x[idx], e % 4, dims=(-2, -1))
        out[idx] = y.flip(-1) if e >= 4 else y
    return out


def sample_rrc_boxes(
    n: int,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator | None = None,
    tries: int = 10,
) -> torch.Tensor:
    """Random resized crop boxes as in torchvision/albumentations ``RandomResizedCrop``.

    Area fraction ~ U(scale), log aspect ratio ~ U(log ratio); the first of ``tries`` candidates
    that fits is used, else a centre crop clamped to ``ratio``.

    Returns:
        (n, 4) float boxes ``(x0, y0, w, h)`` in pixels.
    """
    area = height * width
    g = generator
    s = torch.empty(n, tries).uniform_(scale[0], scale[1], generator=g) * area
    logr = torch.empty(n, tries).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=g)
    r = torch.exp(logr)
    w = torch.sqrt(s * r).round()
    h = torch.sqrt(s / r).round()
    ok = (w > 0) & (h > 0) & (w <= width) & (h <= height)
    first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((n,), -1))
    # fallback: whole image, clamped to the aspect-ratio range
    fb_w, fb_h = float(width), float(height)
    if width / height < ratio[0]:
        fb_h = float(round(fb_w / ratio[0]))
    elif width / height > ratio[1]:
        fb_w = float(round(fb_h * ratio[1]))
    j = first.clamp_min(0)[:, None]
    found = first >= 0
    bw = torch.where(found, w.gather(1, j)[:, 0], torch.full((n,), fb_w))
    bh = torch.where(found, h.gather(1, j)[:, 0], torch.full((n,), fb_h))
    u = torch.rand(n, 2, generator=g)
    x0 = torch.floor(u[:, 0] * (width - bw + 1))
    y0 = torch.floor(u[:, 1] * (height - bh + 1))
    boxes = torch.stack([x0, y0, bw, bh], dim=1)
    return boxes


def crop_boxes(
    x: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int], nearest: bool = False
) -> torch.Tensor:
    """Crop per-sample pixel boxes ``(x0, y0, w, h)`` and resample each to ``size`` (h, w).

    Args:
        x: (B, C, H, W) image (uint8 or float) or (B, H, W) / (B, C, H, W) integer mask.
        boxes: (B, 4) float pixel boxes. nearest: nearest neighbour (masks) instead of bilinear.

    Returns:
        (B, C, size[0], size[1]) (or (B, size[0], size[1]) for 3-D input), dtype of ``x``.
    """
    squeeze = x.dim() == 3
    xin = x[:, None] if squeeze else x
    b, _, hgt, wid = xin.shape
    bx = boxes.to(x.device, torch.float32)
    theta = torch.zeros(b, 2, 3, device=x.device)
    # map output normalised coords [-1, 1] to the box in input normalised coords
    theta[:, 0, 0] = bx[:, 2] / wid
    theta[:, 0, 2] = (2 * bx[:, 0] + bx[:, 2]) / wid - 1
    theta[:, 1, 1] = bx[:, 3] / hgt
    theta[:, 1, 2] = (2 * bx[:, 1] + bx[:, 3]) / hgt - 1
    grid = F.affine_grid(theta, [b, xin.shape[1], size[0], size[1]], align_corners=False)
    src = xin.float()
    mode = "nearest" if nearest else "bilinear"
    y = F.grid_sample(src, grid, mode=mode, padding_mode="border", align_corners=False)
    if x.dtype == torch.uint8:
        y = y.round_().clamp_(0, 255)
    y = y.to(x.dtype)
    return y[:, 0] if squeeze else y


def fov_boxes(
    n: int,
    height: int,
    width: int,
    mpp: float | torch.Tensor,
    fields_um: tuple[float, ...],
    generator: torch.Generator | None = None,
) -> list[torch.Tensor]:
    """Multi-field-of-view boxes: one centre per sample, one square box per field (micrometres).

    Returns one (n, 4) box tensor per field; the largest field must fit in the image.
    """
    mpp_t = torch.as_tensor(mpp, dtype=torch.float32).expand(n)
    sides = [torch.round(f / mpp_t) for f in fields_um]
    big = torch.stack(sides).amax(0)
    if bool((big > min(height, width)).any()):
        raise ValueError(f"a {max(fields_um)} um field does not fit a {width}x{height} image")
    u = torch.rand(n, 2, generator=generator)
    cx = big / 2 + u[:, 0] * (width - big)
    cy = big / 2 + u[:, 1] * (height - big)
    out = []
    for s in sides:
        x0 = torch.minimum(torch.round(cx - s / 2).clamp_min(0), width - s)
        y0 = torch.minimum(torch.round(cy - s / 2).clamp_min(0), height - s)
        out.append(torch.stack([x0, y0, s, s], dim=1))
    return out


def resize_matrix(side: int, size: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(size, side) float32 weights resampling a line of ``side`` pixels to ``size``: pixel-area
    averaging when shrinking (as OpenCV's ``INTER_AREA``), bilinear with half-pixel centres and
    clamped edges when enlarging (as ``INTER_LINEAR``); the identity when equal."""
    if side == size:
        return torch.eye(size, device=device)
    i = torch.arange(size, dtype=torch.float64)[:, None]
    j = torch.arange(side, dtype=torch.float64)[None, :]
    if side > size:
        s = side / size
        overlap = torch.minimum(j + 1, (i + 1) * s) - torch.maximum(j, i * s)
        w = overlap.clamp_min(0.0) / s
    else:
        src = ((i[:, 0] + 0.5) * side / size - 0.5).clamp(0.0, side - 1.0)
        j0 = src.floor().long()
        frac = src - j0
        w = torch.zeros(size, side, dtype=torch.float64)
        rows = torch.arange(size)
        w[rows, j0] += 1.0 - frac
        w[rows, (j0 + 1).clamp_max(side - 1)] += frac
    return w.float().to(device)


def crop_squares(
    x: torch.Tensor, boxes: torch.Tensor, size: int, nearest: bool = False
) -> torch.Tensor:
    """Crop one square side for the whole batch at per-sample origins and resample to ``size``:
    the batched twin of :func:`pathssl.augment.geometry.crop_resize` (area averaging when
    shrinking, bilinear when enlarging, nearest for masks).

    Args:
        x: (B, C, H, W) image (uint8 or float) or (B, H, W) integer mask.
        boxes: (B, 4) pixel boxes ``(x0, y0, side, side)`` with one integer ``side`` (e.g. from
            :func:`fov_boxes`).
        size: output side.

    Returns:
        (B, C, size, size) (or (B, size, size)), dtype of ``x``.
    """
    squeeze = x.dim() == 3
    xin = x[:, None] if squeeze else x
    b = xin.shape[0]
    side = int(boxes[0, 2])
    if not bool((boxes[:, 2:] == side).all()):
        raise ValueError("crop_squares needs one square side for the whole batch")
    ar = torch.arange(side, device=x.device)
    rows = boxes[:, 1].to(x.device).long()[:, None] + ar
    cols = boxes[:, 0].to(x.device).long()[:, None] + ar
    bi = torch.arange(b, device=x.device)[:, None, None]
    crop = xin[bi, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)  # (B, C, s, s)
    if side == size:
        y = crop.contiguous()
    elif nearest:
        # as OpenCV's INTER_NEAREST: source pixel floor(i * side / size)
        idx = (torch.arange(size, device=x.device) * side // size).clamp_max(side - 1)
        y = crop[:, :, idx][:, :, :, idx].contiguous()
    else:
        m = resize_matrix(side, size, x.device)
        y = torch.einsum("ij,bcjk,lk->bcil", m, crop.float(), m)
        if x.dtype == torch.uint8:
            y = y.round_().clamp_(0, 255)
        y = y.to(x.dtype)
    return y[:, 0] if squeeze else y
