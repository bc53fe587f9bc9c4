"""Resolution lookup, level choice and the fast JPEG reader, on the real slides."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openslide
import pytest

from tiling.errors import SlideError
from tiling.grid import make_grid, stream_thumbnail
from tiling.readers import OpenSlideReader, TiffJpegReader, make_reader
from tiling.slide import choose_level, open_slide, resolve_mpp


def _props(path: Path) -> dict[str, str]:
    return dict(openslide.OpenSlide(str(path)).properties)


def test_mpp_from_openslide_property(cmu_slide: Path) -> None:
    res = resolve_mpp("CMU", _props(cmu_slide))
    assert res.mpp == pytest.approx(0.499) and res.source == "openslide.mpp-x"


def test_mpp_fallbacks_in_order(cmu_slide: Path) -> None:
    props = _props(cmu_slide)
    del props["openslide.mpp-x"], props["openslide.mpp-y"]
    # the real slide's objective power (20x) is the next source
    res = resolve_mpp("CMU", props)
    assert res.mpp == pytest.approx(0.5) and res.source.startswith("objective-power")
    # a TIFF resolution of 20,000 px/cm = 0.5 um/px wins over objective power
    tiff = {**props, "tiff.XResolution": "20000", "tiff.ResolutionUnit": "centimeter"}
    assert resolve_mpp("CMU", tiff).mpp == pytest.approx(0.5)
    assert resolve_mpp("CMU", tiff).source == "tiff.XResolution"
    del props["openslide.objective-power"]
    with pytest.raises(SlideError, match=r"CMU: no usable resolution.*--assume-mpp"):
        resolve_mpp("CMU", props)
    assumed = resolve_mpp("CMU", props, assume_mpp=0.25)
    assert assumed.mpp == 0.25 and "assume" in assumed.source


def test_placeholder_72dpi_resolution_is_rejected(slides_dir: Path) -> None:
    """synthetic-boxes.tiff records 28.35 px/cm (72 dpi): 352.8 um/px is no microscope."""
    props = _props(slides_dir / "synthetic-boxes.tiff")
    with pytest.raises(SlideError) as info:
        resolve_mpp("synthetic-boxes.tiff", props)
    text = str(info.value)
    assert text.startswith("synthetic-boxes.tiff:") and "--assume-mpp" in text
    assert "\n" not in text and "implausible" in text


def test_choose_level() -> None:
    ds = (1.0, 4.0, 16.0)
    # 0.25 um/px scan, 0.5 target: level 0 shrunk by 2
    c = choose_level("s", 0.25, ds, 0.5)
    assert (c.level, c.scale, c.tile_mpp) == (0, 2.0, 0.5)
    # target 1.0: level 1 (1.0 um/px) read as is
    c = choose_level("s", 0.25, ds, 1.0)
    assert (c.level, c.scale) == (1, 1.0)
    # within 1% of a level: no resize, the level's own mpp is recorded
    c = choose_level("s", 0.499, (1.0,), 0.5)
    assert c.scale == 1.0 and c.tile_mpp == pytest.approx(0.499)
    # small upsample allowed, larger refused with a clear error
    assert choose_level("s", 0.5, (1.0,), 0.46).scale == pytest.approx(0.92)
    with pytest.raises(SlideError, match="upsampling"):
        choose_level("s", 0.5, (1.0,), 0.25)


def test_broken_slide_error(slides_dir: Path) -> None:
    with pytest.raises(SlideError, match="broken.svs: unsupported or corrupt"):
        open_slide(slides_dir / "broken.svs")
    with pytest.raises(SlideError, match="file not found"):
        open_slide(slides_dir / "missing.svs")


def test_fast_reader_equals_openslide(cmu_slide: Path) -> None:
    slide = openslide.OpenSlide(str(cmu_slide))
    fast = make_reader(cmu_slide, slide, 0)
    assert isinstance(fast, TiffJpegReader)
    ref = OpenSlideReader(slide, 0)
    rng = np.random.default_rng(0)
    regions = [(-20, -10, 100, 60), (2200, 2950, 64, 64), (0, 0, 2220, 300)]
    regions += [
        (int(rng.integers(0, 2000)), int(rng.integers(0, 2700)), 300, 250) for _ in range(8)
    ]
    for x, y, w, h in regions:
        np.testing.assert_array_equal(fast.read(x, y, w, h), ref.read(x, y, w, h))
    fast.close()


def test_fast_reader_decodes_each_tile_once(cmu_slide: Path) -> None:
    slide = openslide.OpenSlide(str(cmu_slide))
    reader = make_reader(cmu_slide, slide, 0)
    assert isinstance(reader, TiffJpegReader)
    # walk the level in 224 px rows of bands, as the tiler does
    for y in range(0, 2967 - 224, 224):
        for x in range(0, 2220 - 224 * 4, 224 * 4):
            reader.read(x, y, 224 * 4, 224)
    touched = {
        (ty, tx)
        for y in range(0, 2967 - 224, 224)
        for x in range(0, 2220 - 224 * 4, 224 * 4)
        for ty in range(y // 240, (y + 223) // 240 + 1)
        for tx in range(x // 240, (x + 224 * 4 - 1) // 240 + 1)
    }
    assert reader.decoded == len(touched)


def test_streamed_thumbnail_matches_whole_resize(cmu_slide: Path) -> None:
    import cv2

    slide = openslide.OpenSlide(str(cmu_slide))
    reader = make_reader(cmu_slide, slide, 0)
    thumb = stream_thumbnail(reader, 16, block=512)  # many blocks
    whole = OpenSlideReader(slide, 0).read(0, 0, 2224, 2976)  # padded white to x16
    ref = cv2.resize(whole, (2224 // 16, 2976 // 16), interpolation=cv2.INTER_AREA)
    assert thumb.shape == (186, 139, 3)
    np.testing.assert_array_equal(thumb, ref)


def test_grid_counts() -> None:
    g = make_grid((2220, 2967), 1.0, 1.0, 224, 0)
    assert (g.rows, g.cols) == (13, 9)
    g = make_grid((2220, 2967), 1.0, 1.0, 224, 24)
    assert g.cols == (2220 - 224) // 200 + 1
    assert make_grid((16, 16), 1.0, 1.0, 224, 0).cols == 0
