"""Colour spaces of H&E images: the one home of the sRGB <-> CIE L*a*b* and the Ruifrok-Johnston
HED (optical density) maths that augmentation (:mod:`pathssl.augment`) and the split-brain
trunk (:mod:`pathssl.models.split`) both use.

Torch functions take ``(B, 3, H, W)`` tensors on any device; the stain matrices are NumPy
float64 so that the NumPy/OpenCV kernels of :mod:`pathssl.augment.stain` use them directly.

* Lab: CIE L*a*b*, D65 white, sRGB gamma (the formulas of skimage's ``rgb2lab``); L in 0..100.
* HED: Ruifrok & Johnston (2001), "Quantification of histochemical staining by color
  deconvolution", Anal. Quant. Cytol. Histol.: optical density ``OD = -ln(max(I, 1) / 255)``
  (I on 0..255) times the inverse of the stain OD matrix gives the H, E, DAB concentrations.
"""

from __future__ import annotations

import math

import numpy as np
import torch

#: Ruifrok & Johnston (2001) stain OD vectors, rows haematoxylin, eosin, DAB.
RGB_FROM_HED = np.array(
    [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]],
    dtype=np.float64,
)
#: concentrations = OD @ HED_FROM_RGB
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)

LN255 = math.log(255.0)

#: linear sRGB -> CIE XYZ and the D65 white point
_RGB2XYZ = torch.tensor(
    [[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]]
)
_WHITE = torch.tensor([0.950456, 1.0, 1.088754])


def log_intensity(x: torch.Tensor) -> torch.Tensor:
    """``ln(max(I, 1) / 255)`` (= -OD) as float32 of uint8 (0..255) or float ([0, 1]) RGB."""
    if x.dtype == torch.uint8:
        lut = torch.log(torch.arange(256, device=x.device, dtype=torch.float32).clamp_min(1.0))
        return (lut - LN255)[x.long()]
    return torch.log((x.float() * 255.0).clamp_min(1.0)) - LN255


def rgb_to_hed(x: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` uint8 or [0, 1] float RGB -> float32 H, E, DAB concentrations
    (natural-log OD units, unclipped)."""
    m = torch.as_tensor(HED_FROM_RGB, dtype=torch.float32, device=x.device)
    return -torch.einsum("bchw,cd->bdhw", log_intensity(x), m)


def hed_to_rgb(y: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_hed`: float RGB in [0, 1] (not clipped)."""
    m = torch.as_tensor(RGB_FROM_HED, dtype=torch.float32, device=y.device)
    return torch.exp(-torch.einsum("bchw,cd->bdhw", y, m))


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` float RGB in [0, 1] -> CIE L*a*b* (D65, sRGB gamma), L in [0, 100]."""
    lin = torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    m = (_RGB2XYZ / _WHITE[:, None]).to(rgb.device)
    xyz = torch.einsum("dc,bchw->bdhw", m, lin)
    f = torch.where(xyz > 0.008856, xyz.clamp_min(1e-12) ** (1.0 / 3.0), 7.787 * xyz + 16.0 / 116)
    y = xyz[:, 1]
    L = torch.where(y > 0.008856, 116.0 * f[:, 1] - 16.0, 903.3 * y)
    return torch.stack([L, 500.0 * (f[:, 0] - f[:, 1]), 200.0 * (f[:, 1] - f[:, 2])], dim=1)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_lab`; returns float RGB clipped to [0, 1]."""
    L, a, b = lab[:, 0], lab[:, 1], lab[:, 2]
    fy = (L + 16.0) / 116.0
    f = torch.stack([fy + a / 500.0, fy, fy - b / 200.0], dim=1)
    xyz = torch.where(f > 0.206893, f**3, (f - 16.0 / 116) / 7.787)
    xyz[:, 1] = torch.where(L > 903.3 * 0.008856, xyz[:, 1], L / 903.3)
    m = torch.linalg.inv(_RGB2XYZ).to(lab.device) * _WHITE.to(lab.device)[None, :]
    lin = torch.einsum("dc,bchw->bdhw", m, xyz).clamp(0.0, 1.0)
    return torch.where(lin <= 0.0031308, 12.92 * lin, 1.055 * lin ** (1 / 2.4) - 0.055).clamp(0, 1)
