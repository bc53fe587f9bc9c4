"""Colour channels as classification targets (colorization, Zhang et al. 2016; split-brain, Zhang
et al. 2017): images of one part of an RGB view's channels (CIE Lab's L | ab, or the
optical-density stain channels H | E of :mod:`pathssl.augment`'s colour deconvolution; the split
itself is :func:`pathssl.models.split.split_channels`, shared with the split trunks) for a trunk
that takes RGB, quantisation bins and soft-encoded targets, and dense backbone features.

Shapes: views ``(B, 3, H, W)`` float RGB in [0, 1]; channel values ``(B, d, H, W)``; bin
centres ``(Q, d)``; soft targets ``(B, Q, h, w)``.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

from pathssl.augment.stain import RGB_FROM_HED
from pathssl.data.colour import lab_to_rgb, rgb_to_lab
from pathssl.models.backbones import Backbone, ViTBackbone
from pathssl.models.split import PART_CHANNELS

SPACES = tuple(PART_CHANNELS)


def part_image(values: Tensor, space: str, part: int) -> Tensor:
    """One part of :func:`~pathssl.models.split.split_channels` rendered as an RGB image ``(B, 3, H, W)`` in [0, 1],
    so that an unchanged RGB trunk can take it: ``lab`` part 0 (L): the grey image of that
    lightness; part 1 (ab): those chromas at L = 50; ``hed`` part 0 / 1: the haematoxylin-only /
    eosin-only image ``exp(-c * stain_vector)``."""
    if space == "lab":
        b, _, h, w = values.shape
        if part == 0:
            lab = torch.cat([values, values.new_zeros(b, 2, h, w)], 1)
        else:
            lab = torch.cat([values.new_full((b, 1, h, w), 50.0), values], 1)
        return lab_to_rgb(lab.float())
    if space == "hed":
        vec = torch.as_tensor(RGB_FROM_HED[part], dtype=torch.float32, device=values.device)
        return torch.exp(-values.float() * vec.view(1, 3, 1, 1)).clamp(0.0, 1.0)
    raise ValueError(f"colour space must be one of {SPACES}, got {space!r}")


@functools.lru_cache(maxsize=8)
def _ab_gamut_bins(grid_step: float, levels: int) -> Tensor:
    v = torch.linspace(0.0, 1.0, levels)
    rgb = torch.stack(torch.meshgrid(v, v, v, indexing="ij")).reshape(1, 3, -1, 1)
    ab = rgb_to_lab(rgb)[0, 1:, :, 0].t()  # (levels^3, 2)
    cells = torch.unique(torch.round(ab / grid_step).long(), dim=0)
    return cells.float() * grid_step


def ab_gamut_bins(grid_step: float = 10.0, levels: int = 65) -> Tensor:
    """In-gamut ab bins ``(Q, 2)``: the centres (multiples of ``grid_step``) of the ab grid cells
    that some sRGB colour falls in (colours sampled on a ``levels``^3 lattice of the RGB cube),
    sorted. Zhang et al. 2016 use grid step 10 (313 bins counted on ImageNet's colours; the
    sRGB gamut gives 261 here); the step is the hardness knob of Goyal et al. 2019 (step 20: 75
    bins, 40: 23)."""
    if grid_step <= 0:
        raise ValueError(f"grid_step must be > 0, got {grid_step}")
    return _ab_gamut_bins(float(grid_step), int(levels)).clone()


def uniform_bins(lo: float, hi: float, n: int) -> Tensor:
    """``n`` bin centres ``(n, 1)`` splitting ``[lo, hi]`` into equal intervals."""
    if n < 2 or hi <= lo:
        raise ValueError(f"need n >= 2 bins over lo < hi, got {n} over [{lo}, {hi}]")
    width = (hi - lo) / n
    return (lo + width * (torch.arange(n, dtype=torch.float32) + 0.5)).unsqueeze(1)


def soft_encode(values: Tensor, centres: Tensor, neighbours: int, sigma: float) -> Tensor:
    """Soft targets (Zhang et al. 2016, Sec. 2.1): ``values`` ``(B, d, h, w)`` -> ``(B, Q, h, w)``
    with weight ``exp(-dist^2 / (2 sigma^2))`` on the ``neighbours`` nearest of the ``Q`` bin
    ``centres`` ``(Q, d)``, normalised to sum 1 (``neighbours = 1``: the nearest bin, one-hot)."""
    b, d, h, w = values.shape
    flat = values.permute(0, 2, 3, 1).reshape(-1, d).float()
    dist2 = torch.cdist(flat, centres.to(flat)).square()  # (N, Q)
    k = min(neighbours, centres.shape[0])
    near, idx = dist2.topk(k, dim=1, largest=False)
    weights = torch.softmax(-near / (2 * sigma**2), dim=1)
    out = torch.zeros_like(dist2).scatter_(1, idx, weights)
    return out.reshape(b, h, w, -1).permute(0, 3, 1, 2)


def dense_features(backbone: Backbone, x: Tensor) -> Tensor:
    """``(B, 3, H, W)`` -> a feature map ``(B, C, h, w)``: the ResNet's last stage (stride 32)
    or the ViT's patch tokens on their grid (stride = patch size)."""
    if isinstance(backbone, ViTBackbone):
        tokens = backbone.forward_features(x)[:, 1:]
        gh, gw = x.shape[-2] // backbone.patch_size, x.shape[-1] // backbone.patch_size
        return tokens.transpose(1, 2).reshape(x.shape[0], -1, gh, gw)
    return backbone.forward_features(x)


def pooled_targets(values: Tensor, stride: int) -> Tensor:
    """Channel values ``(B, d, H, W)`` averaged over ``stride x stride`` cells (the target grid
    ``(B, d, H // stride, W // stride)``; Zhang et al. predict at a quarter of the resolution)."""
    return F.avg_pool2d(values.float(), stride) if stride > 1 else values.float()
