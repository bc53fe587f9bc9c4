"""Many labelled datasets as one training set (``data.sources``) on the real MoNuSeg and TNBC
files: organs and patients from the names, splits that hold whole images apart (by image, organ,
patient) checked against hand-listed expectations, the check that no image is on both sides,
per-source sampling weights against measured crop frequencies, and the recorded provenance."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from pathssl.config import ConfigError
from pathssl.nuclei.config import SourceConfig, config_from_dict
from pathssl.nuclei.data import (
    ImageSet,
    LabelledImage,
    NucleiCropDataset,
    image_keys,
    load_npz_pair,
)
from pathssl.nuclei.sources import describe_sources, organ_of, read_source, sampling_weights
from pathssl.nuclei.splits import (
    check_held_apart,
    held_apart,
    image_groups,
    load_training_data,
)

MONUSEG_ORGANS = {  # TCGA projects of the 13 files (MoNuSeg's list says "liver" for lung)
    "lung": ["TCGA-21-5784-01Z-00-DX1", "TCGA-21-5786-01Z-00-DX1", "TCGA-50-5931-01Z-00-DX1"],
    "breast": ["TCGA-A7-A13E-01Z-00-DX1", "TCGA-AR-A1AK-01Z-00-DX1", "TCGA-AR-A1AS-01Z-00-DX1",
               "TCGA-E2-A1B5-01Z-00-DX1"],
    "kidney": ["TCGA-B0-5698-01Z-00-DX1", "TCGA-B0-5710-01Z-00-DX1", "TCGA-B0-5711-01Z-00-DX1"],
    "prostate": ["TCGA-CH-5767-01Z-00-DX1", "TCGA-G9-6362-01Z-00-DX1"],
    "colon": ["TCGA-NH-A8F7-01A-01-TS1"],
}  # fmt: skip


def monuseg_source(data_dir: Path, **kw: object) -> SourceConfig:
    path = str(data_dir / "nuclei" / "monuseg-train")
    return SourceConfig(format="imagescope", path=path, mpp=0.25, **kw)  # type: ignore[arg-type]


def tnbc_source(data_dir: Path, **kw: object) -> SourceConfig:
    path = str(data_dir / "nuclei" / "tnbc")
    return SourceConfig(format="mask", path=path, mpp=0.25, organ="breast", **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def monuseg(data_dir: Path) -> list[LabelledImage]:
    return list(read_source("monuseg", monuseg_source(data_dir), log=None))


@pytest.fixture(scope="module")
def tnbc(data_dir: Path) -> list[LabelledImage]:
    return list(read_source("tnbc", tnbc_source(data_dir), log=None))


def test_organs_and_patients_from_the_names(
    monuseg: list[LabelledImage], tnbc: list[LabelledImage]
) -> None:
    by_organ: dict[str, list[str]] = {}
    for im in monuseg:
        by_organ.setdefault(im.tissue, []).append(im.name)
        assert im.patient == im.name[:12] and im.source == "monuseg"
    assert by_organ == MONUSEG_ORGANS
    assert organ_of("TCGA-ZZ-0000-01Z", "unknown") == "unknown"
    assert len(tnbc) == 50 and {im.tissue for im in tnbc} == {"breast"}
    assert sorted({im.patient for im in tnbc}) == [f"Slide_{i:02d}" for i in range(1, 12)]
    assert all(im.name.split("_")[0] == im.patient[-2:] for im in tnbc)  # 03_2.png: patient 03


def _split(images: list[LabelledImage], by: str, val: list[str], fraction: float = 0.0,
           seed: int = 0) -> tuple[list[LabelledImage], list[LabelledImage]]:  # fmt: skip
    held = held_apart(image_groups(images, by, "x"), val, fraction, seed, "x.val")
    return [im for im, h in zip(images, held, strict=True) if not h], [
        im for im, h in zip(images, held, strict=True) if h
    ]


def test_splits_hold_whole_images_apart(
    monuseg: list[LabelledImage], tnbc: list[LabelledImage]
) -> None:
    train, val = _split(monuseg, "organ", ["prostate"])
    assert sorted(im.name for im in val) == MONUSEG_ORGANS["prostate"]
    assert "prostate" not in {im.tissue for im in train} and len(train) == 11
    check_held_apart(train, val)
    names = ["TCGA-21-5786-01Z-00-DX1", "TCGA-NH-A8F7-01A-01-TS1"]
    train, val = _split(monuseg, "image", names)
    assert [im.name for im in val] == names and len(train) == 11
    train, val = _split(tnbc, "patient", ["Slide_03", "Slide_11"])
    assert {im.patient for im in val} == {"Slide_03", "Slide_11"} and len(val) == 5 + 3
    assert not {im.patient for im in train} & {"Slide_03", "Slide_11"}
    check_held_apart(train, val)
    # seeded fraction of the patients: whole patients, reproducible, another seed another draw
    _, val = _split(tnbc, "patient", [], 0.3, seed=1)
    patients = {im.patient for im in val}
    assert len(patients) == 3 and len(val) == sum(im.patient in patients for im in tnbc)
    assert [im.name for im in _split(tnbc, "patient", [], 0.3, seed=1)[1]] == [
        im.name for im in val
    ]
    assert {im.patient for im in _split(tnbc, "patient", [], 0.3, seed=2)[1]} != patients
    with pytest.raises(ValueError, match="'liver'.*not found.*breast, colon, kidney, lung"):
        _split(monuseg, "organ", ["liver"])


def test_the_check_finds_an_image_on_both_sides(tnbc: list[LabelledImage]) -> None:
    train, val = tnbc[:40], tnbc[40:]
    check_held_apart(train, val)
    with pytest.raises(ValueError, match=f"also train: .'tnbc/{tnbc[30].name}'"):
        check_held_apart(train, [*val, tnbc[30]])  # one tile on both sides
    copy = dataclasses.replace(tnbc[5], source="other", name="renamed")
    with pytest.raises(ValueError, match=f"other/renamed has the pixels of .*tnbc/{tnbc[5].name}"):
        check_held_apart(train, [*val, copy])  # the same file under another source


def test_weights_set_how_often_each_source_is_sampled(data_dir: Path) -> None:
    d = data_dir / "nuclei"
    hgsc = load_npz_pair(d / "hgsc_nest.jpg", d / "hgsc_nest_inst_mask.npz")
    big = [dataclasses.replace(hgsc.region(0, 0, 600, 600), source="a", name="big")]
    small = []
    for k in range(4):  # 4 small images, blue channel off: a crop tells its source
        r = hgsc.region(700 + 200 * (k % 2), 200 * (k // 2), 200, 200)
        img = r.image.copy()
        img[..., 2] = 0
        small.append(dataclasses.replace(r, image=img, source="b", name=f"s{k}"))
    images = big + small
    n = 300

    def share_b(weights: list[float] | None) -> float:
        ds = NucleiCropDataset(images, crop=96, length=n, augment=False, seed=4, weights=weights)
        return float(np.mean([ds[i]["image"][2].max().item() == 0 for i in range(n)]))

    by_area = 4 * 200**2 / (600**2 + 4 * 200**2)  # 0.31: the default, every pixel alike
    tol = 3 * np.sqrt(0.25 / n)  # 3 binomial standard deviations
    assert abs(share_b(None) - by_area) < tol
    for wa, wb in ((1, 1), (1, 3)):
        w = sampling_weights(images, {"a": wa, "b": wb})
        assert w.sum() == pytest.approx(1) and w[1:].sum() == pytest.approx(wb / (wa + wb))
        assert abs(share_b(w.tolist()) - wb / (wa + wb)) < tol
    with pytest.raises(ValueError, match=r"no sampling weight for source\(s\) \['b'\]"):
        sampling_weights(images, {"a": 1})


def test_sources_load_as_one_training_set(data_dir: Path) -> None:
    d = data_dir / "nuclei"
    values = {
        "data": {
            "sources": {
                "monuseg": {
                    "format": "imagescope", "path": str(d / "monuseg-train"), "limit": 3,
                    "licence": "CC BY-NC-SA 4.0", "val": ["TCGA-21-5786-01Z-00-DX1"],
                },
                "tnbc": {
                    "format": "mask", "path": str(d / "tnbc"), "mpp": 0.25, "limit": 10,
                    "split": "patient", "val": ["Slide_02"], "weight": 2,
                },
            }
        },
        "model": {"mpp": 0.5},
    }  # fmt: skip
    cfg = config_from_dict(values)
    notes: list[str] = []
    data = load_training_data(cfg.data, target_mpp=0.5, log=notes.append)
    keys = image_keys(data.train)
    assert [n for s, n in keys if s == "monuseg"] == [
        "TCGA-21-5784-01Z-00-DX1", "TCGA-50-5931-01Z-00-DX1"
    ]  # fmt: skip
    assert sum(s == "tnbc" for s, _ in keys) == 7  # Slide_01 (7 tiles); Slide_02 held apart
    assert [im.name for im in data.val] == ["TCGA-21-5786-01Z-00-DX1", "02_1", "02_2", "02_3"]
    assert {im.mpp for im in [*data.train, *data.val]} == {0.5}
    assert data.train[0].image.shape == (505, 505, 3)  # 1000 px at 0.2527 -> 0.5 um/px
    assert data.val[-1].image.shape == (256, 256, 3)
    assert any("connected components" in n for n in notes)
    mon, tn = data.sources
    assert mon["licence"] == "CC BY-NC-SA 4.0" and tn["licence"] == "not stated"
    assert mon["mpp"] == [0.2468, 0.2527] and tn["mpp"] == [0.25]
    assert tn["held_apart_images"] == ["02_1", "02_2", "02_3"]
    lines = describe_sources(data.sources)
    assert "2 training / 1 held-apart images at 0.2468-0.2527 um/px" in lines[0]
    assert lines[0].endswith("licence: CC BY-NC-SA 4.0")
    # a source may be one file: this one records no mpp and the source gives none
    one = values["data"]["sources"]["monuseg"]  # type: ignore[index]
    one.update(path=str(d / "monuseg-train" / "TCGA-NH-A8F7-01A-01-TS1.xml"), val=[])
    with pytest.raises(ValueError, match="TCGA-NH-A8F7.*data.sources.monuseg.mpp"):
        load_training_data(config_from_dict(values).data, log=None)


def test_a_lazy_pannuke_source_joins_the_others(data_dir: Path, tmp_path: Path) -> None:
    from test_nuclei_data import _crops, _write_pannuke

    d = data_dir / "nuclei"
    hgsc = load_npz_pair(d / "hgsc_nest.jpg", d / "hgsc_nest_inst_mask.npz", d / "hgsc_nest_type_mask.npz")  # fmt: skip
    _write_pannuke(tmp_path / "fold1", _crops(hgsc, 6, ["Breast", "Colon"]))
    one = {str(t): 1 for t in range(1, 6)}  # every type -> "nucleus"
    cfg = config_from_dict(
        {
            "data": {
                "sources": {
                    "pannuke": {"format": "pannuke", "path": str(tmp_path / "fold1"),
                                "mpp": 0.25, "split": "organ", "val": ["Colon"], "type_map": one},
                    "cellseg": {"format": "mat", "path": str(d / "cellseg-fixture"),
                                "mpp": 0.25, "val": ["patch3"], "type_map": one},
                },
            }
        }
    )  # fmt: skip
    data = load_training_data(cfg.data, target_mpp=0.5, log=None)
    assert isinstance(data.train, ImageSet) and len(data.train) == 3 + 2
    assert image_keys(data.val) == [("pannuke", "fold1/1"), ("pannuke", "fold1/3"),
                                    ("pannuke", "fold1/5"), ("cellseg", "patch3")]  # fmt: skip
    ds = NucleiCropDataset(data.train, crop=64, length=4, weights=None)
    assert ds[0]["image"].shape == (3, 64, 64) and data.train[0].mpp == 0.5
    assert data.train[0].source == "pannuke" and data.train[0].image.shape == (64, 64, 3)
    assert all(set(np.unique(im.types)) <= {0, 1} for im in [*data.train, *data.val])
    assert {im.types.max() for im in data.train} == {1}
    del cfg.data.sources["cellseg"].type_map["3"]  # patch3 holds type 3
    with pytest.raises(ValueError, match="class '3' is not in data.sources.cellseg.type_map"):
        load_training_data(cfg.data, log=None)


def test_config_checks(data_dir: Path) -> None:
    src = {"format": "mask", "path": "x"}
    with pytest.raises(ConfigError, match="data.image is a key of the one-dataset layout"):
        config_from_dict({"data": {"image": "a.png", "sources": {"t": src}}})
    with pytest.raises(ConfigError, match="data.sources.t.format: 'xml' is not one of"):
        config_from_dict({"data": {"sources": {"t": {**src, "format": "xml"}}}})
    with pytest.raises(ConfigError, match="set val .* or val_fraction, not both"):
        config_from_dict({"data": {"sources": {"t": {**src, "val": ["a"], "val_fraction": 0.2}}}})  # fmt: skip
    with pytest.raises(ConfigError, match="unknown config key 'data.sources.t.wieght'"):
        config_from_dict({"data": {"sources": {"t": {**src, "wieght": 2}}}})
    cfg = config_from_dict({"data": {"sources": {"t": {**src, "type_map": {2: 1}}}}})
    assert cfg.data.sources["t"].type_map == {"2": 1}  # YAML int keys become the ids as text
