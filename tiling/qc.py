"""Tissue detection and per-tile quality control for the tiling stage (numpy + OpenCV only).

All colour rules use OpenCV's 8-bit HSV: hue ``H`` in [0, 180) (degrees / 2), saturation ``S``
and value ``V`` in [0, 255]. Stained tissue is coloured; glass is bright and grey. Pen marks are
strongly saturated inks (:data:`PEN_INKS`) plus anything black: green and blue sit in hue bands
that H&E (pink to purple, H ~ 125-175) and brown DAB (H ~ 8-25) do not occupy; red shares
eosin's hue edge but is far more saturated (S >= 160, eosin and blood stay below ~150). Spatial
sizes in :func:`tissue_mask` are physical (micrometres), converted with micrometres per pixel.
"""

from __future__ import annotations

import threading
from typing import Any

import cv2
import numpy as np

# (hue ranges [lo, hi), minimum saturation) of marker inks; hue ranges do not overlap
PEN_INKS: dict[str, tuple[tuple[tuple[int, int], ...], int]] = {
    "red": (((170, 180), (0, 6)), 160),  # -20..+10 degrees around red, eosin is < 160
    "green": (((35, 100),), 40),  # yellow-green to cyan: no stain of H&E or DAB there
    "blue": (((100, 130),), 130),  # hematoxylin counterstain stays far below 130
}
BLACK_MAX_VALUE = 70  # V < 70 (every channel < 27 % of full scale): black ink, folds, borders
WHITE_MIN_VALUE = 220  # near-white (glass): V >= 220 ...
WHITE_MAX_SATURATION = 30  # ... and S <= 30
PEN_MIN_FRACTION = 0.01  # classify_tile: a tile "has pen" from 1 % ink (after opening)
TILE_NONE_BELOW = 0.10  # classify_tile: tissue fraction < 0.10 -> "none"
TILE_FULL_FROM = 0.50  # classify_tile: tissue fraction >= 0.50 -> "full"
TILE_MIN_SATURATION = 20
TILE_MIN_TEXTURE = 15.0  # Laplacian variance (grey levels^2) below which nothing is in focus

_PIXEL_BUDGET = 4 * 224 * 224  # tile_qc chunks: about 4 tiles, to stay in a 2 MB L2 cache


def _min_saturation_lut() -> np.ndarray:
    """(256,) uint8: hue -> (minimum ink saturation - 1); 255 where no ink hue (S > 255 never)."""
    lut = np.full(256, 255, np.uint8)
    for ranges, min_s in PEN_INKS.values():
        for lo, hi in ranges:
            lut[lo:hi] = min_s - 1
    return lut


_PEN_LUT = _min_saturation_lut()


def _check_rgb(rgb: np.ndarray, ndim: int = 3) -> np.ndarray:
    arr = np.asarray(rgb)
    if arr.ndim != ndim or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise ValueError(
            f"expected a {ndim}-D uint8 RGB array (..., 3), got {arr.dtype} {arr.shape}"
        )
    if ndim == 3 and arr.size == 0:
        raise ValueError(f"empty image {arr.shape}")
    return np.ascontiguousarray(arr)


def _hsv_planes(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(H, W, 3) uint8 RGB -> three (H, W) uint8 planes H, S, V."""
    planes = [np.empty(rgb.shape[:2], np.uint8) for _ in range(3)]
    cv2.mixChannels([cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)], planes, [0, 0, 1, 1, 2, 2])
    return planes[0], planes[1], planes[2]


def _ge(plane: np.ndarray, value: int, dst: np.ndarray | None = None) -> np.ndarray:
    """(H, W) uint8 -> (H, W) uint8, 255 where plane >= value."""
    return cv2.threshold(plane, value - 1, 255, cv2.THRESH_BINARY, dst=dst)[1]


def _le(plane: np.ndarray, value: int, dst: np.ndarray | None = None) -> np.ndarray:
    """(H, W) uint8 -> (H, W) uint8, 255 where plane <= value."""
    return cv2.threshold(plane, value, 255, cv2.THRESH_BINARY_INV, dst=dst)[1]


def _pen_u8(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """(H, W) uint8 planes -> (H, W) uint8 mask, 255 = ink (coloured or black)."""
    ink = cv2.compare(s, cv2.LUT(h, _PEN_LUT), cv2.CMP_GT)
    dark = _le(v, BLACK_MAX_VALUE - 1)
    return cv2.bitwise_or(ink, dark)


def _white_u8(s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """(H, W) uint8 planes -> (H, W) uint8 mask, 255 = near-white."""
    return cv2.bitwise_and(_ge(v, WHITE_MIN_VALUE), _le(s, WHITE_MAX_SATURATION))


def _disk(diameter_px: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (diameter_px, diameter_px))


def _odd_px(length: float) -> int:
    """A length in pixels -> odd kernel diameter (1 = no-op)."""
    return max(1, int(round(length)) // 2 * 2 + 1)


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """(H, W) uint8 0/1 -> same with background regions not connected to the border set to 1."""
    pad = cv2.copyMakeBorder(mask, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    cv2.floodFill(pad, None, (0, 0), 2)
    return (pad[1:-1, 1:-1] != 2).astype(np.uint8)


def pen_mask(rgb: np.ndarray) -> np.ndarray:
    """Marker ink: red, green, blue (per :data:`PEN_INKS`) and black (V < ``BLACK_MAX_VALUE``).

    Eosin pink and hematoxylin purple of normal H&E and brown DAB of IHC are not ink.
    rgb (H, W, 3) uint8 -> (H, W) bool.
    """
    return _pen_u8(*_hsv_planes(_check_rgb(rgb))) > 0


def tissue_mask(
    rgb: np.ndarray,
    mpp: float,
    *,
    min_saturation: int = 20,
    close_um: float = 50.0,
    open_um: float = 25.0,
    min_area_um2: float = 10_000.0,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Tissue mask of a LOW-RESOLUTION whole-slide image (e.g. ~8 micrometre/px).

    rgb (H, W, 3) uint8 -> mask (H, W) bool, and a JSON-able dict of what was used.
    Otsu's threshold on HSV saturation over all non-ink pixels (``otsu``: tissue is S > otsu),
    raised to ``min_saturation`` so a blank slide gives an empty mask: tissue is
    S >= ``threshold`` = max(otsu + 1, min_saturation). Pen ink, black and near-white pixels are
    excluded, then closing (``close_um`` disk), opening (``open_um`` disk), removal of components
    smaller than ``min_area_um2`` and filling of holes. ``mpp`` is micrometres per pixel of rgb.
    """
    rgb = _check_rgb(rgb)
    if not (np.isfinite(mpp) and mpp > 0):
        raise ValueError(f"mpp must be a positive number of micrometres per pixel, got {mpp}")
    if not 0 <= min_saturation <= 255:
        raise ValueError(f"min_saturation must be in [0, 255], got {min_saturation}")
    h, s, v = _hsv_planes(rgb)
    pen = _pen_u8(h, s, v)
    sample = s[pen == 0].reshape(1, -1)
    otsu: int | None = None  # no ink-free pixel at all: nothing can be tissue
    if sample.size:
        otsu = int(cv2.threshold(sample, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)[0])
    threshold = max(int(min_saturation), -1 if otsu is None else otsu + 1)
    keep = cv2.bitwise_not(cv2.bitwise_or(pen, _white_u8(s, v)))
    mask = cv2.bitwise_and(_ge(s, threshold), keep) // 255
    close_px, open_px = _odd_px(close_um / mpp), _odd_px(open_um / mpp)
    if close_px > 1:
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, _disk(close_px))
    if open_px > 1:
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, _disk(open_px))
    min_area_px = float(min_area_um2) / (mpp * mpp)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    small = np.flatnonzero(stats[:, cv2.CC_STAT_AREA] < min_area_px)
    if n > 1:
        mask[np.isin(labels, small[small > 0])] = 0
    mask = _fill_holes(mask)
    info: dict[str, Any] = {
        "method": "otsu-saturation",
        "otsu": otsu,
        "threshold": threshold,
        "min_saturation": int(min_saturation),
        "close_um": float(close_um),
        "open_um": float(open_um),
        "min_area_um2": float(min_area_um2),
        "mpp": float(mpp),
        "close_px": close_px,
        "open_px": open_px,
        "min_area_px": min_area_px,
        "black_max_value": BLACK_MAX_VALUE,
        "white": {"min_value": WHITE_MIN_VALUE, "max_saturation": WHITE_MAX_SATURATION},
        "pen_fraction": float(np.count_nonzero(pen)) / max(pen.size, 1),
    }
    return mask.astype(bool), info


class _Buffers:
    """Preallocated work planes for tile_qc: fresh multi-MB arrays would cost page faults."""

    def __init__(self, rows: int, cols: int) -> None:
        self.shape = (rows, cols)
        self.hsv = np.empty((rows, cols, 3), np.uint8)
        self.h, self.s, self.v, self.lut, self.grey = (
            np.empty((rows, cols), np.uint8) for _ in range(5)
        )
        self.pen, self.white, self.tissue, self.tmp = (
            np.empty((rows, cols), np.uint8) for _ in range(4)
        )
        self.lap = np.empty((rows, cols), np.int16)


_LOCAL = threading.local()


def _buffers(rows: int, cols: int) -> _Buffers:
    buf: _Buffers | None = getattr(_LOCAL, "buf", None)
    if buf is None or buf.shape != (rows, cols):
        buf = _LOCAL.buf = _Buffers(rows, cols)
    return buf


def tile_qc(tiles: np.ndarray, *, saturation_threshold: float) -> dict[str, np.ndarray]:
    """Per-tile QC scores for a batch (N, H, W, 3) uint8 -> {"tissue", "pen", "blur", "white"}.

    Each is float32 (N,). tissue: fraction of pixels with S >= saturation_threshold that are
    neither pen (:func:`pen_mask`) nor near-white; pen: fraction of pen pixels; white: fraction
    of near-white pixels (V >= 220 and S <= 30); blur: variance of the 4-neighbour Laplacian of
    the grey image (BT.601) over the tile's interior (H-2, W-2) pixels, so no value depends on a
    neighbouring tile; higher = sharper. Tiles are stacked as one (N*H, W) image per OpenCV call.
    """
    tiles = _check_rgb(tiles, ndim=4)
    n, height, width = tiles.shape[:3]
    out = {k: np.zeros(n, np.float32) for k in ("tissue", "pen", "blur", "white")}
    if n == 0 or height * width == 0:
        return out
    sat = int(np.clip(np.ceil(saturation_threshold), 0, 256))
    chunk = max(1, _PIXEL_BUDGET // (height * width))
    area, inner = height * width, max(height - 2, 0) * max(width - 2, 0)
    for start in range(0, n, chunk):
        part = tiles[start : start + chunk]
        m = part.shape[0]
        b = _buffers(m * height, width)
        flat = part.reshape(m * height, width, 3)
        cv2.cvtColor(flat, cv2.COLOR_RGB2HSV, dst=b.hsv)
        cv2.mixChannels([b.hsv], [b.h, b.s, b.v], [0, 0, 1, 1, 2, 2])
        cv2.LUT(b.h, _PEN_LUT, dst=b.lut)
        cv2.compare(b.s, b.lut, cv2.CMP_GT, dst=b.pen)
        _le(b.v, BLACK_MAX_VALUE - 1, dst=b.tmp)
        cv2.bitwise_or(b.pen, b.tmp, dst=b.pen)
        _ge(b.v, WHITE_MIN_VALUE, dst=b.white)
        _le(b.s, WHITE_MAX_SATURATION, dst=b.tmp)
        cv2.bitwise_and(b.white, b.tmp, dst=b.white)
        cv2.bitwise_or(b.pen, b.white, dst=b.tmp)
        _ge(b.s, sat, dst=b.tissue)
        cv2.subtract(b.tissue, b.tmp, dst=b.tissue)  # 255 - 255 saturates to 0: AND NOT
        cv2.cvtColor(flat, cv2.COLOR_RGB2GRAY, dst=b.grey)
        cv2.Laplacian(b.grey, cv2.CV_16S, dst=b.lap, ksize=1)
        per_tile = [x.reshape(m, area) for x in (b.tissue, b.pen, b.white)]
        lap = b.lap.reshape(m, height, width)[:, 1:-1, 1:-1]
        for j in range(m):
            k = start + j
            out["tissue"][k] = cv2.countNonZero(per_tile[0][j]) / area
            out["pen"][k] = cv2.countNonZero(per_tile[1][j]) / area
            out["white"][k] = cv2.countNonZero(per_tile[2][j]) / area
            if inner:
                mean = cv2.sumElems(lap[j])[0] / inner
                out["blur"][k] = cv2.norm(lap[j], cv2.NORM_L2SQR) / inner - mean * mean
    return out


def classify_tile(rgb: np.ndarray) -> tuple[str, bool]:
    """Standalone tile (no slide context): ('none'|'partial'|'full', has_pen).

    rgb (H, W, 3) uint8. Without a physical scale, sizes are relative to the tile side L.
    has_pen: ink (:func:`pen_mask`) opened by a disk of L/64 covers >= PEN_MIN_FRACTION.
    Tissue: median-filtered (5 px) S >= TILE_MIN_SATURATION and not ink (the median removes
    glass noise but keeps faint fat membranes), closed by a disk of L/16, holes filled (fat,
    lumina). Its area fraction is "none" below TILE_NONE_BELOW, "full" from TILE_FULL_FROM,
    else "partial". Tissue is in focus: if the grey Laplacian variance over the tissue pixels is
    below TILE_MIN_TEXTURE (the blurred halo of ink on the coverslip, whose colours overlap
    eosin's) the tile is "none"; an out-of-focus tile of tissue is therefore "none" too.
    """
    rgb = _check_rgb(rgb)
    h, s, v = _hsv_planes(rgb)
    side = min(rgb.shape[:2])
    pen = _pen_u8(h, s, v)
    opened = cv2.morphologyEx(pen, cv2.MORPH_OPEN, _disk(max(3, _odd_px(side / 64))))
    has_pen = cv2.countNonZero(opened) >= PEN_MIN_FRACTION * pen.size
    s_med = cv2.medianBlur(s, 5) if side >= 5 else s
    raw = cv2.subtract(_ge(s_med, TILE_MIN_SATURATION), pen) // 255
    closed = cv2.morphologyEx(raw, cv2.MORPH_CLOSE, _disk(max(3, _odd_px(side / 16))))
    fraction = float(np.count_nonzero(_fill_holes(closed))) / raw.size
    lap = cv2.Laplacian(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), cv2.CV_32F, ksize=1)
    inside = lap[1:-1, 1:-1][raw[1:-1, 1:-1] > 0]
    texture = float(inside.astype(np.float64).var()) if inside.size else 0.0
    if fraction < TILE_NONE_BELOW or texture < TILE_MIN_TEXTURE:
        return "none", bool(has_pen)
    return ("full" if fraction >= TILE_FULL_FROM else "partial"), bool(has_pen)


def band_qc(
    band: np.ndarray,
    n: int,
    *,
    saturation_threshold: float,
    colour_step: int = 4,
    blur_step: int = 2,
) -> dict[str, np.ndarray]:
    """The tiler's fast QC: scores of ``n`` tiles lying side by side in one band.

    band (S, n * S, 3) uint8 (tile k = ``band[:, k*S:(k+1)*S]``; any row stride) ->
    {"tissue", "pen", "white", "blur"} float32 (n,), defined as :func:`tile_qc` but measured on
    every ``colour_step``-th pixel of every ``colour_step``-th row (the fractions) and on every
    ``blur_step``-th pixel and row (blur, the Laplacian variance over each tile's interior, so
    never across a tile border). ``tile_qc(tiles[:, ::k, ::k])`` gives the same numbers.
    """
    side = band.shape[0]
    if band.shape[1] != n * side or side % colour_step or side % blur_step:
        raise ValueError(f"band {band.shape} is not {n} tiles of a side divisible by the steps")
    out = {k: np.zeros(n, np.float32) for k in ("tissue", "pen", "blur", "white")}
    # colour fractions on a nearest-neighbour subsample (= band[::k, ::k])
    cs = side // colour_step
    small = cv2.resize(band, (n * cs, cs), interpolation=cv2.INTER_NEAREST)
    h, s, v = _hsv_planes(small)
    pen = _pen_u8(h, s, v)
    white = _white_u8(s, v)
    tissue = cv2.subtract(_ge(s, int(np.clip(np.ceil(saturation_threshold), 0, 256))), pen)
    tissue = cv2.subtract(tissue, white)
    for name, plane in (("tissue", tissue), ("pen", pen), ("white", white)):
        per_tile = plane.reshape(cs, n, cs).sum(axis=(0, 2), dtype=np.int64)
        out[name][:] = per_tile / (255.0 * cs * cs)
    # blur on the grey subsample; the Laplacian's 3x3 stencil stays inside each tile's interior
    bs = side // blur_step
    half = (
        band if blur_step == 1 else cv2.resize(band, (n * bs, bs), interpolation=cv2.INTER_NEAREST)
    )
    lap = cv2.Laplacian(cv2.cvtColor(half, cv2.COLOR_RGB2GRAY), cv2.CV_16S, ksize=1)
    for k in range(n):
        _, std = cv2.meanStdDev(lap[1:-1, k * bs + 1 : (k + 1) * bs - 1])
        out["blur"][k] = float(std[0, 0]) ** 2
    return out
