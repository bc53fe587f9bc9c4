"""The tile store contract on the real Aperio slide, checked against openslide's read_region."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import imagecodecs
import numpy as np
import openslide
import pytest
import zarr

from tiling import open_store, tile_slides
from tiling.store import find_stores


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory, slides_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("tiles")
    tile_slides([slides_dir], out, mpp=0.5, size=224, progress=False)
    return out


def _manifest(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "manifest.csv") as fh:
        return {row["slide_id"]: row for row in csv.DictReader(fh)}


def _reference(slide: openslide.OpenSlide, x: int, y: int, size: int) -> np.ndarray:
    rgba = np.asarray(slide.read_region((x, y), 0, (size, size)))
    assert rgba[..., 3].min() == 255  # kept tiles lie inside the slide
    return np.ascontiguousarray(rgba[..., :3])


def test_manifest_statuses(batch: Path) -> None:
    rows = _manifest(batch)
    header = (batch / "manifest.csv").read_text().splitlines()[0].split(",")
    assert header[:7] == ["slide", "status", "n_tiles", "mpp", "mpp_source", "seconds", "error"]
    assert set(rows) == {
        "CMU-1-Small-Region",
        "broken",
        "synthetic-boxes",
        "synthetic-boxes-dicom",  # two .dcm instances of one series = one slide
        "synthetic-small",
    }
    cmu = rows["CMU-1-Small-Region"]
    assert cmu["status"] == "ok" and int(cmu["n_tiles"]) > 10
    assert float(cmu["mpp"]) == pytest.approx(0.499) and cmu["mpp_source"] == "openslide.mpp-x"
    assert rows["broken"]["status"] == "failed"
    assert "openslide cannot read" in rows["broken"]["error"]
    boxes = rows["synthetic-boxes"]
    assert boxes["status"] == "failed" and "--assume-mpp" in boxes["error"]
    for tiny in ("synthetic-small", "synthetic-boxes-dicom"):
        assert rows[tiny]["status"] == "no_tissue"
        assert "smaller than one 224 px tile" in rows[tiny]["error"]


def test_store_layout_is_plain_zarr(batch: Path) -> None:
    g = zarr.open_group(str(batch / "CMU-1-Small-Region.zarr"), mode="r")
    tiles = g["tiles"]
    assert isinstance(tiles, zarr.Array)
    n = tiles.shape[0]
    assert tiles.shape[1:] == (224, 224, 3) and tiles.dtype == np.uint8
    assert tiles.chunks == (1, 224, 224, 3)
    assert g["coords"].shape == (n, 2) and g["coords"].dtype == np.int64
    for name in ("tissue", "pen", "blur", "white", "mask_tissue"):
        assert g["qc"][name].shape == (n,) and g["qc"][name].dtype == np.float32
    assert g["thumbnail"].dtype == np.uint8 and g["thumbnail"].shape[2] == 3
    assert g["tissue_mask"].dtype == np.bool_
    assert g["tissue_mask"].shape == g["thumbnail"].shape[:2]
    attrs = g.attrs.asdict()
    assert attrs["complete"] is True
    assert attrs["mpp"] == {
        "slide": pytest.approx(0.499),
        "source": "openslide.mpp-x",
        "target": 0.5,
        "tile": pytest.approx(0.499),
    }
    assert attrs["slide"]["level0_dims"] == [2220, 2967]
    assert attrs["slide"]["vendor"] == "aperio"
    assert attrs["tile"]["read_level"] == 0 and attrs["tile"]["size"] == 224
    assert "threshold" in attrs["tissue"] and attrs["pathssl_version"]
    # plain zarr decodes a tile the same as the O(1) store reader
    store = open_store(batch / "CMU-1-Small-Region.zarr")
    np.testing.assert_array_equal(tiles[n - 1], store[n - 1])
    assert find_stores([batch]) == sorted(batch.glob("*.zarr"))


def test_tile_pixels_match_read_region(batch: Path, cmu_slide: Path) -> None:
    store = open_store(batch / "CMU-1-Small-Region.zarr")
    slide = openslide.OpenSlide(str(cmu_slide))
    for i in np.linspace(0, len(store) - 1, 6).astype(int):
        x, y = store.coords[i]
        ref = _reference(slide, int(x), int(y), 224)
        got = store[int(i)]
        # independent JPEG round trip of openslide's pixels at the same settings
        expect = imagecodecs.jpeg8_decode(imagecodecs.jpeg8_encode(ref, level=90))
        assert np.abs(got.astype(int) - expect).max() <= 1
        assert np.abs(got.astype(float) - ref).mean() < 8  # q90 4:2:0 on H&E


def test_coords_on_grid_and_counts_match_mask(batch: Path) -> None:
    store = open_store(batch / "CMU-1-Small-Region.zarr")
    a = store.attrs
    step = a["tile"]["stride"] * a["tile"]["downsample"] * a["tile"]["scale"]
    cols = store.coords[:, 0] / step
    rows = store.coords[:, 1] / step
    np.testing.assert_allclose(cols, np.round(cols), atol=1e-6)
    np.testing.assert_allclose(rows, np.round(rows), atol=1e-6)
    w, h = a["slide"]["level0_dims"]
    assert (store.coords >= 0).all()
    assert (store.coords[:, 0] + a["tile"]["level0_size"] <= w + 0.5).all()
    assert (store.coords[:, 1] + a["tile"]["level0_size"] <= h + 0.5).all()
    assert len(np.unique(store.coords, axis=0)) == len(store)
    # naive recount: every whole tile of the grid, mask pixels under its footprint
    mask = store.tissue_mask
    ds = a["tissue"]["mask_downsample"]
    size0 = a["tile"]["level0_size"]
    kept = set()
    for r in range(int((h - size0) // step) + 1):
        for c in range(int((w - size0) // step) + 1):
            x0, y0 = c * step / ds, r * step / ds
            xs = slice(int(round(x0)), max(int(round(x0)) + 1, int(round(x0 + size0 / ds))))
            ys = slice(int(round(y0)), max(int(round(y0)) + 1, int(round(y0 + size0 / ds))))
            if mask[ys, xs].mean() >= 0.5:
                kept.add((round(c * step), round(r * step)))
    assert kept == {(int(x), int(y)) for x, y in store.coords}
    np.testing.assert_array_less(0.5 - 1e-6, store.qc["mask_tissue"])


@pytest.mark.parametrize("codec", ["png", "zstd"])
def test_lossless_codecs_are_exact(tmp_path: Path, cmu_slide: Path, codec: str) -> None:
    (res,) = tile_slides([cmu_slide], tmp_path, codec=codec, progress=False, report=False)
    assert res.status == "ok"
    store = open_store(tmp_path / "CMU-1-Small-Region.zarr")
    slide = openslide.OpenSlide(str(cmu_slide))
    plain = zarr.open_array(str(tmp_path / "CMU-1-Small-Region.zarr" / "tiles"), mode="r")
    for i in (0, len(store) // 2, len(store) - 1):
        x, y = store.coords[i]
        np.testing.assert_array_equal(store[i], _reference(slide, int(x), int(y), 224))
        np.testing.assert_array_equal(plain[i], store[i])


def test_resampled_level_matches_area_resize(tmp_path: Path, cmu_slide: Path) -> None:
    """At 1.0 um/px the tiles are read_region of ~2x the footprint, area-shrunk."""
    (res,) = tile_slides([cmu_slide], tmp_path, mpp=1.0, codec="png", progress=False)
    store = open_store(tmp_path / "CMU-1-Small-Region.zarr")
    assert res.status == "ok" and store.mpp == 1.0
    scale = store.attrs["tile"]["scale"]
    assert scale == pytest.approx(1.0 / 0.499)
    slide = openslide.OpenSlide(str(cmu_slide))
    for i in (0, len(store) - 1):
        x, y = (int(v) for v in store.coords[i])
        side = int(round(224 * scale))
        ref = cv2.resize(_reference(slide, x, y, side), (224, 224), interpolation=cv2.INTER_AREA)
        np.testing.assert_array_equal(store[i], ref)  # png: lossless


def test_overlap_and_magnification(tmp_path: Path, cmu_slide: Path) -> None:
    (a,) = tile_slides([cmu_slide], tmp_path / "a", magnification=20, progress=False)
    (b,) = tile_slides([cmu_slide], tmp_path / "b", mpp=0.5, progress=False)
    assert a.n_tiles == b.n_tiles
    (c,) = tile_slides([cmu_slide], tmp_path / "c", overlap=32, progress=False, report=False)
    store = open_store(tmp_path / "c" / "CMU-1-Small-Region.zarr")
    xs = np.unique(store.coords[:, 0])
    assert set(np.diff(xs)) >= {192} and all(d % 192 == 0 for d in np.diff(xs))
    assert c.n_tiles > a.n_tiles
