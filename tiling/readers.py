"""Reading RGB regions of one pyramid level.

Two readers with one interface, ``read(x, y, w, h) -> (h, w, 3) uint8`` in LEVEL coordinates,
pixels outside the level white (255), like a slide's glass:

* :class:`TiffJpegReader` — for JPEG-tiled TIFF levels (Aperio SVS, generic tiled TIFF): reads
  the compressed tiles with ``os.pread`` and decodes each once with libjpeg-turbo (imagecodecs),
  keeping a bounded LRU cache of decoded tiles so neighbouring reads never decode twice. Pixels
  equal openslide's own ``read_region`` (tested).
* :class:`OpenSlideReader` — every other format, through ``openslide.read_region`` with alpha
  composited onto white.

:func:`make_reader` picks the fast one when it applies.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, Protocol

import imagecodecs
import numpy as np
import openslide

_JPEG = 7
_COLORSPACE = {2: "RGB", 6: "YCBCR"}  # TIFF photometric -> JPEG colour space


class LevelReader(Protocol):
    level: int
    width: int
    height: int

    def read(self, x: int, y: int, w: int, h: int, out: np.ndarray | None = None) -> np.ndarray: ...

    def close(self) -> None: ...


class OpenSlideReader:
    """Generic reader through ``openslide.read_region`` (any format openslide reads)."""

    def __init__(self, slide: openslide.OpenSlide, level: int) -> None:
        self.slide = slide
        self.level = level
        self.width, self.height = slide.level_dimensions[level]
        self.downsample = float(slide.level_downsamples[level])

    def read(self, x: int, y: int, w: int, h: int, out: np.ndarray | None = None) -> np.ndarray:
        loc = (round(x * self.downsample), round(y * self.downsample))
        rgb = rgba_to_rgb(np.asarray(self.slide.read_region(loc, self.level, (w, h))))
        if out is not None:
            out[...] = rgb
            return out
        return rgb

    def close(self) -> None:
        pass


def rgba_to_rgb(rgba: np.ndarray) -> np.ndarray:
    """(h, w, 4) uint8 non-premultiplied RGBA -> (h, w, 3) RGB composited onto white."""
    rgb = rgba[..., :3]
    alpha = rgba[..., 3]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgb)
    a = alpha[..., None].astype(np.uint16)
    out = (rgb.astype(np.uint16) * a + 255 * (255 - a) + 127) // 255
    return out.astype(np.uint8)


class TiffJpegReader:
    """Decode-once reader for a JPEG-tiled TIFF page.

    ``cache_bytes`` bounds the decoded-tile cache, so memory stays flat whatever the slide size;
    reads that walk the level row by row decode every source tile once when the cache holds two
    rows of source tiles (the default budget covers ~100k px wide levels of 256 px tiles).
    """

    def __init__(
        self, path: str | Path, page: object, level: int, cache_bytes: int = 160 << 20
    ) -> None:
        self.level = level
        self.width = int(page.imagewidth)  # type: ignore[attr-defined]
        self.height = int(page.imagelength)  # type: ignore[attr-defined]
        self.tw = int(page.tilewidth)  # type: ignore[attr-defined]
        self.th = int(page.tilelength)  # type: ignore[attr-defined]
        self.cols = -(-self.width // self.tw)
        self.rows = -(-self.height // self.th)
        self.offsets = np.asarray(page.dataoffsets, dtype=np.int64)  # type: ignore[attr-defined]
        self.counts = np.asarray(page.databytecounts, dtype=np.int64)  # type: ignore[attr-defined]
        self.tables = page.jpegtables  # type: ignore[attr-defined]
        self.colorspace = _COLORSPACE[int(page.photometric)]  # type: ignore[attr-defined]
        # two rows of source tiles let a row-by-row walk decode every tile once; never more
        # than the byte budget, so memory is flat whatever the slide's size
        self.capacity = max(8, min(2 * self.cols + 8, cache_bytes // (self.tw * self.th * 3)))
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._free: list[np.ndarray] = []  # evicted tiles' memory, decoded into again
        self._fd = os.open(str(path), os.O_RDONLY)
        self.decoded = 0  # number of source tiles decoded (for tests and benchmarks)

    def _tile(self, index: int) -> np.ndarray:
        tile = self._cache.get(index)
        if tile is not None:
            self._cache.move_to_end(index)
            return tile
        count = int(self.counts[index])
        if count == 0:  # sparse tile: nothing scanned there
            tile = np.full((self.th, self.tw, 3), 255, np.uint8)
        else:
            data = os.pread(self._fd, count, int(self.offsets[index]))
            # decoding into reused memory avoids a fresh allocation's page faults per tile
            # (about a third of the decode time for 256 px tiles)
            buf = self._free.pop() if self._free else None
            tile = imagecodecs.jpeg8_decode(
                data,
                tables=self.tables,
                colorspace=self.colorspace,
                outcolorspace="RGB",
                out=buf,
            )
            self.decoded += 1
        self._cache[index] = tile
        if len(self._cache) > self.capacity:
            _, old = self._cache.popitem(last=False)
            if old.shape == (self.th, self.tw, 3):
                self._free.append(old)
        return tile

    def read(self, x: int, y: int, w: int, h: int, out: np.ndarray | None = None) -> np.ndarray:
        """Region at level coordinates -> (h, w, 3) uint8, written into ``out`` if given."""
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + w, self.width), min(y + h, self.height)
        inside = x0 == x and y0 == y and x1 == x + w and y1 == y + h
        if out is None:
            out = np.empty((h, w, 3), np.uint8)
        if not inside:
            out[...] = 255
        if x1 <= x0 or y1 <= y0:
            return out
        for ty in range(y0 // self.th, (y1 - 1) // self.th + 1):
            for tx in range(x0 // self.tw, (x1 - 1) // self.tw + 1):
                tile = self._tile(ty * self.cols + tx)
                # intersection of the tile with the request, in level coordinates
                ax0, ay0 = max(x0, tx * self.tw), max(y0, ty * self.th)
                ax1 = min(x1, (tx + 1) * self.tw)
                ay1 = min(y1, (ty + 1) * self.th)
                out[ay0 - y : ay1 - y, ax0 - x : ax1 - x] = tile[
                    ay0 - ty * self.th : ay1 - ty * self.th,
                    ax0 - tx * self.tw : ax1 - tx * self.tw,
                ]
        return out

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:  # pragma: no cover - safety net
        self.close()


def _find_tiff_page(path: Path, width: int, height: int) -> object | None:
    """The JPEG-tiled, 8-bit RGB TIFF page with these dimensions, if the file is a TIFF."""
    import tifffile

    try:
        with tifffile.TiffFile(str(path)) as tif:
            candidates: list[Any] = []
            for series in tif.series:
                candidates.extend(level.keyframe for level in series.levels)
            for page in candidates:
                ok = (
                    page.is_tiled
                    and page.imagewidth == width
                    and page.imagelength == height
                    and page.compression == _JPEG
                    and page.samplesperpixel == 3
                    and page.bitspersample == 8
                    and page.planarconfig == 1
                    and int(page.photometric) in _COLORSPACE
                    and page.imagedepth == 1
                )
                if ok:
                    return page
    except (tifffile.TiffFileError, OSError, ValueError, IndexError):
        return None
    return None


FAST_VENDORS = frozenset({"aperio", "generic-tiff"})


def make_reader(
    path: str | Path, slide: openslide.OpenSlide, level: int, *, fast: bool = True
) -> LevelReader:
    """A reader for ``level``: the decode-once JPEG reader where it applies, else openslide."""
    vendor = slide.properties.get("openslide.vendor", "")
    if fast and vendor in FAST_VENDORS:
        w, h = slide.level_dimensions[level]
        page = _find_tiff_page(Path(path), w, h)
        if page is not None:
            return TiffJpegReader(path, page, level)
    return OpenSlideReader(slide, level)
