"""The labelled image every nuclei loader and reader gives, and its resolution.

A :class:`LabelledImage` is an RGB image ``(H, W, 3)`` uint8 with an instance map ``(H, W)``
(0 = background, one id per nucleus) and a type map ``(H, W)`` (0 = background, 1..T). Every
image carries its resolution (``mpp``, micrometres per pixel: from the file where it records one,
else the caller's config value, else None); :func:`resample` takes an image and its maps to
another mpp (the model's). Image files are read by :func:`pathssl.data.images.read_rgb`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray


@dataclass
class LabelledImage:
    """One labelled image; ``name`` for reports (the file stem), ``tissue`` the organ / tissue
    (PanNuke's per-tissue scores, held-apart organs), ``patient`` for held-apart patients,
    ``source`` the dataset it came from (``data.sources`` key)."""

    image: NDArray[np.uint8]
    inst: NDArray[np.int32]
    types: NDArray[np.int32]
    name: str = ""
    tissue: str = ""
    origin: tuple[int, int] = (0, 0)  # (x, y) of a region in the image it was cut from
    mpp: float | None = None  # micrometres per pixel (None: not recorded)
    patient: str = ""
    source: str = ""

    def __post_init__(self) -> None:
        h, w = self.image.shape[:2]
        if self.image.ndim != 3 or self.image.shape[2] != 3 or self.image.dtype != np.uint8:
            raise ValueError(f"{self.name}: image must be (H, W, 3) uint8, got {self.image.shape}")
        if self.inst.shape != (h, w) or self.types.shape != (h, w):
            raise ValueError(f"{self.name}: maps {self.inst.shape}/{self.types.shape} != {(h, w)}")

    def region(self, x: int, y: int, w: int, h: int) -> LabelledImage:
        """The sub-image ``[y:y+h, x:x+w]`` (views, no copy)."""
        sl = np.s_[y : y + h, x : x + w]
        origin = (self.origin[0] + x, self.origin[1] + y)
        return dataclasses.replace(
            self, image=self.image[sl], inst=self.inst[sl], types=self.types[sl], origin=origin
        )

    def with_types(self, types: NDArray[np.int32]) -> LabelledImage:
        """The same image and instances with another type map."""
        return dataclasses.replace(self, types=types)


def resize_labels(labels: NDArray[np.int32], width: int, height: int) -> NDArray[np.int32]:
    """An instance or type map ``(H, W)`` -> ``(height, width)`` by nearest neighbour, pixel
    centres aligned (``INTER_NEAREST_EXACT``, the grid the image's area/linear resize uses)."""
    import cv2

    if labels.shape == (height, width):
        return labels
    out = cv2.resize(
        np.ascontiguousarray(labels, np.int32),
        (width, height),
        interpolation=cv2.INTER_NEAREST_EXACT,
    )
    return np.asarray(out, np.int32)


def resample(im: LabelledImage, mpp: float, shape: tuple[int, int] | None = None) -> LabelledImage:
    """``im`` taken to ``mpp`` micrometres per pixel: size ``round((W, H) * im.mpp / mpp)`` (or
    ``shape`` ``(H, W)``, e.g. an image's own size when mapping back), the image by area
    interpolation when shrinking and linear when enlarging (:func:`tiling.slide.resize_rgb`),
    instance and type maps by nearest neighbour with pixel centres aligned (nuclei smaller than a
    pixel may vanish when shrinking; ids are kept). ``origin`` is scaled too."""
    from tiling.slide import resize_rgb

    if im.mpp is None:
        raise ValueError(f"{im.name}: no mpp recorded; set data.mpp to resample it")
    f = im.mpp / mpp  # new px per old px
    h, w = im.image.shape[:2]
    nw, nh = max(1, int(round(w * f))), max(1, int(round(h * f)))
    if shape is not None:
        nh, nw = shape
    origin = (int(round(im.origin[0] * f)), int(round(im.origin[1] * f)))
    return dataclasses.replace(
        im,
        image=resize_rgb(im.image, nw, nh),
        inst=resize_labels(im.inst, nw, nh),
        types=resize_labels(im.types, nw, nh),
        origin=origin,
        mpp=float(mpp),
    )
