"""Opening slides, their physical resolution (mpp) and the pyramid level to read from.

Resolution is looked up in this order, and the source is recorded with the value:
``openslide.mpp-x/y`` -> TIFF ``XResolution`` + ``ResolutionUnit`` -> ``openslide.objective-power``
(mpp = 10 / power) -> ``--assume-mpp``. Values outside a plausible range for a microscope (e.g.
the 352.8 um/px that a 72 dpi TIFF default gives) are treated as missing.

:class:`SlideAtMpp` reads a slide region at a target mpp (level choice, resize, the refusal to
upsample); :func:`resize_rgb` and :func:`mpp_differs` are the resize and the 10 % rule every
reader of images at a model's resolution uses.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import openslide
from numpy.typing import NDArray

from tiling.errors import SlideError
from tiling.readers import LevelReader, make_reader

#: micrometres per pixel outside this range are placeholders (72 dpi, 1 px/cm, ...), not optics.
PLAUSIBLE_MPP = (0.02, 30.0)

#: file extensions treated as slides (everything openslide 4 reads).
SLIDE_EXTENSIONS = frozenset(
    {
        ".svs",
        ".tif",
        ".tiff",
        ".ndpi",
        ".vms",
        ".vmu",
        ".scn",
        ".mrxs",
        ".svslide",
        ".bif",
        ".dcm",
        ".czi",
    }
)


@dataclass(frozen=True)
class Resolution:
    """Physical resolution of level 0: ``mpp`` micrometres per pixel, and where it came from."""

    mpp: float
    source: str


@dataclass(frozen=True)
class LevelChoice:
    """Where tiles are read from.

    ``level`` is the pyramid level read, ``downsample`` its level-0 downsample, ``scale`` the
    resize factor from level pixels to tile pixels (level px per tile px; 1.0 = no resize,
    > 1 = shrink with area interpolation, < 1 = a small upsample), ``tile_mpp`` the physical
    resolution of the stored tiles.
    """

    level: int
    downsample: float
    scale: float
    tile_mpp: float


def _plausible(mpp: float) -> bool:
    return math.isfinite(mpp) and PLAUSIBLE_MPP[0] <= mpp <= PLAUSIBLE_MPP[1]


def resolve_mpp(name: str, props: Mapping[str, str], assume_mpp: float | None = None) -> Resolution:
    """Level-0 micrometres per pixel of a slide from its openslide properties.

    Raises :class:`SlideError` naming the slide and the ``--assume-mpp`` flag when no usable
    value exists and none is assumed.
    """
    notes: list[str] = []
    try:
        mx = float(props["openslide.mpp-x"])
        my = float(props.get("openslide.mpp-y", mx))
        mpp = (mx + my) / 2
        if _plausible(mpp):
            return Resolution(mpp, "openslide.mpp-x")
        notes.append(f"openslide.mpp-x {mx:g} is implausible")
    except (KeyError, ValueError):
        pass
    try:
        xres = float(props["tiff.XResolution"])
        unit = props.get("tiff.ResolutionUnit", "inch").lower()
        per = {"centimeter": 1e4, "inch": 25400.0}.get(unit)
        if per and xres > 0:
            mpp = per / xres
            if _plausible(mpp):
                return Resolution(mpp, "tiff.XResolution")
            notes.append(f"TIFF resolution {mpp:g} um/px is implausible")
    except (KeyError, ValueError):
        pass
    try:
        power = float(props["openslide.objective-power"])
        if power > 0 and _plausible(10.0 / power):
            return Resolution(10.0 / power, f"objective-power ({power:g}x)")
    except (KeyError, ValueError):
        pass
    if assume_mpp is not None:
        if not _plausible(assume_mpp):
            raise SlideError(name, f"--assume-mpp {assume_mpp:g} is outside {PLAUSIBLE_MPP}")
        return Resolution(float(assume_mpp), "assumed (--assume-mpp)")
    why = "; ".join(notes) or "no openslide.mpp-x, TIFF resolution or objective power"
    raise SlideError(
        name,
        f"no usable resolution ({why}); pass --assume-mpp X (micrometres per pixel) to tile it",
    )


def choose_level(
    name: str,
    slide_mpp: float,
    downsamples: tuple[float, ...],
    target_mpp: float,
    *,
    max_upsample: float = 1.10,
    snap: float = 0.01,
) -> LevelChoice:
    """The coarsest level still at or finer than ``target_mpp``.

    A level within ``snap`` (relative) of the target is read as is, without resizing; the tile
    mpp recorded is then the level's own. Upsampling by more than ``max_upsample`` is refused.
    """
    best = None
    for level, ds in enumerate(downsamples):
        level_mpp = slide_mpp * ds
        if level_mpp <= target_mpp * (1 + snap):
            best = level  # downsamples increase with level
    if best is None:
        need = target_mpp / slide_mpp
        if 1 / need > max_upsample:
            raise SlideError(
                name,
                f"target {target_mpp:g} um/px needs upsampling level 0 ({slide_mpp:g} um/px) "
                f"by {1 / need:.2f}x (limit {max_upsample:.2f}x); choose a larger --mpp",
            )
        best = 0
    ds = float(downsamples[best])
    level_mpp = slide_mpp * ds
    scale = target_mpp / level_mpp
    if abs(scale - 1) <= snap:
        return LevelChoice(best, ds, 1.0, level_mpp)
    return LevelChoice(best, ds, scale, target_mpp)


def open_slide(path: str | Path) -> openslide.OpenSlide:
    """Open a slide with openslide; unreadable files raise :class:`SlideError` with the reason."""
    p = Path(path)
    name = p.name
    if not p.exists():
        raise SlideError(name, "file not found")
    try:
        return openslide.OpenSlide(str(p))
    except openslide.OpenSlideUnsupportedFormatError:
        raise SlideError(
            name, "unsupported or corrupt slide file (openslide cannot read it)"
        ) from None
    except openslide.OpenSlideError as exc:
        raise SlideError(name, f"openslide error: {exc}") from None
    except OSError as exc:
        raise SlideError(name, f"cannot read file: {exc.strerror or exc}") from None


def mpp_differs(mpp: float, target_mpp: float, tolerance: float = 0.10) -> bool:
    """True when ``mpp`` differs from ``target_mpp`` by more than ``tolerance`` (relative): the
    rule for when an image is resampled to a model's resolution (10 % by default)."""
    return abs(mpp / target_mpp - 1.0) > tolerance


def resize_rgb(image: NDArray[np.uint8], width: int, height: int) -> NDArray[np.uint8]:
    """``(H, W, C)`` uint8 -> ``(height, width, C)``: area interpolation when shrinking, linear
    when enlarging (the one resize rule for pixels read at another resolution)."""
    h, w = image.shape[:2]
    if (w, h) == (width, height):
        return image
    interp = cv2.INTER_AREA if width * height < w * h else cv2.INTER_LINEAR
    out = cv2.resize(image, (width, height), interpolation=interp)
    return np.asarray(out, np.uint8).reshape(height, width, *image.shape[2:])


class SlideAtMpp:
    """A slide read at ``target_mpp``: resolution (:func:`resolve_mpp`, ``assume_mpp``), pyramid
    level (:func:`choose_level`, refusing upsampling beyond ``max_upsample``) and resize, in one
    object used by tiling and by whole-slide nuclei prediction.

    Coordinates are TARGET pixels (at :attr:`mpp`): pixel ``(x, y)`` starts at level-0 pixel
    ``(x, y) * to_level0``. A region ``(x, y, w, h)`` is the level box starting at
    ``rint((x, y) * scale)`` of side ``round((w, h) * scale)`` (``scale`` = level px per target
    px; exactly ``(w, h)`` when no resize is needed), resized to ``(w, h)`` with
    :func:`resize_rgb`; pixels outside the slide are white. Tiling's grid cuts its tiles with the
    same rule (``tiling.grid.Grid``), so a tile equals ``read`` of its box.
    """

    def __init__(
        self,
        path: str | Path,
        target_mpp: float,
        *,
        assume_mpp: float | None = None,
        max_upsample: float = 1.10,
        fast: bool = True,
    ) -> None:
        self.path = Path(path)
        self.name = self.path.name
        self.slide = open_slide(self.path)
        try:
            self.resolution = resolve_mpp(self.name, dict(self.slide.properties), assume_mpp)
            self.choice = choose_level(
                self.name,
                self.resolution.mpp,
                tuple(float(d) for d in self.slide.level_downsamples),
                target_mpp,
                max_upsample=max_upsample,
            )
        except Exception:
            self.slide.close()
            raise
        self.fast = fast
        self._reader: LevelReader | None = None

    @property
    def mpp(self) -> float:
        """Micrometres per pixel of what :meth:`read` returns (the target, or the level's own
        when it is within 1 % of it)."""
        return self.choice.tile_mpp

    @property
    def scale(self) -> float:
        """Level pixels per target pixel (1.0: read as is, > 1: shrink, < 1: small upsample)."""
        return self.choice.scale

    @property
    def to_level0(self) -> float:
        """Level-0 pixels per target pixel."""
        return self.choice.scale * self.choice.downsample

    @property
    def reader(self) -> LevelReader:
        """The reader of the chosen level (made on first use)."""
        if self._reader is None:
            self._reader = make_reader(self.path, self.slide, self.choice.level, fast=self.fast)
        return self._reader

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the whole slide in target pixels."""
        w, h = self.slide.level_dimensions[self.choice.level]
        return int(w / self.scale), int(h / self.scale)

    def level_box(self, x: int, y: int, w: int, h: int) -> tuple[int, int, int, int]:
        """The level-pixel box ``(x, y, w, h)`` read for a target-pixel region."""
        s = self.scale
        if s == 1.0:
            return x, y, w, h
        lx, ly = int(np.rint(x * s)), int(np.rint(y * s))
        return lx, ly, max(1, int(round(w * s))), max(1, int(round(h * s)))

    def read(self, x: int, y: int, w: int, h: int) -> NDArray[np.uint8]:
        """Target-pixel region -> ``(h, w, 3)`` RGB uint8."""
        lx, ly, lw, lh = self.level_box(x, y, w, h)
        return resize_rgb(self.reader.read(lx, ly, lw, lh), w, h)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        self.slide.close()

    def __enter__(self) -> SlideAtMpp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
