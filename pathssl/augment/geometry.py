"""Geometry on (H, W, C) NumPy images and their masks: dihedral group and multi-field-of-view crops.

One random draw is applied to the image and to every mask (instance and type maps use
nearest-neighbour resampling, so labels are never blended). Random resized crops on the CPU use
``albumentations.RandomResizedCrop`` (already a dual transform); the batched twin is in
:mod:`.torch_ops`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np


def dihedral(x: np.ndarray, k: int) -> np.ndarray:
    """Element ``k`` (0-7) of the dihedral group D4 on an (H, W, ...) array.

    ``k % 4`` quarter turns counter-clockwise (``np.rot90``), then a horizontal flip if
    ``k >= 4``. ``k = 0`` is the identity. Returns a C-contiguous copy.
    """
    if not 0 <= k < 8:
        raise ValueError(f"dihedral index must be in 0..7, got {k}")
    y = np.rot90(x, k % 4, axes=(0, 1))
    if k >= 4:
        y = y[:, ::-1]
    return np.ascontiguousarray(y)


def fov_centre(u: float, big: int, extent: int) -> float:
    """The centre coordinate for a uniform draw ``u`` in [0, 1): uniform over where a field of
    ``big`` pixels fits in ``extent`` pixels (``big / 2 + u * (extent - big)``)."""
    return big / 2 + float(u) * (extent - big)


def fov_origin(centre: float, side: int, extent: int) -> int:
    """First pixel of a ``side``-pixel field centred at ``centre``, kept inside ``extent``."""
    return int(min(max(round(centre - side / 2), 0), extent - side))


@dataclass(frozen=True)
class FOVCrop:
    """One field of view: ``image`` (size, size, C) and ``masks`` (size, size) each, plus the
    source box ``(x0, y0, side)`` in input pixels and its physical side in micrometres."""

    image: np.ndarray
    masks: list[np.ndarray]
    box: tuple[int, int, int]
    field_um: float


def crop_resize(x: np.ndarray, x0: int, y0: int, side: int, size: int, nearest: bool) -> np.ndarray:
    """Square crop ``x[y0:y0+side, x0:x0+side]`` resized to (size, size).

    Nearest neighbour for masks; area averaging when shrinking an image, bilinear when enlarging.
    """
    crop = x[y0 : y0 + side, x0 : x0 + side]
    if side == size:
        return np.ascontiguousarray(crop)
    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    src = crop.astype(np.int32) if crop.dtype == np.int64 else crop
    return cv2.resize(src, (size, size), interpolation=interp).astype(x.dtype, copy=False)


def multi_fov_crop(
    image: np.ndarray,
    mpp: float,
    fields_um: Sequence[float],
    size: int,
    rng: np.random.Generator,
    masks: Sequence[np.ndarray] = (),
    jitter: bool = True,
) -> list[FOVCrop]:
    """The same tissue location at several physical fields of view.

    Picks one centre (uniformly where the largest field fits, or the image centre when
    ``jitter`` is False) and crops a square of ``field_um / mpp`` input pixels around it for each
    field, resampled to ``size`` x ``size`` (output mpp = ``field_um / size``).

    Args:
        image: (H, W, 3) uint8. mpp: micrometres per pixel of ``image`` (e.g. ``store.mpp``).
        fields_um: side of each field in micrometres, e.g. ``(112, 448)``.
        size: output side in pixels. rng: the one random draw for image and masks.
        masks: (H, W) integer maps (instance, type), cropped with nearest neighbour.

    Returns:
        one :class:`FOVCrop` per field, in the order of ``fields_um``.
    """
    h, w = image.shape[:2]
    sides = [max(1, round(f / mpp)) for f in fields_um]
    big = max(sides)
    if big > min(h, w):
        raise ValueError(
            f"a {max(fields_um)} um field needs {big} px at {mpp} mpp; image is {w}x{h}"
        )
    if jitter:
        cx = rng.uniform(big / 2, w - big / 2)
        cy = rng.uniform(big / 2, h - big / 2)
    else:
        cx, cy = w / 2, h / 2
    out = []
    for f, side in zip(fields_um, sides, strict=True):
        x0, y0 = fov_origin(cx, side, w), fov_origin(cy, side, h)
        out.append(
            FOVCrop(
                image=crop_resize(image, x0, y0, side, size, nearest=False),
                masks=[crop_resize(m, x0, y0, side, size, nearest=True) for m in masks],
                box=(x0, y0, side),
                field_um=float(f),
            )
        )
    return out
