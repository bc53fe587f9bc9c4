"""Optical density, HED colour deconvolution and the fused OD-space colour map (NumPy/OpenCV).

Conventions shared by both backends (NumPy here, batched torch in :mod:`.torch_ops`):

* Optical density uses the natural log and a white level of 255:
  ``OD = -ln(max(I, 1) / 255)`` per RGB channel, so a white pixel has OD 0 and ``I = 0`` is
  treated as ``I = 1`` (the only place the identity map can move a pixel, by one grey level).
* Pixels are row vectors: stain concentrations are ``C = OD @ inv(S)`` and ``OD = C @ S`` for a
  stain matrix ``S`` whose rows are the stains' OD vectors.
* HED uses the Ruifrok & Johnston (2001) stain vectors (the same numbers as
  ``skimage.color.rgb_from_hed``) but, unlike ``skimage.color.rgb2hed``, never clips negative
  concentrations, so ``hed_to_rgb(rgb_to_hed(x)) == x`` up to rounding. Concentrations are in
  natural-log OD units (skimage divides them by ``-ln(1e-6)``).

Every linear stain operation (HED jitter, Macenko normalisation and augmentation) is an affine
map ``OD' = OD @ A + b`` and runs through one fused op, :func:`apply_od_affine`: a look-up table for
``ln``, one 3x3(+bias) ``cv2.transform`` and ``cv2.exp``.
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np

from pathssl.data.colour import HED_FROM_RGB, RGB_FROM_HED

#: ``ln(max(I, 1) / 255)`` for I = 0..255, i.e. ``-OD``.
LOG_LUT = np.log(np.maximum(np.arange(256, dtype=np.float64), 1.0) / 255.0).astype(np.float32)
_LOG_LUT3 = np.ascontiguousarray(np.repeat(LOG_LUT[:, None], 3, axis=1).reshape(256, 1, 3))

Space = Literal["lab", "hsv", "hed"]
SPACES: tuple[str, ...] = ("lab", "hsv", "hed")


def _check_rgb(img: np.ndarray) -> None:
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {img.dtype} {img.shape}")


def rgb_to_od(img: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W, 3) float32 optical density ``-ln(max(I, 1) / 255)``."""
    _check_rgb(img)
    return -cv2.LUT(img, _LOG_LUT3)


def od_to_rgb(od: np.ndarray) -> np.ndarray:
    """(H, W, 3) float optical density -> (H, W, 3) uint8 RGB (rounded, saturated)."""
    out = np.exp(-od.astype(np.float32, copy=False)) * 255.0
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def rgb_to_hed(img: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W, 3) float32 unclipped H, E, DAB concentrations (OD units).

    Ruifrok & Johnston colour deconvolution. Equals ``skimage.color.rgb2hed(img) * -ln(1e-6)``
    wherever skimage does not clip (all concentrations >= 0) and ``I >= 1``.
    """
    return (rgb_to_od(img).reshape(-1, 3) @ HED_FROM_RGB.astype(np.float32)).reshape(img.shape)


def hed_to_rgb(hed: np.ndarray) -> np.ndarray:
    """(H, W, 3) float H, E, DAB concentrations -> (H, W, 3) uint8 RGB; inverse of rgb_to_hed."""
    od = hed.reshape(-1, 3).astype(np.float64) @ RGB_FROM_HED
    return od_to_rgb(od.reshape(hed.shape))


def hed_jitter_affine(alpha: np.ndarray, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """HED jitter (Tellez et al. 2019) as one OD-space affine map.

    ``hed' = hed * alpha + beta`` per stain becomes ``OD' = OD @ A + b`` with
    ``A = inv(S) diag(alpha) S`` and ``b = beta @ S`` (``S`` = :data:`RGB_FROM_HED`).

    Args:
        alpha: (3,) per-stain scales (1 = unchanged).
        beta: (3,) per-stain shifts in OD units (0 = unchanged).

    Returns:
        ``A`` (3, 3) and ``b`` (3,), float64.
    """
    alpha = np.asarray(alpha, dtype=np.float64).reshape(3)
    beta = np.asarray(beta, dtype=np.float64).reshape(3)
    return HED_FROM_RGB @ np.diag(alpha) @ RGB_FROM_HED, beta @ RGB_FROM_HED


def apply_od_affine(img: np.ndarray, A: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Fused ``OD' = OD @ A + b`` on a uint8 RGB image; the CPU stain kernel.

    ``ln(I/255)`` comes from a 256-entry look-up table, the affine map is one ``cv2.transform``
    (``ln I'/255 = ln(I/255) @ A - b``) and ``cv2.exp`` + ``cv2.convertScaleAbs`` give the
    rounded, saturated uint8 result (the argument of the absolute value is never negative).

    Args:
        img: (H, W, 3) uint8 RGB.
        A: (3, 3) map on OD row vectors.
        b: (3,) OD offset.

    Returns:
        (H, W, 3) uint8 RGB.
    """
    _check_rgb(img)
    m = np.empty((3, 4), dtype=np.float32)
    m[:, :3] = np.asarray(A, dtype=np.float64).T
    m[:, 3] = -np.asarray(b, dtype=np.float64)
    y = cv2.transform(cv2.LUT(img, _LOG_LUT3), m)
    cv2.exp(y, y)
    return cv2.convertScaleAbs(y, alpha=255.0)


def hed_jitter(img: np.ndarray, alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """HED jitter (Tellez et al. 2019) of one (H, W, 3) uint8 RGB image with given parameters."""
    A, b = hed_jitter_affine(alpha, beta)
    return apply_od_affine(img, A, b)


# ----------------------------------------------------------------------------------------------
# Colour spaces for Reinhard / RandStainNA (float32 in, float32 out)
# ----------------------------------------------------------------------------------------------


def rgb_to_space(img: np.ndarray, space: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W, 3) float32 in ``space``.

    ``lab``: CIE L*a*b* (D65, sRGB gamma; L in [0, 100]); ``hsv``: H in degrees [0, 360), S and
    V in [0, 1]; ``hed``: unclipped HED concentrations (see :func:`rgb_to_hed`).
    """
    _check_rgb(img)
    if space == "hed":
        return rgb_to_hed(img)
    f = img.astype(np.float32) * np.float32(1.0 / 255.0)
    if space == "lab":
        return cv2.cvtColor(f, cv2.COLOR_RGB2LAB)
    if space == "hsv":
        return cv2.cvtColor(f, cv2.COLOR_RGB2HSV)
    raise ValueError(f"unknown colour space {space!r}; known: {', '.join(SPACES)}")


def space_to_rgb(x: np.ndarray, space: str) -> np.ndarray:
    """(H, W, 3) float values in ``space`` -> (H, W, 3) uint8 RGB (inverse of rgb_to_space)."""
    if space == "hed":
        return hed_to_rgb(x)
    x = np.ascontiguousarray(x, dtype=np.float32)
    if space == "lab":
        f = cv2.cvtColor(x, cv2.COLOR_LAB2RGB)
    elif space == "hsv":
        x = x.copy()
        x[..., 0] %= 360.0
        np.clip(x[..., 1:], 0.0, 1.0, out=x[..., 1:])
        f = cv2.cvtColor(x, cv2.COLOR_HSV2RGB)
    else:
        raise ValueError(f"unknown colour space {space!r}; known: {', '.join(SPACES)}")
    return np.clip(np.rint(f * 255.0), 0, 255).astype(np.uint8)


def channel_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of an (H, W, 3) float image: two (3,) arrays."""
    mean, std = cv2.meanStdDev(np.ascontiguousarray(x, dtype=np.float32))
    return mean.reshape(3), std.reshape(3)


def restandardise(
    img: np.ndarray,
    space: str,
    mean: np.ndarray,
    std: np.ndarray,
    eps: float = 1e-6,
) -> np.ndarray:
    """Move an image's per-channel mean/std in ``space`` to the given template.

    ``x' = (x - mean_x) / std_x * std + mean`` per channel, the core of Reinhard et al. (2001)
    colour transfer and of RandStainNA (Shen et al. 2022).

    Args:
        img: (H, W, 3) uint8 RGB.
        space: ``lab``, ``hsv`` or ``hed``.
        mean: (3,) template means in ``space``.
        std: (3,) template standard deviations in ``space``.

    Returns:
        (H, W, 3) uint8 RGB.
    """
    x = rgb_to_space(img, space)
    m, s = channel_stats(x)
    scale = np.asarray(std, dtype=np.float64) / np.maximum(s, eps)
    shift = np.asarray(mean, dtype=np.float64) - m * scale
    y = x * scale.astype(np.float32) + shift.astype(np.float32)
    return space_to_rgb(y, space)
