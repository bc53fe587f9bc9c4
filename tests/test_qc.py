"""Tissue detection and tile QC (tiling.qc) on real tiles and a real slide.

References are written here independently of OpenCV: HSV from ``skimage.color.rgb2hsv``, Otsu
from ``skimage.filters``, the Laplacian from ``scipy.ndimage``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy import ndimage
from skimage.color import rgb2hsv
from skimage.filters import threshold_otsu

from tiling import qc

TISSUE = ("none", "partial", "full")


def _read_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert bgr is not None, path
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _log(request: pytest.FixtureRequest, lines: list[str]) -> None:
    """Write to the terminal even when the test passes (capture is suspended meanwhile)."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capman = request.config.pluginmanager.get_plugin("capturemanager")
    assert reporter is not None and capman is not None
    with capman.global_and_fixture_disabled():
        for line in ["", *lines]:
            reporter.write_line(line)


def _confusion(title: str, classes: tuple[str, ...], pairs: list[tuple[str, str]]) -> list[str]:
    width = max(len(c) for c in classes) + 2
    lines = [title, "truth \\ predicted".ljust(18) + "".join(c.rjust(width) for c in classes)]
    for t in classes:
        counts = [sum(1 for a, b in pairs if a == t and b == p) for p in classes]
        lines.append(t.ljust(18) + "".join(str(n).rjust(width) for n in counts))
    return lines


def _reference_hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-pixel H in OpenCV units [0, 180), S and V in [0, 255], from skimage."""
    hsv = rgb2hsv(rgb)
    h = np.round(hsv[..., 0] * 180).astype(int) % 180
    s = np.round(hsv[..., 1] * 255).astype(int)
    return h, s, rgb.max(axis=-1).astype(int)


def _reference_pen(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    pen = v < qc.BLACK_MAX_VALUE
    for ranges, min_s in qc.PEN_INKS.values():
        for lo, hi in ranges:
            pen |= (h >= lo) & (h < hi) & (s >= min_s)
    return pen


def _reference_scores(tile: np.ndarray, threshold: float) -> dict[str, float]:
    """Naive per-tile QC, straight from the documented definitions."""
    h, s, v = _reference_hsv(tile)
    pen = _reference_pen(h, s, v)
    white = (v >= qc.WHITE_MIN_VALUE) & (s <= qc.WHITE_MAX_SATURATION)
    tissue = (s >= threshold) & ~pen & ~white
    rgb = tile.astype(np.float64)
    grey = np.round(rgb @ np.array([0.299, 0.587, 0.114]))
    blur = ndimage.laplace(grey)[1:-1, 1:-1].var()
    return {"tissue": tissue.mean(), "pen": pen.mean(), "white": white.mean(), "blur": blur}


@pytest.fixture(scope="module")
def qc_dir(data_dir: Path) -> Path:
    return data_dir / "tiles" / "qc"


@pytest.fixture(scope="module")
def labels(qc_dir: Path) -> list[dict[str, str]]:
    with open(qc_dir / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 34 and {r["tissue"] for r in rows} == set(TISSUE)
    return rows


@pytest.fixture(scope="module")
def real_tiles(qc_dir: Path) -> np.ndarray:
    """(20, 224, 224, 3) real tiles: tissue, fat, pen, glass, a line artefact."""
    out = []
    for name, corners in [
        ("high-nuclei-score-red-pen-level1.png", [(0, 150), (180, 230), (288, 288)]),
        ("very-low-nuclei-score-red-pen-level1.png", [(288, 288), (0, 0)]),
        ("medium-nuclei-score-green-pen-level1.png", [(0, 0), (288, 288)]),
        ("no-tissue-green-pen.png", [(144, 144)]),
        ("no-tissue-red-pen.png", [(100, 0), (288, 100)]),
        ("low-nuclei-score-level0.png", [(0, 0)]),
        ("medium-nuclei-score-level0.png", [(0, 0), (553, 777)]),
        ("tissue-level2-4640-4649-8736-8746.png", [(0, 288)]),
        ("high-nuclei-score-level2.png", [(0, 288), (288, 0)]),
        ("no-tissue-line.png", [(0, 288)]),
        ("almost-white-2.png", [(0, 288)]),
        ("no-tissue.png", [(100, 100)]),
        ("very-low-nuclei-score-level0.png", [(300, 300)]),
    ]:
        rgb = _read_rgb(qc_dir / name)
        out += [rgb[y : y + 224, x : x + 224] for y, x in corners]
    tiles = np.ascontiguousarray(np.stack(out))
    assert tiles.shape == (20, 224, 224, 3)
    return tiles


# --- 1. classify_tile against the hand labels ------------------------------------------------


def test_classify_tile_matches_hand_labels(
    qc_dir: Path, labels: list[dict[str, str]], request: pytest.FixtureRequest
) -> None:
    tissue_pairs, pen_pairs = [], []
    for row in labels:
        tissue, has_pen = qc.classify_tile(_read_rgb(qc_dir / row["file"]))
        assert tissue in TISSUE and isinstance(has_pen, bool)
        tissue_pairs.append((row["tissue"], tissue))
        pen_pairs.append(("yes" if row["pen"] != "none" else "no", "yes" if has_pen else "no"))
    scored = [(t, p) for t, p in tissue_pairs if t in ("none", "full")]
    tissue_acc = sum(t == p for t, p in scored) / len(scored)
    pen_acc = sum(t == p for t, p in pen_pairs) / len(pen_pairs)
    _log(
        request,
        _confusion("classify_tile tissue (all 34 rows)", TISSUE, tissue_pairs)
        + [f"tissue none-vs-full accuracy: {tissue_acc:.3f} on {len(scored)} rows"]
        + _confusion("classify_tile pen", ("no", "yes"), pen_pairs)
        + [f"pen yes/no accuracy: {pen_acc:.3f} on {len(pen_pairs)} rows"],
    )
    assert len(scored) == 29
    assert tissue_acc >= 0.9
    assert pen_acc >= 0.9


# --- 2. tissue_mask on a real slide thumbnail ------------------------------------------------


@pytest.fixture(scope="module")
def thumbnail(cmu_slide: Path) -> tuple[np.ndarray, float]:
    import openslide

    slide = openslide.OpenSlide(str(cmu_slide))
    try:
        mpp = float(slide.properties[openslide.PROPERTY_NAME_MPP_X])
        w, h = slide.dimensions
        rgb = np.asarray(
            slide.get_thumbnail((round(w * mpp / 8), round(h * mpp / 8))).convert("RGB")
        )
    finally:
        slide.close()
    assert mpp == pytest.approx(0.499)
    return np.ascontiguousarray(rgb), w * mpp / rgb.shape[1]


def test_tissue_mask_threshold_is_otsu(
    thumbnail: tuple[np.ndarray, float], request: pytest.FixtureRequest
) -> None:
    rgb, mpp = thumbnail
    assert 7.5 < mpp < 8.5
    mask, info = qc.tissue_mask(rgb, mpp)
    assert mask.shape == rgb.shape[:2] and mask.dtype == bool
    json.dumps(info)  # JSON-able
    assert info["method"] == "otsu-saturation" and info["mpp"] == pytest.approx(mpp)
    h, s, v = _reference_hsv(rgb)
    expected = threshold_otsu(s[~_reference_pen(h, s, v)].astype(np.uint8))
    assert abs(info["otsu"] - expected) <= 1
    assert info["threshold"] == max(info["otsu"] + 1, info["min_saturation"])
    assert info["threshold"] > 20  # a real H&E slide: Otsu, not the floor, decides
    fraction = float(mask.mean())
    inside, outside = s[mask].mean(), s[~mask].mean()
    _log(
        request,
        [
            f"CMU-1-Small-Region thumbnail {rgb.shape[1]}x{rgb.shape[0]} at {mpp:.2f} um/px: "
            f"otsu {info['otsu']} (skimage {expected}), threshold {info['threshold']}, "
            f"tissue fraction {fraction:.3f}, mean S inside {inside:.0f} / outside {outside:.0f}"
        ],
    )
    assert 0.2 < fraction < 0.6  # one piece of skin on about a third of the region
    assert inside > 60 > 10 > outside
    # the floor wins when it is above Otsu
    _, floored = qc.tissue_mask(rgb, mpp, min_saturation=expected + 30)
    assert floored["threshold"] == expected + 30


def test_tissue_mask_sizes_are_physical(thumbnail: tuple[np.ndarray, float]) -> None:
    """The same slide at twice the pixel density gives the same mask, upsampled."""
    rgb, mpp = thumbnail
    mask, info = qc.tissue_mask(rgb, mpp)
    big = cv2.resize(rgb, None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
    mask2, info2 = qc.tissue_mask(big, mpp / 2)
    assert info2["close_px"] > info["close_px"] and info2["threshold"] == info["threshold"]
    up = cv2.resize(mask.astype(np.uint8), None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST) > 0
    assert (up & mask2).sum() / (up | mask2).sum() > 0.95
    # a minimum area above the whole tissue area (in um^2) removes it all
    empty, _ = qc.tissue_mask(rgb, mpp, min_area_um2=1.01 * mask.sum() * mpp * mpp)
    assert not empty.any()
    with pytest.raises(ValueError, match="mpp"):
        qc.tissue_mask(rgb, 0.0)


@pytest.mark.parametrize("name", ["white", "black", "almost-white-1.png", "no-tissue.png"])
def test_tissue_mask_blank_is_empty(name: str, qc_dir: Path) -> None:
    if name == "white":
        rgb = np.full((120, 90, 3), 255, np.uint8)
    elif name == "black":
        rgb = np.zeros((120, 90, 3), np.uint8)
    else:
        rgb = _read_rgb(qc_dir / name)  # real empty glass
    mask, info = qc.tissue_mask(rgb, 8.0)
    assert mask.shape == rgb.shape[:2] and not mask.any(), info
    assert info["threshold"] >= info["min_saturation"]


# --- 3. tile_qc against a naive per-tile reference -------------------------------------------


@pytest.mark.parametrize("threshold", [20, 30.5, 49])
def test_tile_qc_matches_naive_reference(real_tiles: np.ndarray, threshold: float) -> None:
    scores = qc.tile_qc(real_tiles, saturation_threshold=threshold)
    assert set(scores) == {"tissue", "pen", "blur", "white"}
    for values in scores.values():
        assert values.shape == (len(real_tiles),) and values.dtype == np.float32
    for i, tile in enumerate(real_tiles):
        ref = _reference_scores(tile, threshold)
        # fractions: skimage and OpenCV may round S or H differently by 1 at a boundary
        for key in ("tissue", "pen", "white"):
            assert scores[key][i] == pytest.approx(ref[key], abs=0.001), (i, key)
        # blur: OpenCV's fixed-point grey can differ from round() by 1 on a few pixels
        assert scores["blur"][i] == pytest.approx(ref["blur"], rel=0.005), i
    # the set spans the range: glass, pen-covered and tissue tiles all present
    assert scores["white"].max() > 0.9 and scores["pen"].max() > 0.5
    assert scores["tissue"].max() > 0.8 and scores["blur"].min() < 20 < 1000 < scores["blur"].max()


def test_tile_qc_batch_equals_one_at_a_time(real_tiles: np.ndarray) -> None:
    """Stacking tiles changes nothing: no filter, count or Laplacian crosses a tile border."""
    # alternate glass and dark tissue so any leak across the stacked borders would show
    order = np.argsort(real_tiles.reshape(len(real_tiles), -1).mean(axis=1))
    order = np.stack([order[: len(order) // 2], order[len(order) // 2 :][::-1]], 1).ravel()
    batch = np.concatenate([real_tiles[order]] * 3)  # 60 tiles: several internal chunks
    together = qc.tile_qc(batch, saturation_threshold=25)
    for i, tile in enumerate(batch):
        alone = qc.tile_qc(tile[None], saturation_threshold=25)
        for key, values in together.items():
            assert values[i] == alone[key][0], (i, key)
    assert qc.tile_qc(batch[:0], saturation_threshold=25)["blur"].shape == (0,)


# --- 4. pen_mask -----------------------------------------------------------------------------


def test_pen_mask_finds_ink_not_stain(
    qc_dir: Path, labels: list[dict[str, str]], request: pytest.FixtureRequest
) -> None:
    from skimage import data as skdata

    lines = []
    pen_files = [r["file"] for r in labels if r["pen"] != "none"]
    assert len(pen_files) == 5
    for name in pen_files:
        rgb = _read_rgb(qc_dir / name)
        mask = qc.pen_mask(rgb)
        assert mask.shape == rgb.shape[:2] and mask.dtype == bool
        lines.append(f"pen fraction {mask.mean():.4f}  {name}")
        assert mask.mean() > 0.05, name
        ink = rgb[mask].mean(axis=0)  # the ink found has the labelled colour
        assert (ink[0] > ink[1]) if "red" in name else (ink[1] > ink[0]), (name, ink)
    clean = sorted(qc_dir.glob("tissue-level0-*.png")) + [qc_dir / "high-nuclei-score-level0.png"]
    for path in clean:  # eosin pink, hematoxylin purple, red blood cells
        fraction = qc.pen_mask(_read_rgb(path)).mean()
        lines.append(f"pen fraction {fraction:.4f}  {path.name} (clean H&E)")
        assert fraction < 0.02, path.name
    dab = qc.pen_mask(skdata.immunohistochemistry()).mean()  # real IHC: brown DAB, blue hema
    lines.append(f"pen fraction {dab:.4f}  skimage immunohistochemistry (DAB)")
    assert dab < 0.005
    _log(request, lines)


def test_inputs_are_checked() -> None:
    with pytest.raises(ValueError, match="uint8"):
        qc.pen_mask(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="empty"):
        qc.tissue_mask(np.zeros((0, 10, 3), np.uint8), 8.0)
    with pytest.raises(ValueError, match="4-D"):
        qc.tile_qc(np.zeros((8, 8, 3), np.uint8), saturation_threshold=20)
    assert qc.classify_tile(np.full((64, 64, 3), 245, np.uint8)) == ("none", False)


def test_band_qc_equals_tile_qc_on_subsampled_tiles(cmu_slide) -> None:  # type: ignore[no-untyped-def]
    """The tiler's fast band QC = the reference tile_qc on every k-th pixel and row."""
    import openslide

    from tiling.qc import band_qc, tile_qc

    slide = openslide.OpenSlide(str(cmu_slide))
    band = np.ascontiguousarray(np.asarray(slide.read_region((0, 900), 0, (224 * 9, 224)))[..., :3])
    tiles = np.ascontiguousarray(band.reshape(224, 9, 224, 3).transpose(1, 0, 2, 3))
    got = band_qc(band, 9, saturation_threshold=40, colour_step=4, blur_step=2)
    colour = tile_qc(np.ascontiguousarray(tiles[:, ::4, ::4]), saturation_threshold=40)
    blur = tile_qc(np.ascontiguousarray(tiles[:, ::2, ::2]), saturation_threshold=40)
    for name in ("tissue", "pen", "white"):
        np.testing.assert_allclose(got[name], colour[name], atol=1e-6)
    np.testing.assert_allclose(got["blur"], blur["blur"], rtol=1e-5)
    # and the subsampled fractions stay close to the full-resolution ones
    full = tile_qc(tiles, saturation_threshold=40)
    for name in ("tissue", "pen", "white"):
        assert np.abs(got[name] - full[name]).max() < 0.02
    # a band that is a view with a row stride (tiles inside a wider image) works the same
    wide = np.concatenate([band, band[:, :224]], axis=1)[:, : 224 * 9]
    np.testing.assert_array_equal(
        band_qc(wide, 9, saturation_threshold=40)["tissue"], got["tissue"]
    )
