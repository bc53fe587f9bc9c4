"""``pathssl nuclei train | predict | evaluate | label-efficiency`` end to end, tiny settings."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from pathssl.cli import main
from pathssl.nuclei.geojson import qupath_problems

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")
NAMES = ["connective", "inflammatory", "neoplastic"]


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    tmp = tmp_path_factory.mktemp("nuclei_cli")
    d = data_dir / "nuclei"
    cfg = {
        "data": {
            "format": "npz",
            "image": str(d / "hgsc_nest.jpg"),
            "inst": str(d / "hgsc_nest_inst_mask.npz"),
            "types": str(d / "hgsc_nest_type_mask.npz"),
            "train_region": [0, 0, 256, 256],
            "val_region": [1000, 0, 96, 96],
            "type_names": NAMES,
            "batch_size": 2,
            "crop": 64,
            "mpp": 0.5,
        },
        "model": {
            "backbone": "vit_tiny",
            "params": {"image_size": 64},
            "widths": [8, 8, 8, 8, 8],
            "shared_decoder": True,
        },
        "optim": {"warmup_steps": 1},
        "train": {"max_steps": 2, "out_dir": str(tmp / "run"), "label_tile": 128},
        "predict": {"window": 64, "overlap": 16, "batch_size": 4},
    }
    path = tmp / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def trained(config: Path) -> Path:
    """``nuclei train`` of the tiny config (2 steps): its ``nuclei.pt``."""
    run = Path(yaml.safe_load(config.read_text())["train"]["out_dir"])
    assert main(["nuclei", "train", str(config), "--no-progress"]) == 0
    return run / "nuclei.pt"


def test_train_predict_evaluate(
    config: Path, trained: Path, tmp_path: Path, data_dir: Path, cmu_slide: Path
) -> None:
    run, ckpt = trained.parent, trained
    assert ckpt.is_file() and (run / "metrics.jsonl").read_text().count("\n") >= 1
    val = json.loads((run / "val_metrics.json").read_text())
    assert 0.0 <= val["pq"] <= 1.0 or np.isnan(val["pq"])

    img = cv2.imread(str(data_dir / "nuclei" / "hgsc_nest.jpg"))[:96, :128]
    cv2.imwrite(str(tmp_path / "tile.png"), img)
    out = tmp_path / "pred"
    assert (
        main(
            [
                "nuclei",
                "predict",
                str(tmp_path / "tile.png"),
                "--checkpoint",
                str(ckpt),
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    maps = np.load(out / "tile.npz")
    assert maps["inst"].shape == (96, 128) and maps["types"].shape == (96, 128)
    doc = json.loads((out / "tile.geojson").read_text())
    assert qupath_problems(doc, NAMES) == []
    assert len(doc["features"]) <= len(np.unique(maps["inst"])) - 1  # specks have no polygon
    assert (out / "tile_overlay.png").is_file()

    assert (
        main(
            [
                "nuclei",
                "predict",
                str(cmu_slide),
                "--model",
                str(ckpt),
                "--out",
                str(out),
                "--region",
                "900",
                "1400",
                "100",
                "100",
                "--no-progress",
            ]
        )
        == 0
    )
    doc = json.loads((out / f"{cmu_slide.stem}.geojson").read_text())
    assert qupath_problems(doc, NAMES) == []

    # a batch: a folder with an image, a slide and a broken slide; the bad one fails alone
    batch = tmp_path / "batch"
    batch.mkdir()
    shutil.copy(tmp_path / "tile.png", batch / "tile.png")
    shutil.copy(data_dir / "slides" / "synthetic-small.svs", batch / "small.svs")
    shutil.copy(data_dir / "slides" / "broken.svs", batch / "broken.svs")
    args = ["nuclei", "predict", str(batch), "--model", str(ckpt), "--no-progress"]
    out2 = tmp_path / "pred2"
    assert main([*args, "--out", str(out2), "--assume-mpp", "0.5"]) == 1  # one input failed
    rows = manifest(out2)
    assert rows["broken"]["status"] == "failed" and rows["broken"]["error"]
    assert rows["small"]["status"] == "done" and rows["tile"]["status"] == "done"
    np.testing.assert_array_equal(np.load(out2 / "tile.npz")["inst"], maps["inst"])
    assert not [p for p in out2.iterdir() if p.name.startswith(".")]  # no temporary left
    before = (out2 / "tile.geojson").stat().st_mtime_ns
    assert main([*args, "--out", str(out2), "--assume-mpp", "0.5"]) == 1  # broken still fails
    rows = manifest(out2)
    assert rows["tile"]["status"] == rows["small"]["status"] == "skipped"
    assert (out2 / "tile.geojson").stat().st_mtime_ns == before
    (batch / "broken.svs").unlink()
    assert main([*args, "--out", str(out2), "--assume-mpp", "0.5", "--force"]) == 0
    rows = manifest(out2)
    assert set(rows) == {"tile", "small"} and rows["tile"]["status"] == "done"


def test_tiff_tiles_are_images_and_tiled_tiffs_slides(tmp_path: Path, data_dir: Path) -> None:
    """openslide's own detection decides: MoNuSeg's stripped RGB TIFF is an image tile (read
    whole, at --mpp, the input's), the pyramidal generic TIFF a slide."""
    from pathssl.nuclei.batch import find_inputs

    tile = data_dir / "nuclei" / "monuseg-train" / "TCGA-B0-5698-01Z-00-DX1.tif"
    boxes = data_dir / "slides" / "synthetic-boxes.tiff"
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(tile, folder / tile.name)
    shutil.copy(boxes, folder / boxes.name)
    kinds = {sid: kind for sid, _, kind in find_inputs([folder])}
    assert kinds == {"TCGA-B0-5698-01Z-00-DX1": "image", "synthetic-boxes": "slide"}
    assert find_inputs([tile])[0][2] == "image" and find_inputs([boxes])[0][2] == "slide"

    out = tmp_path / "pred"
    args = ["nuclei", "predict", str(folder), "--model", "classical", "--out", str(out)]
    assert main([*args, "--mpp", "0.252", "--assume-mpp", "0.5", "--no-progress"]) == 0
    rows = manifest(out)
    assert rows["TCGA-B0-5698-01Z-00-DX1"]["kind"] == "image"
    assert rows["synthetic-boxes"]["kind"] == "slide"
    maps = np.load(out / "TCGA-B0-5698-01Z-00-DX1.npz")
    assert maps["inst"].shape == (1000, 1000)  # the input's pixels, not the model's 0.5 um/px
    n = int(rows["TCGA-B0-5698-01Z-00-DX1"]["nuclei"])
    assert 200 < n < 400  # 357 drawn by hand (test_nuclei_classical checks where)
    doc = json.loads((out / "TCGA-B0-5698-01Z-00-DX1.geojson").read_text())
    assert qupath_problems(doc, ["nucleus"]) == [] and len(doc["features"]) == n
    xy = np.concatenate([np.asarray(f["geometry"]["coordinates"][0]) for f in doc["features"]])
    assert xy.max() > 900  # polygons in the tile's 1000 px frame


def test_predict_options_of_a_checkpoint(trained: Path, tmp_path: Path, data_dir: Path) -> None:
    """--tta / --stain-norm defaults come from the checkpoint; asking for what a model cannot
    do is a usage error (exit code 2) before any work."""
    import torch

    from pathssl.nuclei.batch import load_predictor
    from pathssl.nuclei.stain_norm import fit_reference

    img = cv2.imread(str(data_dir / "nuclei" / "hgsc_nest.jpg"))[:96, :128]
    cv2.imwrite(str(tmp_path / "tile.png"), img)
    plain = load_predictor(trained, progress=False)
    assert plain.predictor.stain is None and not plain.predictor.tta
    assert "no stain norm" in plain.description and "no TTA" in plain.description
    ckpt = torch.load(trained, map_location="cpu", weights_only=True)
    ckpt["meta"]["stain_reference"] = fit_reference(
        [np.ascontiguousarray(img[..., ::-1])], "reinhard"
    )
    ckpt["meta"]["config"]["predict"]["tta"] = True
    torch.save(ckpt, tmp_path / "with_ref.pt")
    loaded = load_predictor(tmp_path / "with_ref.pt", progress=False)
    assert loaded.predictor.stain is not None and loaded.predictor.tta
    assert "stain norm reinhard" in loaded.description and "dihedral TTA" in loaded.description
    off = load_predictor(tmp_path / "with_ref.pt", tta=False, stain_norm=False, progress=False)
    assert off.predictor.stain is None and not off.predictor.tta

    base = ["nuclei", "predict", str(tmp_path / "tile.png"), "--no-progress"]
    out = tmp_path / "a"
    assert main([*base, "--model", str(tmp_path / "with_ref.pt"), "--out", str(out)]) == 0
    assert np.load(out / "tile.npz")["inst"].shape == (96, 128)
    # not possible: TTA of the classical model, stain normalisation without a reference
    assert main([*base, "--model", "classical", "--tta", "--out", str(tmp_path / "b")]) == 2
    assert main([*base, "--model", str(trained), "--stain-norm", "--out", str(tmp_path / "c")]) == 2
    assert main([*base, "--model", str(tmp_path / "none.pt"), "--out", str(tmp_path / "d")]) == 2
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def manifest(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "nuclei_manifest.csv", newline="") as fh:
        return {r["id"]: r for r in csv.DictReader(fh)}


def test_evaluate_ground_truth_against_itself(
    tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = data_dir / "nuclei"
    inst = np.load(d / "hgsc_nest_inst_mask.npz")["nuc_raster"][:300, :300]
    types = np.load(d / "hgsc_nest_type_mask.npz")["nuc_raster"][:300, :300]
    np.savez(tmp_path / "t.npz", inst=inst, types=types)
    shifted = np.where(inst > 0, inst + 1000, 0)  # other ids, same nuclei
    np.savez(tmp_path / "p.npz", inst=shifted, types=types)
    assert (
        main(
            [
                "nuclei",
                "evaluate",
                "--pred",
                str(tmp_path / "p.npz"),
                "--true",
                str(tmp_path / "t.npz"),
                "--out",
                str(tmp_path / "m.json"),
            ]
        )
        == 0
    )
    m = json.loads((tmp_path / "m.json").read_text())
    for k in ("pq", "sq", "dq", "mpq_plus", "aji", "aji_plus", "dice", "f1_detection"):
        assert m[k] == pytest.approx(1.0), k
    # the raw hgsc pair (``nuc_raster`` keys, types in a second file)
    full = np.load(d / "hgsc_nest_inst_mask.npz")["nuc_raster"]
    full_types = np.load(d / "hgsc_nest_type_mask.npz")["nuc_raster"]
    np.savez(tmp_path / "full.npz", inst=full, types=full_types)
    assert (
        main(
            [
                "nuclei",
                "evaluate",
                "--pred",
                str(tmp_path / "full.npz"),
                "--true",
                str(d / "hgsc_nest_inst_mask.npz"),
                "--true-types",
                str(d / "hgsc_nest_type_mask.npz"),
            ]
        )
        == 0
    )
    m = json.loads(capsys.readouterr().out)
    assert m["pq"] == pytest.approx(1.0) and m["counts"]["tp"] == 1294
    assert set(m["per_class_pq"]) == {"1", "2", "3"}
    # unpaired inputs and mismatched shapes fail with exit code 2
    assert (
        main(
            [
                "nuclei",
                "evaluate",
                "--pred",
                str(tmp_path / "p.npz"),
                "--true",
                str(tmp_path / "t.npz"),
                str(tmp_path / "t.npz"),
            ]
        )
        == 2
    )
    assert (
        main(
            [
                "nuclei",
                "evaluate",
                "--pred",
                str(tmp_path / "full.npz"),
                "--true",
                str(tmp_path / "t.npz"),
            ]
        )
        == 2
    )


def test_label_efficiency(config: Path, trained: Path) -> None:
    run = Path(yaml.safe_load(config.read_text())["train"]["out_dir"])
    assert (
        main(["nuclei", "label-efficiency", str(config), "fractions=[0.25, 1.0]", "--no-progress"])
        == 0
    )
    rep = json.loads((run / "label_efficiency.json").read_text())
    assert [r["fraction"] for r in rep["runs"]] == [0.25, 1.0]
    n = [r["labelled_nuclei"] for r in rep["runs"]]
    assert 0 < n[0] < n[1]
    png = cv2.imread(str(run / "label_efficiency.png"))
    assert png is not None and png.shape == (420, 640, 3)


def test_help_mentions_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["nuclei", "--help"])
    text = capsys.readouterr().out
    assert "train" in text and "predict" in text and "evaluate" in text
    assert main(["nuclei"]) == 2


def test_evaluate_a_pannuke_fold(tmp_path: Path, data_dir: Path) -> None:
    """``--true FOLD`` reads PanNuke masks.npy/types.npy; predictions as one (N, H, W) stack.
    Images 0, 1 (tissue A) predicted perfectly, image 2 (tissue B) with no nucleus: by hand,
    tissue A mPQ = bPQ = 1, tissue B 0, so PanNuke mPQ = bPQ = (1 + 0) / 2 = 0.5."""
    d = data_dir / "nuclei"
    inst = np.load(d / "hgsc_nest_inst_mask.npz")["nuc_raster"]
    types = np.load(d / "hgsc_nest_type_mask.npz")["nuc_raster"]
    fold = tmp_path / "fold3"
    fold.mkdir()
    masks = np.zeros((3, 256, 256, 6), np.float32)
    crops = [(inst[:256, x : x + 256], types[:256, x : x + 256]) for x in (0, 256, 512)]
    for n, (ci, ct) in enumerate(crops):
        for i in np.unique(ci[ci > 0]):
            t = int(np.bincount(ct[ci == i]).argmax())
            masks[n, ..., t - 1][ci == i] = i
        masks[n, ..., 5] = ci == 0
    np.save(fold / "masks.npy", masks)
    np.save(fold / "types.npy", np.array(["A", "A", "B"]))
    from pathssl.nuclei.data import pannuke_maps

    maps = [pannuke_maps(m) for m in masks]
    pred_inst = np.stack([maps[0][0], maps[1][0], np.zeros((256, 256), np.int32)])
    pred_types = np.stack([maps[0][1], maps[1][1], np.zeros((256, 256), np.int32)])
    np.savez(tmp_path / "pred.npz", inst=pred_inst, types=pred_types)
    out = tmp_path / "m.json"
    args = ["nuclei", "evaluate", "--pred", str(tmp_path / "pred.npz"), "--true", str(fold)]
    assert main([*args, "--radius", "6", "--out", str(out)]) == 0
    m = json.loads(out.read_text())
    assert m["images"] == 3 and m["detection_radius_px"] == 6
    assert m["pannuke"]["per_tissue"]["A"] == {"mpq": 1.0, "bpq": 1.0}
    assert m["pannuke"]["per_tissue"]["B"] == {"mpq": 0.0, "bpq": 0.0}
    assert m["pannuke"]["mpq"] == pytest.approx(0.5) and m["pannuke"]["bpq"] == pytest.approx(0.5)
    assert m["pq_image_mean"] == pytest.approx(2 / 3)
    assert main([*args, "--tissues", "A", "B"]) == 2  # 2 names for 3 images
