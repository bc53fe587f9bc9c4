"""Tile grid geometry, the streamed low-resolution thumbnail, and tile selection by tissue.

Coordinates: the grid lives in TILE pixels (at the tile mpp). Tile (row, col) starts at tile
pixel (col * stride, row * stride); in LEVEL pixels at round(col * stride * scale) (``scale`` =
level px per tile px), and in level-0 pixels at that times ``downsample``. A tile is the
round(size * scale) square read there, resized to ``size`` (area interpolation) when scale != 1.
Only tiles wholly inside the slide are on the grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from tiling.readers import LevelReader


@dataclass(frozen=True)
class Grid:
    """Tile grid of a slide: ``rows`` x ``cols`` tiles of ``size`` px with ``stride`` px steps.

    ``scale`` = level pixels per tile pixel, ``downsample`` = level-0 pixels per level pixel.
    """

    rows: int
    cols: int
    size: int
    stride: int
    scale: float
    downsample: float

    @property
    def level0_per_tile_px(self) -> float:
        return self.scale * self.downsample

    @property
    def level_size(self) -> int:
        """Side of a tile's footprint in level pixels."""
        return self.size if self.scale == 1.0 else max(1, int(round(self.size * self.scale)))

    def level_x(self, index: np.ndarray | int) -> np.ndarray:
        """Integer level-pixel start of grid column (or row) ``index``."""
        return np.rint(np.asarray(index) * self.stride * self.scale).astype(np.int64)

    def level0_coords(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """(N, 2) int64 level-0 x, y of tiles (rows[i], cols[i])."""
        xy = np.stack([self.level_x(cols), self.level_x(rows)], axis=1) * self.downsample
        return np.rint(xy).astype(np.int64)


def make_grid(
    level0_dims: tuple[int, int], downsample: float, scale: float, size: int, overlap: int
) -> Grid:
    """Grid of whole tiles over a slide of ``level0_dims`` (width, height) level-0 pixels."""
    stride = size - overlap
    per = scale * downsample  # level-0 px per tile px
    width_t = level0_dims[0] / per
    height_t = level0_dims[1] / per
    cols = int(math.floor((width_t - size) / stride)) + 1 if width_t >= size else 0
    rows = int(math.floor((height_t - size) / stride)) + 1 if height_t >= size else 0
    return Grid(rows, cols, size, stride, scale, downsample)


def thumbnail_factor(level_mpp: float, mask_mpp: float) -> int:
    """Integer shrink factor from a level to the thumbnail (about ``mask_mpp`` um/px)."""
    return max(1, int(round(mask_mpp / level_mpp)))


def stream_thumbnail(reader: LevelReader, factor: int, block: int = 2048) -> np.ndarray:
    """Whole-level RGB thumbnail shrunk by the integer ``factor`` with area averaging.

    Reads the level in blocks (memory stays at one block whatever the level's size).
    Output size: (ceil(h / factor), ceil(w / factor), 3).
    """
    w, h = reader.width, reader.height
    out_w, out_h = -(-w // factor), -(-h // factor)
    out = np.empty((out_h, out_w, 3), np.uint8)
    step = max(factor, block // factor * factor)
    for y in range(0, h, step):
        for x in range(0, w, step):
            bw, bh = min(step, w - x), min(step, h - y)
            # pad to a multiple of the factor with the edge's own pixels (white outside)
            pw, ph = -(-bw // factor) * factor, -(-bh // factor) * factor
            region = reader.read(x, y, pw, ph)
            if factor > 1:
                small = cv2.resize(
                    region, (pw // factor, ph // factor), interpolation=cv2.INTER_AREA
                )
            else:
                small = region
            out[y // factor : (y + ph) // factor, x // factor : (x + pw) // factor] = small
    return out


def mask_fractions(mask: np.ndarray, grid: Grid, mask_downsample: float) -> np.ndarray:
    """Fraction of each grid tile's footprint inside ``mask`` -> (rows, cols) float32.

    ``mask_downsample`` = level-0 pixels per mask pixel. Uses an integral image; each
    footprint covers at least one mask pixel.
    """
    if grid.rows == 0 or grid.cols == 0:
        return np.zeros((grid.rows, grid.cols), np.float32)
    integral = cv2.integral(mask.astype(np.uint8))  # int32 (h + 1, w + 1)
    per = grid.level0_per_tile_px / mask_downsample  # mask px per tile px
    start_c = np.arange(grid.cols) * grid.stride * per
    start_r = np.arange(grid.rows) * grid.stride * per
    span = grid.size * per
    mh, mw = mask.shape

    def bounds(start: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
        lo = np.clip(np.rint(start).astype(np.int64), 0, limit - 1)
        hi = np.clip(np.rint(start + span).astype(np.int64), lo + 1, limit)
        return lo, hi

    x0, x1 = bounds(start_c, mw)
    y0, y1 = bounds(start_r, mh)
    total = (
        integral[y1[:, None], x1[None, :]]
        - integral[y0[:, None], x1[None, :]]
        - integral[y1[:, None], x0[None, :]]
        + integral[y0[:, None], x0[None, :]]
    )
    area = (y1 - y0)[:, None] * (x1 - x0)[None, :]
    return (total / area).astype(np.float32)
