"""Training/validation data of the nuclei head: no pixel in both, the layouts of each format."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy.io import savemat

from pathssl.nuclei.config import DataConfig
from pathssl.nuclei.data import LabelledImage, load_npz_pair
from pathssl.nuclei.splits import load_data, split_images

TYPES = ["connective", "inflammatory", "neoplastic"]


@pytest.fixture(scope="module")
def hgsc(data_dir: Path) -> LabelledImage:
    d = data_dir / "nuclei"
    return load_npz_pair(
        d / "hgsc_nest.jpg", d / "hgsc_nest_inst_mask.npz", d / "hgsc_nest_type_mask.npz"
    )


def npz_config(data_dir: Path, **kw: object) -> DataConfig:
    d = data_dir / "nuclei"
    return DataConfig(
        format="npz",
        image=str(d / "hgsc_nest.jpg"),
        inst=str(d / "hgsc_nest_inst_mask.npz"),
        types=str(d / "hgsc_nest_type_mask.npz"),
        type_names=TYPES,
        **kw,  # type: ignore[arg-type]
    )


def test_regions_never_share_pixels(data_dir: Path, hgsc: LabelledImage) -> None:
    (train,), (val,) = load_data(
        npz_config(data_dir, train_region=[0, 0, 1000, 1500], val_region=[1000, 0, 500, 1500])
    )
    np.testing.assert_array_equal(train.image, hgsc.image[:, :1000])
    np.testing.assert_array_equal(val.inst, hgsc.inst[:, 1000:])
    with pytest.raises(ValueError, match="needs data.train_region"):
        load_data(npz_config(data_dir, val_region=[1000, 0, 500, 1500]))
    with pytest.raises(ValueError, match="overlaps"):
        load_data(
            npz_config(data_dir, train_region=[0, 0, 1001, 1500], val_region=[1000, 0, 500, 1500])
        )
    (whole,), none = load_data(npz_config(data_dir))
    assert whole.image.shape == (1500, 1500, 3) and none == []
    with pytest.raises(ValueError, match="type_names"):
        load_data(_two_names(data_dir))


def _two_names(data_dir: Path) -> DataConfig:
    cfg = npz_config(data_dir)
    cfg.type_names = ["a", "b"]
    return cfg


def _crops(hgsc: LabelledImage, n: int, tissues: list[str]) -> list[LabelledImage]:
    out = []
    for i in range(n):
        c = hgsc.region(128 * (i % 10), 256 * (i // 10), 128, 128)
        out.append(LabelledImage(c.image, c.inst, c.types, f"crop{i}", tissues[i % len(tissues)]))
    return out


def test_split_is_seeded_stratified_and_disjoint(hgsc: LabelledImage) -> None:
    images = _crops(hgsc, 30, ["Ovary", "Ovary", "Breast"])  # 20 Ovary, 10 Breast
    train, val = split_images(images, 0.2, seed=3)
    assert sorted(im.name for im in train + val) == sorted(im.name for im in images)
    assert {im.name for im in train}.isdisjoint(im.name for im in val)
    assert sum(im.tissue == "Ovary" for im in val) == 4
    assert sum(im.tissue == "Breast" for im in val) == 2
    again, val2 = split_images(images, 0.2, seed=3)
    assert [im.name for im in val2] == [im.name for im in val]
    _, other = split_images(images, 0.2, seed=4)
    assert [im.name for im in other] != [im.name for im in val]
    # not simply the first images of the list (folds are stored grouped by tissue)
    assert [im.name for im in val] != [im.name for im in images[:6]]
    with pytest.raises(ValueError, match="val_fraction"):
        split_images(images, 1.0)


def _write_consep(folder: Path, crops: list[LabelledImage]) -> None:
    (folder / "Images").mkdir(parents=True)
    (folder / "Labels").mkdir()
    for c in crops:
        cv2.imwrite(str(folder / "Images" / f"{c.name}.png"), c.image[..., ::-1])
        savemat(folder / "Labels" / f"{c.name}.mat", {"inst_map": c.inst, "type_map": c.types})


def test_consep_folders(tmp_path: Path, hgsc: LabelledImage) -> None:
    crops = _crops(hgsc, 6, [""])
    _write_consep(tmp_path / "Train", crops[:4])
    _write_consep(tmp_path / "Test", crops[4:])
    cfg = DataConfig(
        format="mat", folder=str(tmp_path / "Train"), val_folder=str(tmp_path / "Test"),
        type_names=TYPES,
    )  # fmt: skip
    train, val = load_data(cfg)
    assert [im.name for im in train] == ["crop0", "crop1", "crop2", "crop3"]
    assert [im.name for im in val] == ["crop4", "crop5"]
    for im, c in zip(train + val, crops, strict=True):
        np.testing.assert_array_equal(im.image, c.image)  # PNG: lossless
        np.testing.assert_array_equal(im.inst, c.inst)
        np.testing.assert_array_equal(im.types, c.types)
    cfg.val_folder, cfg.val_fraction = "", 0.25
    train, val = load_data(cfg)
    assert len(train) == 3 and len(val) == 1
    (tmp_path / "Train" / "Labels" / "crop0.mat").unlink()
    with pytest.raises(FileNotFoundError, match="crop0"):
        load_data(cfg)


def _write_pannuke(folder: Path, crops: list[LabelledImage]) -> None:
    folder.mkdir(parents=True)
    masks = np.zeros((len(crops), 128, 128, 6), np.float32)
    for n, c in enumerate(crops):
        for i in np.unique(c.inst[c.inst > 0]):
            t = int(np.bincount(c.types[c.inst == i]).argmax())
            masks[n, ..., t - 1][c.inst == i] = i
        masks[n, ..., 5] = c.inst == 0
    np.save(folder / "images.npy", np.stack([c.image for c in crops]).astype(np.float32))
    np.save(folder / "masks.npy", masks)
    np.save(folder / "types.npy", np.array([c.tissue for c in crops]))


def test_pannuke_folds_stay_lazy(tmp_path: Path, hgsc: LabelledImage) -> None:
    from pathssl.nuclei.data import NucleiCropDataset, PanNukeFold, load_pannuke
    from pathssl.nuclei.splits import subset_labels

    crops = _crops(hgsc, 6, ["A", "B"])
    _write_pannuke(tmp_path / "fold1", crops)
    five = ["neoplastic", "inflammatory", "connective", "dead", "epithelial"]
    cfg = DataConfig(format="pannuke", folder=str(tmp_path / "fold1"), type_names=five)
    cfg.val_fraction = 1 / 3
    train, val = load_data(cfg)
    assert isinstance(train, PanNukeFold) and isinstance(val, PanNukeFold)
    assert len(train) == 4 and len(val) == 2
    assert sorted(val.tissue(i) for i in range(2)) == ["A", "B"]  # stratified by tissue
    eager = {im.name: im for im in load_pannuke(tmp_path / "fold1")}
    names = [im.name for im in train] + [im.name for im in val]
    assert sorted(names) == sorted(eager)
    for im in train:
        np.testing.assert_array_equal(im.types, eager[im.name].types)
        np.testing.assert_array_equal(im.image, eager[im.name].image)
    # label subsets: the lazy path picks what the generic one picks
    lazy = subset_labels(train, 0.5, 256, seed=2)
    assert isinstance(lazy, PanNukeFold)
    generic = subset_labels(list(train), 0.5, 256, seed=2)
    assert [im.name for im in lazy] == [im.name for im in generic]
    ds = NucleiCropDataset(train, crop=96, length=4, seed=0)
    assert ds[0]["image"].shape == (3, 96, 96)
    import pickle

    blob = pickle.dumps(train)  # what a spawned DataLoader worker receives
    assert len(blob) < 10_000  # file names and row numbers, not the arrays
    back = pickle.loads(blob)
    np.testing.assert_array_equal(back[1].inst, train[1].inst)
    # types merged by a look-up table (all three into one)
    cfg.type_lut, cfg.type_names = [0, 1, 1, 1, 1, 1], ["nucleus"]
    train, _ = load_data(cfg)
    assert set(np.unique(train[0].types)) <= {0, 1}
    cfg.type_lut = None
    with pytest.raises(ValueError, match="type_names"):
        load_data(cfg)  # 5 PanNuke channels, one name
    cfg.val_folder = str(tmp_path / "missing")
    cfg.type_names = five
    with pytest.raises(FileNotFoundError, match="images.npy"):
        load_data(cfg)
