"""One batched view pipeline in torch (the GPU twin of a :class:`.recipes.ViewSpec`).

``BatchView(spec)(x, generator)`` takes (B, 3, H, W) uint8 tiles and returns (B, 3, size, size)
float32 views in [0, 1]: random resized crop, dihedral, HED jitter, mild brightness / contrast /
saturation, Gaussian blur, optional grayscale and solarisation, each with per-sample draws.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from .torch_color import hed_jitter_affine, od_affine
from .torch_geometry import crop_boxes, dihedral, sample_rrc_boxes

if TYPE_CHECKING:
    from .recipes import ViewSpec

_GRAY = (0.299, 0.587, 0.114)


def _gray(x: torch.Tensor) -> torch.Tensor:
    w = torch.tensor(_GRAY, device=x.device, dtype=x.dtype)
    return torch.einsum("bchw,c->bhw", x, w)[:, None]


def _factor(n: int, delta: float, on: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
    f = torch.empty(n).uniform_(max(0.0, 1.0 - delta), 1.0 + delta, generator=g)
    return torch.where(on, f, 1.0)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-sample separable Gaussian blur of (B, C, H, W) float; sigma (B,), 0 = unchanged."""
    b, c, h, w = x.shape
    radius = max(1, math.ceil(3.0 * float(sigma.max())))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32, device=x.device)
    s = sigma.to(x.device).float()[:, None]
    k = torch.exp(-0.5 * (t[None] / s.clamp_min(1e-6)) ** 2)
    k = torch.where(s > 0, k, (t[None] == 0).float())
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, dim=0)  # (B*C, K)
    y = x.reshape(1, b * c, h, w)
    y = F.pad(y, (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, k[:, None, None, :], groups=b * c)
    y = F.conv2d(y, k[:, None, :, None], groups=b * c)
    return y.reshape(b, c, h, w)


class BatchView(torch.nn.Module):
    """Batched twin of ``ViewSpec.albu()``; same parameters, per-sample random draws."""

    def __init__(self, spec: ViewSpec) -> None:
        super().__init__()
        self.spec = spec

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        sp, g, n = self.spec, generator, x.shape[0]
        h, w = x.shape[-2:]
        boxes = sample_rrc_boxes(n, h, w, sp.scale, sp.ratio, g)
        y = crop_boxes(x, boxes, (sp.size, sp.size))
        if sp.dihedral:
            y = dihedral(y, torch.randint(0, 8, (n,), generator=g))
        if sp.hed_p > 0:
            on = (torch.rand(n, generator=g) < sp.hed_p)[:, None]
            a = 1.0 + torch.empty(n, 3).uniform_(-sp.hed_alpha, sp.hed_alpha, generator=g)
            bb = torch.empty(n, 3).uniform_(-sp.hed_beta, sp.hed_beta, generator=g)
            A, b = hed_jitter_affine(torch.where(on, a, 1.0), torch.where(on, bb, 0.0))
            y = od_affine(y, A.to(y.device), b.to(y.device))
        y = y.float() / 255.0 if y.dtype == torch.uint8 else y.float()
        if sp.color_p > 0:
            on = torch.rand(n, generator=g) < sp.color_p
            fb = _factor(n, sp.brightness, on, g).to(y.device)[:, None, None, None]
            fc = _factor(n, sp.contrast, on, g).to(y.device)[:, None, None, None]
            fs = _factor(n, sp.saturation, on, g).to(y.device)[:, None, None, None]
            y = (y * fb).clamp_(0, 1)
            m = _gray(y).mean(dim=(2, 3), keepdim=True)
            y = ((y - m) * fc + m).clamp_(0, 1)
            gr = _gray(y)
            y = ((y - gr) * fs + gr).clamp_(0, 1)
        if sp.blur_p > 0:
            on = torch.rand(n, generator=g) < sp.blur_p
            s = torch.empty(n).uniform_(sp.blur_sigma[0], sp.blur_sigma[1], generator=g)
            y = gaussian_blur(y, torch.where(on, s, 0.0))
        if sp.gray_p > 0:
            on = (torch.rand(n, generator=g) < sp.gray_p).to(y.device)[:, None, None, None]
            y = torch.where(on, _gray(y).expand_as(y), y)
        if sp.solarize_p > 0:
            on = (torch.rand(n, generator=g) < sp.solarize_p).to(y.device)[:, None, None, None]
            y = torch.where(on & (y >= 0.5), 1.0 - y, y)
        return y
