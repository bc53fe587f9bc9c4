"""``pathssl demo`` (:mod:`pathssl.demo`): its kNN figures are ``pathssl eval``'s, its report,
its stage skipping, its errors.

The report inputs are small but in the formats the stages really write: a tiling
``manifest.csv`` and overview PNG, a SimCLR ``metrics.jsonl`` (records with ``kind``),
``knn.json``, the nuclei ``metrics.jsonl`` and ``val_metrics.json`` (``nuclei_scores``, NaN
included) and each stage's record. The prediction stage is left out: it must show "not run".
"""

from __future__ import annotations

import csv
import json
import math
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import cv2
import numpy as np
import pytest
import torch
import yaml
from scipy import ndimage as ndi

from pathssl.cli import main
from pathssl.demo import layout, plots, report, run_demo, stages
from pathssl.demo.knn import knn_scores, majority_accuracy, nucleus_crops, write_crops
from pathssl.demo.run import stage_params
from pathssl.eval.config import config_from_dict
from pathssl.models.backbones import build_backbone
from pathssl.nuclei.data import load_npz_pair

CLASSES = list(stages.KNN_CLASSES)
SLIDE_NAME = "slides/<b>A&B</b>.svs"  # must come out escaped
SLIDE_ID = "<b>A&B</b>"
KNN = {
    "k": 20,
    "crop": 64,
    "classes": CLASSES,
    "n_train": 717,
    "n_test": 461,
    "random_init": {"accuracy": 0.5488, "balanced_accuracy": 0.6141},
    "simclr_pretrained": {"accuracy": 0.7831, "balanced_accuracy": 0.7402},
    "majority_class_accuracy": 0.3124,
    "eval_configs": {"random_init": "eval_random_init.yaml"},
}
NUCLEI = {
    "images": 16,
    "pq": 0.4321,
    "sq": 0.7456,
    "dq": 0.5791,
    "mpq_plus": 0.3012,
    "per_class_pq": {"1": 0.1111, "2": 0.2222, "3": 0.3333},
    "aji": 0.4567,
    "aji_plus": 0.4678,
    "dice": 0.6789,
    "dice2": math.nan,
    "f1_detection": 0.6912,
    "detection": {"f1_d": 0.6912, "precision_d": 0.7, "recall_d": 0.68, "per_class_f1": {}},
    "counts": {"tp": 100, "fp": 20, "fn": 30},
    "type_names": CLASSES,
    "classical": {"pq": 0.3177, "aji": 0.3456, "f1_detection": 0.6012},
    "per_source": {
        "monuseg": {
            "images": ["a", "b", "c", "d"],
            "pq": 0.5111,
            "aji": 0.5222,
            "f1_detection": 0.8333,
            "classical": {"pq": 0.4999, "aji": 0.5001, "f1_detection": 0.7901},
        },
        "tnbc": {
            "images": ["e"] * 12,
            "pq": 0.4444,
            "aji": math.nan,
            "f1_detection": 0.7444,
            "classical": {"pq": 0.4232, "aji": 0.4561, "f1_detection": 0.7461},
        },
    },
}


# ----------------------------------------------------------------- kNN: demo == pathssl eval


@pytest.fixture(scope="module")
def hgsc(data_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The top 400 rows of hgsc_nest (image, instances, types): ~300 nuclei, a quick probe."""
    nuc = data_dir / "nuclei"
    li = load_npz_pair(*(nuc / name for name in stages.NUCLEI_FILES))
    return li.image[:400], li.inst[:400], li.types[:400]


def test_nucleus_crops_against_centroids(hgsc: tuple[np.ndarray, ...]) -> None:
    image, inst, types = hgsc
    crops, labels, centres = nucleus_crops(image, inst, types, 32)
    ids = [i for i in np.unique(inst) if i]
    com = ndi.center_of_mass(np.ones_like(inst), inst, ids)
    expected = {}
    for i, (cy, cx) in zip(ids, com, strict=True):
        t = types[inst == i]
        cy, cx = int(round(cy)), int(round(cx))
        if t.max() > 0 and 16 <= cy < image.shape[0] - 16 and 16 <= cx < image.shape[1] - 16:
            expected[(cx, cy)] = int(np.bincount(t[t > 0]).argmax()) - 1
    assert len(crops) == len(expected) > 200
    for crop, label, (cx, cy) in zip(crops, labels, centres, strict=True):
        assert expected[(int(cx), int(cy))] == label
        assert np.array_equal(crop, image[cy - 16 : cy + 16, cx - 16 : cx + 16])
    assert set(labels.tolist()) == {0, 1, 2}


def _reference_knn(
    folder: Path, train_csv: Path, test_csv: Path, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Predictions and true labels of a plain kNN (numpy, float64) on random-init ResNet-18
    features of the crop PNGs: ImageNet normalisation, centred on the training mean, cosine,
    majority vote, ties to the larger summed similarity."""

    def rows(path: Path) -> tuple[list[Path], np.ndarray]:
        with open(path, newline="") as fh:
            r = list(csv.DictReader(fh))
        return [folder / x["path"] for x in r], np.array([CLASSES.index(x["label"]) for x in r])

    torch.manual_seed(0)
    model = build_backbone("resnet18").eval()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    def feats(paths: list[Path]) -> np.ndarray:
        out = []
        for i in range(0, len(paths), 64):
            imgs = [cv2.imread(str(p), cv2.IMREAD_COLOR)[:, :, ::-1] for p in paths[i : i + 64]]
            x = torch.from_numpy(np.stack(imgs).copy()).permute(0, 3, 1, 2).float() / 255.0
            with torch.no_grad():
                out.append(model((x - mean) / std).numpy())
        return np.concatenate(out).astype(np.float64)

    (tr_paths, tr_y), (te_paths, te_y) = rows(train_csv), rows(test_csv)
    a, b = feats(tr_paths), feats(te_paths)
    centre = a.mean(0, keepdims=True)
    a = (a - centre) / np.linalg.norm(a - centre, axis=1, keepdims=True)
    b = (b - centre) / np.linalg.norm(b - centre, axis=1, keepdims=True)
    sim = b @ a.T
    pred = []
    for s in sim:
        top = np.argsort(-s, kind="stable")[:k]
        votes = np.bincount(tr_y[top], minlength=len(CLASSES))
        sums = np.bincount(tr_y[top], weights=s[top], minlength=len(CLASSES))
        best = np.flatnonzero(votes == votes.max())
        pred.append(int(best[np.argmax(sums[best])]))
    return np.array(pred), te_y


def test_demo_knn_figures_equal_pathssl_eval(
    hgsc: tuple[np.ndarray, ...], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image, inst, types = hgsc
    crops, labels, centres = nucleus_crops(image, inst, types, 32)
    folder = tmp_path / "crops"
    train_csv, test_csv = write_crops(folder, crops, labels, centres, CLASSES, 750)
    plain = stages.eval_config(train_csv, test_csv, None, 32, "cpu")
    config = tmp_path / "eval_random_init.yaml"
    config.write_text(yaml.safe_dump(plain))
    # The demo's code path: the config as the demo reads it, then its kNN function.
    demo = knn_scores(train_csv, test_csv, CLASSES, **stages.knn_arguments(config_from_dict(plain)))
    # `pathssl eval` on the same config: same encoder, same crops, same split.
    assert main(["eval", str(config), "--out", str(tmp_path / "eval")]) == 0
    capsys.readouterr()
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    ev = metrics["protocols"]["knn"]
    assert (
        metrics["data"]["n_train"] == demo["n_train"]
        and metrics["data"]["n_test"] == demo["n_test"]
    )
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "auroc", "confusion_matrix", "k"):
        assert demo[key] == ev[key], key
    # The predictions behind the figures, against a plain re-implementation.
    ref_pred, test_y = _reference_knn(folder, train_csv, test_csv, int(ev["k"]))
    pred = np.array(demo["predictions"])
    assert len(pred) == len(test_y) == demo["n_test"] > 100
    assert (pred == ref_pred).mean() >= 0.99
    assert demo["accuracy"] == pytest.approx(float((pred == test_y).mean()), abs=1e-12)
    assert 0.33 < demo["accuracy"] < 0.95  # a real probe, not a constant
    majority = majority_accuracy(train_csv, test_csv)
    top = np.bincount(labels[centres[:, 0] < 750]).argmax()
    assert majority == pytest.approx(float((test_y == top).mean()))


# ----------------------------------------------------------------------------- the report


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []
        self.srcs: list[str] = []
        self.hrefs: list[str] = []
        self.tables = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "img":
            self.srcs.append(a["src"] or "")
        if tag == "a":
            self.hrefs.append(a["href"] or "")
        self.tables += tag == "table"

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _png(path: Path, h: int = 12, w: int = 16) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.zeros((h, w, 3), np.uint8)
    img[:, : w // 2] = (200, 100, 50)
    assert cv2.imwrite(str(path), img)


def _json(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2))


def _record(
    out: Path, stage: str, seconds: float, params: dict[str, object], **extra: object
) -> None:
    rec = {"stage": stage, "seconds": seconds, "device": "cpu", "params": params, **extra}
    _json(layout.record_path(out, stage), rec)


@pytest.fixture()
def demo(tmp_path: Path, data_dir: Path) -> Path:
    out = tmp_path / "demo out"  # a space: links must be percent-encoded
    params = stage_params(data_dir, 200, 300)
    tiles = out / "tiles"
    (tiles / f"{layout.SLIDE_ID}.zarr").mkdir(parents=True)
    cols = ["slide", "status", "n_tiles", "mpp", "mpp_source", "seconds", "error", "slide_id"]
    rows = [
        [SLIDE_NAME, "ok", "48", "0.499", "openslide.mpp-x", "0.56", "", SLIDE_ID],
        ["slides/broken.svs", "failed", "0", "", "", "0.00", "corrupt <file>", "broken"],
    ]
    with open(tiles / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(cols)
        w.writerows(rows)
    _png(tiles / "overviews" / f"{SLIDE_ID}.png")
    _record(out, "tiling", 3.4, params["tiling"], failed=["broken"])
    _png(out / layout.PREVIEW_PNG)
    _record(out, "augment", 1.2, params["augment"])
    run = out / layout.PRETRAIN_RUN
    run.mkdir(parents=True)
    (run / "last.pt").write_bytes(b"not a real checkpoint")
    lines = [
        {"step": s, "kind": "train", "time": 1.0 + s, "loss": 4.2 - 0.01 * s, "lr": 0.001}
        for s in range(10, 210, 10)
    ]
    lines.insert(3, {"step": 35, "kind": "skipped", "reason": "non-finite", "loss": "nan"})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    _record(out, "pretrain", 251.3, params["pretrain"], steps=200, last_loss=2.2)
    _json(out / "knn" / "knn.json", KNN)
    (out / "knn" / "eval_random_init.yaml").write_text("data: {}\n")
    _record(out, "knn", 17.2, params["knn"])
    nuc = out / "nuclei"
    _json(nuc / "val_metrics.json", NUCLEI)
    (nuc / "nuclei.pt").write_bytes(b"x")
    (nuc / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "loss": 3.0 / s, "np_ce": 0.5}) + "\n" for s in (10, 20))
    )
    _record(out, "nuclei", 101.0, params["nuclei"], steps=300, init="simclr")
    return out


def _parse(path: Path) -> _Collector:
    c = _Collector()
    c.feed(path.read_text(encoding="utf-8"))
    c.close()
    return c


def test_report_tables_images_and_escaping(demo: Path) -> None:
    path = report.write_report(demo)
    assert path == demo / "report.html"
    raw = path.read_text(encoding="utf-8")
    page = _parse(path)
    text = " ".join(page.text)
    assert page.tables >= 4
    for number in ("0.5488", "0.6141", "0.7831", "0.7402", "0.3124"):  # kNN table
        assert number in text
    for number in ("0.4321", "0.4567", "0.6912", "0.6012", "0.5111", "0.4999", "0.7461"):
        assert number in text  # nuclei metrics per held-apart set, and the classical model's
    assert "monuseg" in text and "tnbc" in text and "classical PQ" in text
    assert "48" in text and "0.499" in text  # tiling row
    assert "4 min 11 s" in text and "17.2 s" in text and "3.4 s" in text  # stage wall times
    assert "6 min 14 s" in text  # their total
    assert "nan" not in text.lower()  # NaN shows as an empty cell
    assert "pathssl eval" in text and "knn/eval_random_init.yaml" in page.hrefs
    # Names are escaped: the parser sees them as text, the raw HTML never holds the markup.
    assert SLIDE_NAME in text and "corrupt <file>" in text
    assert "<b>A&B</b>" not in raw and "&lt;b&gt;A&amp;B&lt;/b&gt;" in raw
    # Images: relative links that resolve to files in the demo folder.
    assert page.srcs
    for src in page.srcs + [h for h in page.hrefs if not h.startswith("#")]:
        assert not src.startswith(("/", "file:", "http:", "https:")), src
        assert ".." not in src.split("/"), src
        assert (demo / unquote(src)).is_file(), src
    srcs = page.srcs
    assert layout.PREVIEW_PNG in srcs
    assert "pretrain/loss_curve.png" in srcs and "nuclei/loss_curve.png" in srcs
    assert any(s.startswith("tiles/overviews/") and "%3C" in s for s in srcs)
    # The missing prediction stage.
    assert "not run" in text
    assert "slide prediction" in text and "GeoJSON" not in text
    assert [p.name for p in demo.rglob("*") if ".tmp" in p.name] == []


def test_loss_curve_png(demo: Path) -> None:
    report.write_report(demo)
    img = cv2.imread(str(demo / "pretrain" / "loss_curve.png"), cv2.IMREAD_COLOR)
    assert img is not None
    assert img.shape == (*plots.CURVE_SIZE, 3)
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 2  # not blank
    rgb = img[:, :, ::-1].reshape(-1, 3).astype(int)
    line = np.all(np.abs(rgb - np.array(plots.CURVE_RGB)) < 10, axis=1)
    assert line.sum() > 200  # the curve is drawn
    # The curve falls from left to right, as the loss does.
    ys, xs = np.divmod(np.flatnonzero(line), plots.CURVE_SIZE[1])
    assert ys[xs < np.percentile(xs, 10)].mean() < ys[xs > np.percentile(xs, 90)].mean()


def test_loss_curves_overlaid(tmp_path: Path) -> None:
    """A second series (``more=``) is drawn in its own colour on the same axes: the falling
    first series and the rising second one each keep their direction, and the legend names
    both (the before/after plot of benchmarks/all_methods.py)."""
    steps = list(range(0, 100, 5))
    falling = [10.0 - 0.08 * s for s in steps]
    rising = [2.0 + 0.05 * s for s in steps]
    png = plots.draw_curve(
        steps, falling, tmp_path / "two.png", label="fixed", more=[("before", steps, rising)]
    )
    rgb = cv2.imread(str(png), cv2.IMREAD_COLOR)[:, :, ::-1].reshape(-1, 3).astype(int)
    width = plots.CURVE_SIZE[1]
    for colour, falls in ((plots.CURVE_RGB, True), (plots.MORE_RGB[0], False)):
        on = np.all(np.abs(rgb - np.array(colour)) < 10, axis=1)
        ys, xs = np.divmod(np.flatnonzero(on), width)
        plot = ys > 80  # below the legend
        ys, xs = ys[plot], xs[plot]
        assert len(xs) > 200, colour
        left = ys[xs < np.percentile(xs, 10)].mean()
        right = ys[xs > np.percentile(xs, 90)].mean()
        assert (left < right) == falls, colour  # image rows grow downwards
    one = plots.draw_curve(steps, falling, tmp_path / "one.png")
    grey = cv2.imread(str(one), cv2.IMREAD_COLOR)[:, :, ::-1].reshape(-1, 3).astype(int)
    assert not np.all(np.abs(grey - np.array(plots.MORE_RGB[0])) < 10, axis=1).any()


def test_read_losses_skips_other_kinds(demo: Path) -> None:
    steps, losses = plots.read_losses(demo / layout.PRETRAIN_RUN / "metrics.jsonl")
    assert len(steps) == 20 and 35 not in steps
    assert losses[0] == pytest.approx(4.1)


def test_empty_folder_shows_every_stage_not_run(tmp_path: Path) -> None:
    page = _parse(report.write_report(tmp_path))
    text = " ".join(page.text)
    assert text.count("not run") >= len(layout.STAGES) + 5  # stages table + every section
    assert page.srcs == []


def test_run_skips_stages_that_are_done(demo: Path, data_dir: Path) -> None:
    pred = demo / "predict"
    (pred / f"{layout.SLIDE_ID}.geojson").parent.mkdir(parents=True)
    (pred / f"{layout.SLIDE_ID}.geojson").write_text('{"type": "FeatureCollection"}')
    _png(pred / f"{layout.SLIDE_ID}_overlay.png")
    classical = demo / "predict_classical"
    classical.mkdir()
    (classical / f"{layout.SLIDE_ID}.geojson").write_text('{"type": "FeatureCollection"}')
    _png(classical / f"{layout.SLIDE_ID}_overlay.png")
    _record(demo, "predict", 14.8, {}, nuclei=496, nuclei_classical=2418, windows=12)
    logs: list[str] = []
    result = run_demo(demo, data_dir, 200, 300, device="cpu", log=logs.append)
    assert result.ran == []
    assert len(logs) == len(layout.STAGES) + 1
    assert all("skipped" in line for line in logs[:-1]) and "report.html" in logs[-1]
    assert result.failed_slides == ["broken"]
    assert result.seconds["pretrain"] == pytest.approx(251.3)
    page = _parse(report.write_report(demo))
    text = " ".join(page.text)
    assert "not run" not in text and "496" in text and "2,418" in text
    assert f"{layout.SLIDE_ID}_overlay.png" in " ".join(page.srcs)
    assert f"predict_classical/{layout.SLIDE_ID}_overlay.png" in page.srcs
    assert f"predict/{layout.SLIDE_ID}.geojson" in page.hrefs


# ----------------------------------------------------------------------------- the command


def test_demo_command_bad_data_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(["demo", "--out", str(tmp_path / "out"), "--data", str(tmp_path / "nowhere")])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith("pathssl demo: error: ") and "\n" not in err
    assert "nowhere" in err and "--data" in err
    assert not (tmp_path / "out").exists()


def test_demo_refuses_a_foreign_output_folder(
    tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "mine"
    (out / "nuclei").mkdir(parents=True)
    (out / "nuclei" / "precious.txt").write_text("keep me")
    rc = main(["demo", "--out", str(out), "--data", str(data_dir)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and str(out) in err and "--out" in err
    assert (out / "nuclei" / "precious.txt").read_text() == "keep me"
    assert sorted(p.name for p in out.rglob("*")) == ["nuclei", "precious.txt"]


def test_overrides_quote_paths() -> None:
    got = stages.overrides(
        {"data.stores": "{stores}", "train.max_steps": "{steps}", "train.progress": "{p}"},
        stores=[Path("/a b/c:d.zarr")],
        steps=5,
        p=False,
    )
    assert got == ['data.stores=["/a b/c:d.zarr"]', "train.max_steps=5", "train.progress=false"]
    assert yaml.safe_load(got[0].split("=", 1)[1]) == ["/a b/c:d.zarr"]


@pytest.mark.slow
def test_whole_demo_few_steps(
    tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every stage for real with a handful of steps; the sample's broken slides give exit 1."""
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--data", str(data_dir), "--no-progress"]
    rc = main([*args, "--pretrain-steps", "3", "--nuclei-steps", "3"])
    printed = capsys.readouterr().out
    assert rc == 1 and "broken" in printed
    for i, stage in enumerate(layout.STAGES, 1):
        assert f"[{i}/{len(layout.STAGES)}] {layout.TITLES[stage]}: " in printed
        assert layout.stage_done(out, stage), stage
    knn = json.loads((out / "knn" / "knn.json").read_text())
    assert {"random_init", "simclr_pretrained"} <= set(knn)
    gj = json.loads((out / "predict" / f"{layout.SLIDE_ID}.geojson").read_text())
    rec = layout.read_json(layout.record_path(out, "predict"))
    assert rec is not None and len(gj["features"]) == rec["nuclei"]
    page = _parse(out / "report.html")
    assert "not run" not in " ".join(page.text)
    # A rerun with the same settings skips every stage.
    assert main(args + ["--pretrain-steps", "3", "--nuclei-steps", "3"]) == 1
    assert capsys.readouterr().out.count("skipped") == len(layout.STAGES)
