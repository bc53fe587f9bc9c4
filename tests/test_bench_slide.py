"""The benchmark slide (benchmarks/make_slide.py): a real pyramidal TIFF with the pixels it claims.

A small slide (2600 px: 3 levels, a partial last tile column/row) is built from the real Aperio
slide in ../shared/data and checked through OpenSlide, independently of the generator's writer.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import cv2
import imagecodecs
import numpy as np
import openslide
import pytest
import tifffile

REPO = Path(__file__).resolve().parents[1]
SIZE = 2600


def _load_make_slide() -> ModuleType:
    path = REPO / "benchmarks" / "make_slide.py"
    spec = importlib.util.spec_from_file_location("bench_make_slide", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


ms = _load_make_slide()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("bench") / "slide.tiff"
    return ms.build_benchmark_slide(out, size=SIZE, mpp=0.5, seed=0, data_dir=data_dir)


@pytest.fixture(scope="module")
def model(data_dir: Path) -> Any:
    spec = ms.SlideSpec(size=SIZE, mpp=0.5, seed=0)
    return ms.SlideModel(spec, ms.load_sources(data_dir, 0))


@pytest.fixture(scope="module")
def level0(built: Path) -> np.ndarray:
    with openslide.OpenSlide(str(built)) as slide:
        return np.asarray(slide.read_region((0, 0), 0, (SIZE, SIZE)))[..., :3].copy()


def _blur(a: np.ndarray, sigma: float = 1.5) -> np.ndarray:
    return cv2.GaussianBlur(a.astype(np.float32), (0, 0), sigma)


def _area_half(a: np.ndarray) -> np.ndarray:
    return cv2.resize(a, (a.shape[1] // 2, a.shape[0] // 2), interpolation=cv2.INTER_AREA)


def test_openslide_reads_generic_tiff_pyramid(built: Path) -> None:
    assert openslide.OpenSlide.detect_format(str(built)) == "generic-tiff"
    with openslide.OpenSlide(str(built)) as slide:
        props = slide.properties
        assert props["openslide.vendor"] == "generic-tiff"
        assert abs(float(props["openslide.mpp-x"]) - 0.5) < 1e-6
        assert abs(float(props["openslide.mpp-y"]) - 0.5) < 1e-6
        # halve (rounding up) until the longest side is <= 1024
        assert slide.level_dimensions == ((2600, 2600), (1300, 1300), (650, 650))
        assert slide.level_downsamples == (1.0, 2.0, 4.0)
        for level in range(slide.level_count):
            assert props[f"openslide.level[{level}].tile-width"] == "256"
            assert props[f"openslide.level[{level}].tile-height"] == "256"
    with tifffile.TiffFile(str(built)) as tif:
        assert len(tif.pages) == 3
        for page in tif.pages:
            assert isinstance(page, tifffile.TiffPage)
            assert page.compression == 7  # JPEG
            assert page.is_tiled and (page.tilewidth, page.tilelength) == (256, 256)
            assert page.jpegtables  # abbreviated tiles sharing one table set
        assert all(p.subfiletype == 1 for p in tif.pages[1:])  # type: ignore[union-attr]  # reduced-resolution image


def test_level0_pixels_are_the_generated_pixels(
    built: Path, model: Any, level0: np.ndarray
) -> None:
    ref = model.region(0, 0, SIZE, SIZE)
    mask = model.tissue_mask(0, 0, SIZE, SIZE)
    assert ref.shape == level0.shape == (SIZE, SIZE, 3)
    # a 384 px region that is all tissue (away from tile boundaries' alignment)
    found = None
    for y in range(11, SIZE - 384, 97):
        for x in range(37, SIZE - 384, 97):
            if mask[y : y + 384, x : x + 384].all():
                found = (x, y)
                break
        if found:
            break
    assert found is not None, "no all-tissue 384 px region"
    x, y = found
    got = level0[y : y + 384, x : x + 384]
    want = ref[y : y + 384, x : x + 384]
    with openslide.OpenSlide(str(built)) as slide:
        direct = np.asarray(slide.read_region((x, y), 0, (384, 384)))[..., :3]
    assert np.array_equal(direct, got)
    # JPEG q85 4:2:0 of dense H&E: per-pixel error of a few levels, nearly none once smoothed
    assert np.abs(got.astype(int) - want).mean() < 8.0
    assert np.abs(_blur(got) - _blur(want)).mean() < 3.0
    # and exactly what one JPEG round trip of the generated tile gives (colour space, placement)
    enc = ms.TileEncoder(256, 85)
    tx, ty = x // 256 + 1, y // 256 + 1
    tile = ref[ty * 256 : ty * 256 + 256, tx * 256 : tx * 256 + 256]
    rt = imagecodecs.jpeg8_decode(enc.encode(tile), tables=enc.tables)
    on_slide = level0[ty * 256 : ty * 256 + 256, tx * 256 : tx * 256 + 256]
    assert np.abs(rt.astype(int) - on_slide).mean() < 0.5
    # glass: the real slide's glass colour, a little noise
    glass = level0[~mask]
    assert np.all((glass.mean(axis=0) > 235) & (glass.mean(axis=0) < 250))
    assert glass.std(axis=0).max() < 4.0


def test_lower_levels_are_area_downsampled(built: Path, model: Any, level0: np.ndarray) -> None:
    ref = model.region(0, 0, SIZE, SIZE)
    with openslide.OpenSlide(str(built)) as slide:
        l1 = np.asarray(slide.read_region((0, 0), 1, (1300, 1300)))[..., :3]
        l2 = np.asarray(slide.read_region((0, 0), 2, (650, 650)))[..., :3]
    assert np.abs(_area_half(level0).astype(int) - l1).mean() < 5.0
    assert np.abs(_blur(_area_half(ref)) - _blur(l1)).mean() < 3.0
    assert np.abs(_blur(_area_half(_area_half(ref))) - _blur(l2)).mean() < 3.0


def test_tissue_fraction_measured_independently(built: Path, model: Any) -> None:
    with openslide.OpenSlide(str(built)) as slide:
        l1 = np.asarray(slide.read_region((0, 0), 1, (1300, 1300)))[..., :3]
    sat = cv2.cvtColor(cv2.GaussianBlur(l1, (0, 0), 2.0), cv2.COLOR_RGB2HSV)[..., 1]
    fraction = float((sat > 20).mean())
    assert 0.4 <= fraction <= 0.6, fraction
    own = float(model.tissue_mask(0, 0, SIZE, SIZE).mean())
    assert abs(own - 0.5) < 0.02


def test_deterministic_and_cached(built: Path, tmp_path: Path, data_dir: Path) -> None:
    again = ms.build_benchmark_slide(tmp_path / "again.tiff", size=SIZE, seed=0, data_dir=data_dir)
    assert again.read_bytes() == built.read_bytes()
    other = ms.build_benchmark_slide(tmp_path / "other.tiff", size=SIZE, seed=1, data_dir=data_dir)
    assert other.read_bytes() != built.read_bytes()
    # a matching sidecar means the file is reused, not rebuilt
    mtime = again.stat().st_mtime_ns
    ms.build_benchmark_slide(again, size=SIZE, seed=0, data_dir=data_dir)
    assert again.stat().st_mtime_ns == mtime
