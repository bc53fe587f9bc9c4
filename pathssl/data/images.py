"""Reading image files (tiles, labelled nuclei images, stain targets) as RGB: one reader for
the whole package."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from numpy.typing import NDArray

__all__ = ["read_rgb"]


def read_rgb(path: str | Path) -> NDArray[np.uint8]:
    """An image file (PNG, TIFF, JPEG, ...; grey, RGB or RGBA, 8 or 16 bit) as ``(H, W, 3)``
    RGB uint8. Transparent pixels of an RGBA image are composited onto white (glass); a 16-bit
    image keeps its 8 high bits. A multi-page TIFF gives its first page."""
    import cv2

    jpeg = Path(path).suffix.lower() in (".jpg", ".jpeg")  # IMREAD_COLOR applies EXIF rotation
    raw = cv2.imread(str(path), cv2.IMREAD_COLOR if jpeg else cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise FileNotFoundError(f"cannot read image {path}")
    if raw.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"{path}: {raw.dtype} pixels; expected an 8- or 16-bit image")
    px: NDArray[np.uint8] = (raw // 256 if raw.dtype == np.uint16 else raw).astype(np.uint8)
    if px.ndim == 2:
        return np.ascontiguousarray(np.repeat(px[..., None], 3, axis=2))
    rgb: NDArray[np.uint8] = np.ascontiguousarray(px[..., 2::-1])
    if px.shape[2] == 4 and (alpha := px[..., 3]).min() < 255:
        a = alpha[..., None].astype(np.float32) / 255
        rgb = np.round(rgb * a + 255 * (1 - a)).astype(np.uint8)
    return rgb
