"""One batched view pipeline in torch (the GPU twin of a :class:`.view_spec.ViewSpec`).

``BatchView(spec)(x, generator)`` takes (B, 3, H, W) uint8 tiles and returns (B, 3, size, size)
float32 views in [0, 1]: stain normalisation, random resized crop (or a field-of-view crop),
dihedral, RandStainNA, Macenko augmentation, HED jitter, mild brightness / contrast /
saturation, Gaussian blur, optional grayscale and solarisation, each with per-sample draws, in
the order of :mod:`.view_spec`. ``run`` also returns each view's scale (tile pixels per view
pixel, so view mpp = tile mpp * scale).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from .torch_color import hed_jitter_affine, od_affine
from .torch_geometry import crop_boxes, crop_squares, dihedral, fov_boxes, sample_rrc_boxes

if TYPE_CHECKING:
    from .view_spec import ViewSpec

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


def stain_normaliser(spec: ViewSpec) -> torch.nn.Module | None:
    """The batched normalisation of ``spec.stain_norm`` (None for ``none``)."""
    from .torch_ops import BatchMacenkoNormalize, BatchReinhardNormalize

    if spec.stain_norm == "reinhard":
        return BatchReinhardNormalize(target_stats=spec.reinhard_target())
    if spec.stain_norm == "macenko":
        return BatchMacenkoNormalize(target_stains=spec.macenko_target())
    return None


class BatchView(torch.nn.Module):
    """Batched twin of ``ViewSpec.albu()``; same parameters, per-sample random draws."""

    def __init__(self, spec: ViewSpec) -> None:
        super().__init__()
        from .torch_ops import BatchMacenkoAugment, BatchRandStainNA

        self.spec = spec
        self.norm = stain_normaliser(spec)
        self.randstain = (
            BatchRandStainNA(
                spec.stain_stats(), spec.randstain_std_scale, spec.randstain_gmm, spec.randstain_p
            )
            if spec.randstain_p > 0
            else None
        )
        self.macenko = (
            BatchMacenkoAugment(
                spec.augment_stains(),
                spec.macenko_sigma,
                spec.macenko_alpha,
                spec.macenko_beta,
                spec.macenko_p,
            )
            if spec.macenko_p > 0
            else None
        )

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """Step 1: the whole tiles normalised to the target (unchanged without one)."""
        return x if self.norm is None else self.norm(x)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.run(x, generator)[0]

    def run(
        self,
        x: torch.Tensor,
        generator: torch.Generator | None = None,
        box: torch.Tensor | None = None,
        normalised: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Views of tiles ``x`` (B, 3, H, W) and their (B,) scales (tile pixels per view pixel).

        ``box``: the (B, 4) field-of-view boxes ``(x0, y0, side, side)`` of a
        ``fov_scale`` view (drawn by the recipe, shared by its field-of-view views; None: drawn
        here). ``normalised``: ``x`` has been through :meth:`normalise` already."""
        sp, g, n = self.spec, generator, x.shape[0]
        if not normalised:
            x = self.normalise(x)
        h, w = x.shape[-2:]
        if sp.fov_scale > 0:
            if box is None:
                box = fov_boxes(n, h, w, 1.0, (float(sp.fov_side),), g)[0]
            y = crop_squares(x, box, sp.size)
        else:
            box = sample_rrc_boxes(n, h, w, sp.scale, sp.ratio, g)
            y = crop_boxes(x, box, (sp.size, sp.size))
        scale = torch.sqrt(box[:, 2].double() * box[:, 3].double()) / sp.size
        if sp.dihedral:
            y = dihedral(y, torch.randint(0, 8, (n,), generator=g))
        if self.randstain is not None:
            y = self.randstain(y, g)
        if self.macenko is not None:
            y = self.macenko(y, g)
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
        return y, scale
