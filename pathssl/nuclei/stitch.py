"""Window plan and stitching for nuclei inference: each nucleus once, none cut.

Windows of ``window`` px overlap by ``overlap`` px (:func:`plan_windows`). Along each axis the
plane is cut at the middle of every overlap; a window *owns* the nuclei whose centroid falls in
its part, and drops nuclei that touch one of its edges inside the image (cut nuclei,
:func:`kept_ids`). Owned parts partition the image; a nucleus reaching less than
``overlap / 2 - slack`` px beyond its centroid is never cut.

Centroid ownership gives each nucleus to one window when the windows agree on it. They need
not: two windows see a nucleus near their common cut with different context, so its two
segmentations, and their centroids, differ slightly; with the centroids on either side of the
cut both windows would keep it (a duplicate) or neither (a loss). Windows therefore keep nuclei
whose centroid lies up to ``slack`` px past their cut, and :class:`BorderDedup` drops a nucleus
when more than ``min_cover`` of the smaller of it and a nucleus an earlier window kept is shared
(the first window's segmentation wins).

Only nuclei reaching into the parts a window shares with its neighbours can be seen by another
window, so only they are remembered; windows arrive row by row, and nuclei that end above the
current window's top are forgotten, so memory follows one row of windows, not the slide.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi

from pathssl.nuclei.postprocess import Instances


def window_origins(length: int, window: int, overlap: int) -> list[int]:
    """Window starts covering ``[0, length)``: stride ``window - overlap``, the last window
    moved back to end at ``length`` (one window at 0 when ``length <= window``)."""
    if not 0 <= overlap < window:
        raise ValueError(f"overlap {overlap} must be in [0, window {window})")
    if length <= window:
        return [0]
    stride = window - overlap
    starts = list(range(0, length - window, stride))
    starts.append(length - window)
    return starts


def ownership(origins: list[int], window: int, length: int) -> list[tuple[float, float]]:
    """Owned interval ``[lo, hi)`` of each window: cuts at the middle of each overlap; the first
    starts at 0 and the last ends at ``length`` (nothing beyond the image or region is owned,
    e.g. slide pixels a window reads past the end of a region)."""
    cuts = [(origins[k + 1] + origins[k] + window) / 2 for k in range(len(origins) - 1)]
    return list(zip([0.0, *cuts], [*cuts, float(length)], strict=True))


@dataclass
class Window:
    x: int
    y: int
    own_x: tuple[float, float]
    own_y: tuple[float, float]
    cut_left: bool  # True where the window edge is inside the image (nuclei touching it are cut)
    cut_top: bool
    cut_right: bool
    cut_bottom: bool


def plan_windows(width: int, height: int, window: int, overlap: int) -> list[Window]:
    xs, ys = window_origins(width, window, overlap), window_origins(height, window, overlap)
    ox, oy = ownership(xs, window, width), ownership(ys, window, height)
    return [
        Window(x, y, ox[i], oy[j], x > 0, y > 0, x + window < width, y + window < height)
        for j, y in enumerate(ys)
        for i, x in enumerate(xs)
    ]


def core_box(win: Window, window: int) -> tuple[int, int, int, int]:
    """Window-local ``(x0, y0, x1, y1)`` covered by no other window: the neighbours' extents
    follow from the cuts (each cut is the middle of the overlap)."""
    x0 = int(np.ceil(2 * win.own_x[0] - 2 * win.x)) if win.cut_left else 0
    y0 = int(np.ceil(2 * win.own_y[0] - 2 * win.y)) if win.cut_top else 0
    x1 = int(2 * win.own_x[1] - 2 * win.x - window) if win.cut_right else window
    y1 = int(2 * win.own_y[1] - 2 * win.y - window) if win.cut_bottom else window
    return x0, y0, x1, y1


def kept_ids(res: Instances, win: Window, window: int, slack: float = 0.0) -> NDArray[np.int64]:
    """Ids (1-based) of the nuclei this window owns (centroid in its part, or up to ``slack`` px
    past an inner cut) and that are not cut by its edges."""
    if not len(res):
        return np.zeros(0, np.int64)
    cx, cy = res.centroid[:, 0] + win.x, res.centroid[:, 1] + win.y
    xa = win.own_x[0] - (slack if win.cut_left else 0)
    xb = win.own_x[1] + (slack if win.cut_right else 0)
    ya = win.own_y[0] - (slack if win.cut_top else 0)
    yb = win.own_y[1] + (slack if win.cut_bottom else 0)
    own = (cx >= xa) & (cx < xb) & (cy >= ya) & (cy < yb)
    inst = res.inst
    touch = np.zeros(len(res) + 1, bool)
    for flag, edge in (
        (win.cut_left, inst[:, 0]),
        (win.cut_right, inst[:, window - 1]),
        (win.cut_top, inst[0, :]),
        (win.cut_bottom, inst[window - 1, :]),
    ):
        if flag:
            touch[edge] = True
    return np.nonzero(own & ~touch[1:])[0] + 1


CELL = 64  # px, spatial hash cell


@dataclass
class _Kept:
    x0: int  # global (model pixel) top-left of the mask
    y0: int
    mask: NDArray[np.bool_]
    area: int

    @property
    def y1(self) -> int:
        return self.y0 + self.mask.shape[0]


class BorderDedup:
    """Filter the kept ids of successive windows (row-major order) against earlier windows."""

    def __init__(self, min_cover: float = 0.5) -> None:
        self.min_cover = min_cover
        self.items: dict[int, _Kept] = {}
        self.grid: dict[tuple[int, int], list[int]] = {}
        self.next_id = 0
        self.dropped = 0  # duplicates removed so far

    def _cells(self, x0: int, y0: int, x1: int, y1: int) -> list[tuple[int, int]]:
        return [
            (cx, cy)
            for cy in range(y0 // CELL, (y1 - 1) // CELL + 1)
            for cx in range(x0 // CELL, (x1 - 1) // CELL + 1)
        ]

    def _prune(self, top: int) -> None:
        gone = [i for i, k in self.items.items() if k.y1 <= top]
        for i in gone:
            del self.items[i]
        if gone:
            self.grid = {
                c: live
                for c, ids in self.grid.items()
                if (live := [i for i in ids if i in self.items])
            }

    def _duplicate(self, x0: int, y0: int, mask: NDArray[np.bool_], area: int) -> bool:
        y1, x1 = y0 + mask.shape[0], x0 + mask.shape[1]
        seen: set[int] = set()
        for cell in self._cells(x0, y0, x1, y1):
            for i in self.grid.get(cell, ()):
                if i in seen or i not in self.items:
                    continue
                seen.add(i)
                k = self.items[i]
                ix0, iy0 = max(x0, k.x0), max(y0, k.y0)
                ix1 = min(x1, k.x0 + k.mask.shape[1])
                iy1 = min(y1, k.y1)
                if ix0 >= ix1 or iy0 >= iy1:
                    continue
                a = mask[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0]
                b = k.mask[iy0 - k.y0 : iy1 - k.y0, ix0 - k.x0 : ix1 - k.x0]
                shared = int(np.count_nonzero(a & b))
                if shared > self.min_cover * min(area, k.area):
                    return True
        return False

    def filter(
        self,
        x: int,
        y: int,
        core: tuple[int, int, int, int],
        res: Instances,
        keep: NDArray[np.int64],
    ) -> NDArray[np.int64]:
        """The ids of ``keep`` (1-based, in ``res``) that no earlier window kept. ``(x, y)``: the
        window's origin in model pixels; ``core``: ``(x0, y0, x1, y1)`` window-local box that no
        other window covers (a nucleus inside it needs no check)."""
        self._prune(y)
        if not len(keep):
            return keep
        objs = ndi.find_objects(res.inst)
        cx0, cy0, cx1, cy1 = core
        out = []
        for k in keep.tolist():
            sl = objs[k - 1]
            if sl is None:
                continue
            mask = res.inst[sl] == k
            ly0, lx0 = sl[0].start, sl[1].start
            if lx0 >= cx0 and ly0 >= cy0 and sl[1].stop <= cx1 and sl[0].stop <= cy1:
                out.append(k)  # inside the window's own core: no other window sees it
                continue
            gx0, gy0 = x + lx0, y + ly0
            area = int(res.area[k - 1])
            if self._duplicate(gx0, gy0, mask, area):
                self.dropped += 1
                continue
            i = self.next_id
            self.next_id += 1
            self.items[i] = _Kept(gx0, gy0, mask, area)
            for cell in self._cells(gx0, gy0, gx0 + mask.shape[1], gy0 + mask.shape[0]):
                self.grid.setdefault(cell, []).append(i)
            out.append(k)
        return np.asarray(out, np.int64)
