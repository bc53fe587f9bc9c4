"""Physical resolution travels as data: the one slide-at-mpp reader of ``tiling`` (against
openslide's ``read_region`` and an independent ``cv2.resize(INTER_AREA)``), tiling's tiles equal to
its reads, labelled images resampled to another mpp and back, nuclei data and prediction at the
model's mpp, tile evaluation at the encoder's."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import openslide
import pytest
from test_nuclei_data import npz_config  # the shared hgsc npz config

from pathssl.eval.data import LabelledTiles, TileImages, image_folder
from pathssl.eval.metrics import panoptic_quality
from pathssl.nuclei.batch import predict_image_file
from pathssl.nuclei.classical import ClassicalNuclei
from pathssl.nuclei.config import DataConfig
from pathssl.nuclei.data import LabelledImage, load_npz_pair, resample
from pathssl.nuclei.predict import NucleiPredictor, predict_image_at_mpp, predict_slide
from pathssl.nuclei.splits import load_data
from tiling import open_store, tile_slides
from tiling.errors import SlideError
from tiling.slide import SlideAtMpp, mpp_differs

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")
TYPES = ["connective", "inflammatory", "neoplastic"]


def _openslide_rgb(path: Path, level: int, x0: int, y0: int, w: int, h: int) -> np.ndarray:
    """openslide's own pixels: level-0 location, level size, alpha must be opaque inside."""
    rgba = np.asarray(openslide.OpenSlide(str(path)).read_region((x0, y0), level, (w, h)))
    assert rgba[..., 3].min() == 255
    return np.ascontiguousarray(rgba[..., :3])


# --- tiling: one reader of a slide region at a target mpp ---------------------------------------


def test_slide_at_mpp_shrinks_like_openslide_plus_area_resize(cmu_slide: Path) -> None:
    with SlideAtMpp(cmu_slide, 1.0) as src:
        s = 1.0 / 0.499  # level px per target px (one level, 0.499 um/px)
        assert (src.choice.level, src.mpp) == (0, 1.0) and src.scale == pytest.approx(s)
        assert src.to_level0 == pytest.approx(s)
        assert src.size == (int(2220 / s), int(2967 / s))
        x, y, w, h = 400, 650, 96, 80
        got = src.read(x, y, w, h)
    # independent reference: the level box openslide reads, shrunk by area interpolation
    lx, ly, lw, lh = round(x * s), round(y * s), round(w * s), round(h * s)
    ref = cv2.resize(
        _openslide_rgb(cmu_slide, 0, lx, ly, lw, lh), (w, h), interpolation=cv2.INTER_AREA
    )
    assert got.shape == (h, w, 3) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, ref)


def test_slide_at_mpp_reads_a_matching_level_as_is(cmu_slide: Path, slides_dir: Path) -> None:
    # 0.5 is within 1 % of the scan's 0.499: no resize, the level's own mpp
    with SlideAtMpp(cmu_slide, 0.5) as src:
        assert src.scale == 1.0 and src.mpp == pytest.approx(0.499)
        np.testing.assert_array_equal(
            src.read(700, 900, 64, 48), _openslide_rgb(cmu_slide, 0, 700, 900, 64, 48)
        )
    # a pyramid: 0.25 um/px assumed, 1.0 wanted -> level 2 (downsample ~4.02), shrunk by ~0.995
    boxes = slides_dir / "synthetic-boxes.tiff"
    with SlideAtMpp(boxes, 0.5, assume_mpp=0.25) as src:
        assert (src.choice.level, src.scale) == (1, 1.0)
        np.testing.assert_array_equal(
            src.read(10, 20, 50, 40), _openslide_rgb(boxes, 1, 20, 40, 50, 40)
        )


def test_slide_at_mpp_refuses_upsampling_and_needs_an_mpp(
    cmu_slide: Path, slides_dir: Path
) -> None:
    with pytest.raises(SlideError, match=r"CMU-1-Small-Region.svs: .*upsampling.*--mpp"):
        SlideAtMpp(cmu_slide, 0.25)
    with pytest.raises(SlideError, match="--assume-mpp"):
        SlideAtMpp(slides_dir / "synthetic-boxes.tiff", 0.5)


def test_tiling_tiles_equal_the_reader(tmp_path: Path, cmu_slide: Path) -> None:
    """Tiling's banded reader and SlideAtMpp take the same level, scale and pixels."""
    tile_slides([cmu_slide], tmp_path, mpp=1.0, size=64, codec="png", progress=False)
    store = open_store(tmp_path / "CMU-1-Small-Region.zarr")
    assert store.mpp == 1.0 and len(store) > 20
    coords = store.coords
    with SlideAtMpp(cmu_slide, 1.0) as src:
        for i in np.linspace(0, len(store) - 1, 8).astype(int):
            # level-0 corner -> target pixels (tiles start on whole target pixels)
            x, y = (int(round(v / src.to_level0)) for v in coords[i])
            np.testing.assert_array_equal(store[int(i)], src.read(x, y, 64, 64))


def test_mpp_differs_is_the_10_percent_rule() -> None:
    assert not mpp_differs(0.5, 0.46) and not mpp_differs(0.499, 0.5)
    assert mpp_differs(0.25, 0.5) and mpp_differs(0.56, 0.5)


# --- labelled images carry their mpp; resampling -------------------------------------------------


@pytest.fixture(scope="module")
def hgsc(data_dir: Path) -> LabelledImage:
    d = data_dir / "nuclei"
    return load_npz_pair(
        d / "hgsc_nest.jpg", d / "hgsc_nest_inst_mask.npz", d / "hgsc_nest_type_mask.npz", mpp=0.5
    )


def test_resample_round_trip_keeps_pq(hgsc: LabelledImage) -> None:
    crop = hgsc.region(200, 300, 600, 500)
    assert crop.mpp == 0.5
    up = resample(crop, 0.25)
    assert up.image.shape == (1000, 1200, 3) and up.mpp == 0.25
    # the image: linear when enlarging, the independent cv2 call
    ref = cv2.resize(crop.image, (1200, 1000), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(up.image, ref)
    back = resample(up, 0.5)
    assert back.inst.shape == crop.inst.shape
    np.testing.assert_array_equal(
        back.image, cv2.resize(up.image, (600, 500), interpolation=cv2.INTER_AREA)
    )
    pq = panoptic_quality(crop.inst, back.inst).binary.pq
    assert pq > 0.95  # measured: 1.0 (nearest, centres aligned)
    # the other way: shrink to 1 um/px and back (small nuclei shrink to a few pixels)
    down_up = resample(resample(crop, 1.0), 0.5)
    pq_down = panoptic_quality(crop.inst, down_up.inst).binary.pq
    assert pq_down > 0.85  # measured: 0.90
    # a factor that does not divide the size: ``shape`` takes the maps back to the image's size
    odd = resample(resample(crop, 0.7), 0.5, shape=crop.inst.shape)
    assert odd.inst.shape == crop.inst.shape
    assert panoptic_quality(crop.inst, odd.inst).binary.pq > 0.9  # measured: 0.94
    # types follow their nuclei
    kept = back.inst > 0
    assert (back.types[kept] == crop.types[kept]).mean() > 0.99


def test_resampled_maps_keep_nuclei_in_place(hgsc: LabelledImage) -> None:
    """Centroids map as pixel centres do, (x + 0.5) * f - 0.5: maps and image stay aligned."""
    from scipy import ndimage as ndi

    crop = hgsc.region(0, 0, 500, 400)
    up = resample(crop, 0.2)  # f = 2.5
    ids = np.unique(crop.inst)[1:]
    c0 = np.asarray(ndi.center_of_mass(crop.inst > 0, crop.inst, ids))
    c1 = np.asarray(ndi.center_of_mass(up.inst > 0, up.inst, ids))
    err = np.abs(c1 - ((c0 + 0.5) * 2.5 - 0.5))
    assert np.median(err) < 0.3


# --- nuclei training data at the model's mpp -----------------------------------------------------


def test_load_data_resamples_to_the_model_mpp_with_a_note(data_dir: Path) -> None:
    notes: list[str] = []
    cfg = npz_config(
        data_dir, mpp=0.25, train_region=[0, 0, 1000, 1500], val_region=[1000, 0, 500, 1500]
    )
    (train,), (val,) = load_data(cfg, target_mpp=0.5, log=notes.append)
    assert train.image.shape == (750, 500, 3) and val.image.shape == (750, 250, 3)
    assert train.mpp == val.mpp == 0.5
    assert len(notes) == 1 and "0.25 um/px" in notes[0] and "0.5 um/px" in notes[0]
    assert "hgsc_nest.jpg" in notes[0] and "data.mpp" in notes[0]
    # within 10 %: read as is, nothing said
    notes.clear()
    (same,), _ = load_data(npz_config(data_dir, mpp=0.52), target_mpp=0.5, log=notes.append)
    assert same.image.shape == (1500, 1500, 3) and same.mpp == 0.52 and notes == []
    # without a target: the images at their own mpp
    (own,), _ = load_data(npz_config(data_dir, mpp=0.25), log=notes.append)
    assert own.mpp == 0.25 and own.image.shape == (1500, 1500, 3) and notes == []


def test_training_data_without_mpp_is_a_clear_error(data_dir: Path) -> None:
    with pytest.raises(ValueError) as info:
        load_data(npz_config(data_dir, mpp=None), target_mpp=0.5)
    text = str(info.value)
    assert "hgsc_nest" in text and "data.mpp" in text and "\n" not in text


# --- nuclei prediction at the model's mpp --------------------------------------------------------


def test_image_prediction_resamples_and_maps_back(tmp_path: Path, hgsc: LabelledImage) -> None:
    image = np.ascontiguousarray(hgsc.image[:320, :400])
    pred = NucleiPredictor(ClassicalNuclei(), window=128, overlap=32, progress=False)
    notes: list[str] = []
    res, f = predict_image_at_mpp(pred, image, 0.5, 0.25, name="x.png", log=notes.append)
    assert f == 0.5 and res.inst.shape == (160, 200)
    assert "0.25 um/px" in notes[0] and "0.5 um/px" in notes[0] and "resampled" in notes[0]
    # independent reference: the same shrink by hand, then the same predictor
    ref = pred.predict_image(cv2.resize(image, (200, 160), interpolation=cv2.INTER_AREA))
    np.testing.assert_array_equal(res.inst, ref.inst)
    # no mpp: taken at the model's, and said
    notes.clear()
    res, f = predict_image_at_mpp(pred, image, 0.5, None, name="x.png", log=notes.append)
    assert f == 1.0 and res.inst.shape == image.shape[:2] and "taken at the model's" in notes[0]

    # a file: npz maps at the input's size, GeoJSON polygons in the input's pixels
    src = tmp_path / "x.png"
    cv2.imwrite(str(src), image[..., ::-1])
    n = predict_image_file(pred, src, tmp_path, "x", ["nucleus"], 0.5, 0.25)
    maps = np.load(tmp_path / "x.npz")
    assert maps["inst"].shape == image.shape[:2] and n > 20
    doc = json.loads((tmp_path / "x.geojson").read_text())
    centres = np.array(
        [np.mean(ft["geometry"]["coordinates"][0][:-1], 0) for ft in doc["features"]]
    )
    # every polygon centre lies on (or right beside) a nucleus of the mapped-back instance map
    from scipy import ndimage as ndi

    near = ndi.binary_dilation(maps["inst"] > 0, iterations=2)
    cx = np.clip(centres[:, 0].astype(int), 0, image.shape[1] - 1)
    cy = np.clip(centres[:, 1].astype(int), 0, image.shape[0] - 1)
    assert near[cy, cx].mean() > 0.95
    assert centres[:, 0].max() > 250  # in input pixels (model pixels stop at 200)


def test_slide_prediction_says_its_mpp(tmp_path: Path, cmu_slide: Path) -> None:
    pred = NucleiPredictor(ClassicalNuclei(), window=128, overlap=32, progress=False)
    notes: list[str] = []
    r = predict_slide(
        pred,
        cmu_slide,
        tmp_path / "s.geojson",
        ["nucleus"],
        1.0,
        region=(900, 1400, 300, 300),
        log=notes.append,
    )
    assert r.count > 5 and notes and "1 um/px" in notes[0] and "level 0" in notes[0]
    assert "0.499" in notes[0]
    c = np.array(
        [
            np.mean(ft["geometry"]["coordinates"][0][:-1], 0)
            for ft in json.loads(r.geojson.read_text())["features"]
        ]
    )
    # level-0 coordinates though the model read at ~2x shrink
    assert c.min(0).tolist() >= [898, 1398] and c.max(0).tolist() <= [1202, 1702]


# --- tile evaluation at the encoder's mpp --------------------------------------------------------


def test_tile_images_resample_to_the_encoder_mpp(data_dir: Path) -> None:
    root = data_dir / "tiles" / "qc"
    paths = sorted(root.glob("*.png"))[:3]
    tiles = LabelledTiles(paths, np.zeros(3, np.int64), ["a"], mpp=0.25)
    notes: list[str] = []
    ds = TileImages(tiles, 64, target_mpp=0.5, log=notes.append)
    assert len(notes) == 1 and "0.25 um/px" in notes[0] and "0.5 um/px" in notes[0]
    img = ds.image(0)
    h, w = img.shape[:2]
    half = cv2.resize(img, (round(w / 2), round(h / 2)), interpolation=cv2.INTER_AREA)
    y, x = (half.shape[0] - 64) // 2, (half.shape[1] - 64) // 2
    assert min(half.shape[:2]) >= 64
    got = ds[0][0].numpy().transpose(1, 2, 0)
    np.testing.assert_array_equal(got, half[y : y + 64, x : x + 64])
    # within 10 %, or unknown: resized to the input size as before, and said
    notes.clear()
    same = TileImages(LabelledTiles(paths, np.zeros(3, np.int64), ["a"], mpp=0.48), 64, 0.5)
    plain = TileImages(LabelledTiles(paths, np.zeros(3, np.int64), ["a"]), 64)
    np.testing.assert_array_equal(same[0][0].numpy(), plain[0][0].numpy())
    TileImages(LabelledTiles(paths, np.zeros(3, np.int64), ["a"]), 64, 0.5, log=notes.append)
    assert "taken at the encoder's 0.5 um/px" in notes[0]


def test_tile_sources_carry_their_mpp(tmp_path: Path, data_dir: Path) -> None:
    src = data_dir / "tiles" / "qc"
    folder = tmp_path / "f"
    (folder / "a").mkdir(parents=True)
    for p in sorted(src.glob("*.png"))[:2]:
        (folder / "a" / p.name).write_bytes(p.read_bytes())
    tiles = image_folder(folder, mpp=0.3)
    assert tiles.mpp == 0.3 and tiles.subset([1]).mpp == 0.3
    assert image_folder(folder).mpp is None


def test_pannuke_fold_resampled_lazily(tmp_path: Path, hgsc: LabelledImage) -> None:
    """A PanNuke-layout fold (real hgsc pixels and labels) at 0.25 um/px read at 0.5."""
    crops = [hgsc.region(x, 0, 256, 256) for x in (0, 512)]
    masks = np.zeros((2, 256, 256, 6), np.float64)
    for k, im in enumerate(crops):
        for c in range(3):
            masks[k, ..., c] = np.where(im.types == c + 1, im.inst, 0)
        masks[k, ..., 5] = im.inst == 0
    np.save(tmp_path / "images.npy", np.stack([im.image for im in crops]).astype(np.float64))
    np.save(tmp_path / "masks.npy", masks)
    names = [*TYPES, "t4", "t5"]
    cfg = DataConfig(format="pannuke", folder=str(tmp_path), type_names=names, mpp=0.25)
    cfg.val_fraction = 0.0
    notes: list[str] = []
    (fold, _val) = load_data(cfg, target_mpp=0.5, log=notes.append)
    assert fold.image_shape == (128, 128) and len(notes) == 1  # type: ignore[attr-defined]
    first = fold[0]
    assert first.image.shape == (128, 128, 3) and first.mpp == 0.5
    ref = cv2.resize(crops[0].image, (128, 128), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(first.image, ref)
    back = resample(first, 0.25)
    # PanNuke renumbers the nuclei; PQ matches them by overlap (down and up: small ones shrink)
    assert panoptic_quality(crops[0].inst, back.inst).binary.pq > 0.8  # measured: 0.85


def test_tile_dataset_reads_at_the_encoder_mpp(data_dir: Path) -> None:
    from pathssl.eval.encoder import load_encoder, tile_dataset

    paths = sorted((data_dir / "tiles" / "qc").glob("*.png"))[:2]
    tiles = LabelledTiles(paths, np.zeros(2, np.int64), ["a"], mpp=1.0)
    enc = load_encoder("resnet18")
    notes: list[str] = []
    as_is = tile_dataset(enc, tiles, 32, log=notes.append)  # no tile_mpp: taken as they are
    assert as_is.factor == 1.0 and "records no tile_mpp" in notes[0] and "1 um/px" in notes[0]
    enc.tile_mpp = 0.5
    notes.clear()
    ds = tile_dataset(enc, tiles, 32, log=notes.append)
    assert ds.factor == 2.0 and "1 um/px" in notes[0] and "encoder's 0.5 um/px" in notes[0]
    assert ds[0][0].shape == (3, 32, 32)
