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


def test_train_predict_evaluate(
    config: Path, tmp_path: Path, data_dir: Path, cmu_slide: Path
) -> None:
    run = Path(yaml.safe_load(config.read_text())["train"]["out_dir"])
    assert main(["nuclei", "train", str(config), "--no-progress"]) == 0
    ckpt = run / "nuclei.pt"
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
                "--checkpoint",
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
    args = ["nuclei", "predict", str(batch), "--checkpoint", str(ckpt), "--no-progress"]
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


def test_label_efficiency(config: Path) -> None:
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
