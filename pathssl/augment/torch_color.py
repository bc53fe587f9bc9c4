"""Batched colour kernels in torch (CPU or GPU) with the semantics of :mod:`.stain`.

The colour-space conversions themselves live in :mod:`pathssl.data.colour`.
Images are (B, 3, H, W) tensors, either uint8 in [0, 255] or floating in [0, 1]; every op
returns the input's dtype. Per-sample parameters have a leading batch dimension B.
"""

from __future__ import annotations

import numpy as np
import torch

from pathssl.data.colour import (
    HED_FROM_RGB,
    RGB_FROM_HED,
    hed_to_rgb,
    lab_to_rgb,
    log_intensity,
    rgb_to_hed,
    rgb_to_lab,
)


def _from_unit(y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Float values on [0, 1] scale -> dtype of ``like`` (uint8 rounded and saturated)."""
    if like.dtype == torch.uint8:
        return (y * 255.0).round_().clamp_(0, 255).to(torch.uint8)
    return y.clamp(0.0, 1.0).to(like.dtype)


def _batched(m: torch.Tensor | np.ndarray, b: int, device: torch.device, shape: tuple[int, ...]):
    t = torch.as_tensor(m, dtype=torch.float32, device=device)
    return t.expand(b, *shape) if t.dim() == len(shape) else t


def od_affine(x: torch.Tensor, A: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray):
    """Per-sample ``OD' = OD @ A + b``, the batched twin of
    :func:`pathssl.augment.stain.apply_od_affine`.

    Args:
        x: (B, 3, H, W) uint8 or float in [0, 1].
        A: (B, 3, 3) or (3, 3) maps on OD row vectors.
        b: (B, 3) or (3,) OD offsets.

    Returns:
        (B, 3, H, W), dtype of ``x``.
    """
    n = x.shape[0]
    A_ = _batched(A, n, x.device, (3, 3))
    b_ = _batched(b, n, x.device, (3,))
    y = torch.einsum("bchw,bcd->bdhw", log_intensity(x), A_) - b_[:, :, None, None]
    return _from_unit(torch.exp(y), x)


def hed_jitter_affine(alpha: torch.Tensor, beta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched :func:`pathssl.augment.stain.hed_jitter_affine`: (B, 3) -> A (B, 3, 3), b (B, 3)."""
    dev = alpha.device
    h2 = torch.as_tensor(HED_FROM_RGB, dtype=torch.float32, device=dev)
    r = torch.as_tensor(RGB_FROM_HED, dtype=torch.float32, device=dev)
    A = (h2[None] * alpha.float()[:, None, :]) @ r
    return A, beta.float() @ r


def hed_jitter(x: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """HED jitter (Tellez et al. 2019) of (B, 3, H, W) with (B, 3) scales and (B, 3) shifts."""
    A, b = hed_jitter_affine(alpha.to(x.device), beta.to(x.device))
    return od_affine(x, A, b)


# ---------------------------------------------------------------------------------------------
# Colour spaces, matching OpenCV's float conversions used by the NumPy backend
# ---------------------------------------------------------------------------------------------


def _to_unit(x: torch.Tensor) -> torch.Tensor:
    return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()


def rgb_to_hsv(rgb: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) float RGB in [0, 1] -> H in degrees [0, 360), S, V in [0, 1]."""
    r, g, b = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    v, _ = rgb.max(dim=1)
    mn, _ = rgb.min(dim=1)
    d = v - mn
    s = torch.where(v > 0, d / v.clamp_min(1e-12), torch.zeros_like(v))
    dd = d.clamp_min(1e-12)
    h = torch.where(
        v == r,
        60.0 * (g - b) / dd,
        torch.where(v == g, 120.0 + 60.0 * (b - r) / dd, 240.0 + 60.0 * (r - g) / dd),
    )
    h = torch.where(d > 0, h % 360.0, torch.zeros_like(h))
    return torch.stack([h, s, v], dim=1)


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_hsv` (hue taken modulo 360, S and V clipped to [0, 1])."""
    h = (hsv[:, 0] % 360.0) / 60.0
    s, v = hsv[:, 1].clamp(0, 1), hsv[:, 2].clamp(0, 1)
    k = torch.stack([(5.0 + h) % 6.0, (3.0 + h) % 6.0, (1.0 + h) % 6.0], dim=1)
    w = torch.minimum(k, 4.0 - k).clamp(0.0, 1.0)
    return v[:, None] - (v * s)[:, None] * w


def rgb_to_space(x: torch.Tensor, space: str) -> torch.Tensor:
    """(B, 3, H, W) uint8 or [0, 1] float RGB -> float32 values in ``lab``, ``hsv`` or ``hed``."""
    if space == "hed":
        return rgb_to_hed(x)
    if space == "lab":
        return rgb_to_lab(_to_unit(x))
    if space == "hsv":
        return rgb_to_hsv(_to_unit(x))
    raise ValueError(f"unknown colour space {space!r}")


def space_to_rgb(y: torch.Tensor, space: str, like: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_space`, returned in the dtype of ``like``."""
    if space == "hed":
        return _from_unit(hed_to_rgb(y), like)
    if space == "lab":
        return _from_unit(lab_to_rgb(y), like)
    if space == "hsv":
        return _from_unit(hsv_to_rgb(y), like)
    raise ValueError(f"unknown colour space {space!r}")


def restandardise(
    x: torch.Tensor, space: str, mean: torch.Tensor, std: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """Batched :func:`pathssl.augment.stain.restandardise`: per-sample (B, 3) template means and
    stds in ``space`` (Reinhard et al. 2001; RandStainNA, Shen et al. 2022)."""
    y = rgb_to_space(x, space)
    s, m = torch.std_mean(y, dim=(2, 3), correction=0)
    scale = std.to(y.device).float() / s.clamp_min(eps)
    shift = mean.to(y.device).float() - m * scale
    return space_to_rgb(y * scale[:, :, None, None] + shift[:, :, None, None], space, x)
