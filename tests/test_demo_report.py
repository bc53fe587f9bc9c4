"""The demo pipeline's HTML report (benchmarks/demo_pipeline.py ``write_report``).

The inputs are small but in the formats the stages really write: a tiling ``manifest.csv`` and
overview PNG, a SimCLR ``metrics.jsonl`` (records with ``kind``), ``knn.json`` (demo_knn's
format), the nuclei ``metrics.jsonl`` and ``val_metrics.json`` (``nuclei_scores``, NaN included)
and each stage's ``stage.json``. The prediction stage is left out: it must show "not run".
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import sys
from html.parser import HTMLParser
from pathlib import Path
from types import ModuleType
from urllib.parse import unquote

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def _load() -> ModuleType:
    path = REPO / "benchmarks" / "demo_pipeline.py"
    spec = importlib.util.spec_from_file_location("bench_demo_pipeline", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


dp = _load()

SLIDE_NAME = "slides/<b>A&B</b>.svs"  # must come out escaped
SLIDE_ID = "<b>A&B</b>"
KNN = {
    "steps": 200,
    "k": 20,
    "classes": ["connective", "inflammatory", "neoplastic"],
    "n_train": 717,
    "n_test": 461,
    "random_init": {"accuracy": 0.5488, "balanced_accuracy": 0.6141},
    "simclr_pretrained": {"accuracy": 0.7831, "balanced_accuracy": 0.7402},
    "majority_class_accuracy": 0.3124,
}
NUCLEI = {
    "images": 1,
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
    "type_names": ["connective", "inflammatory", "neoplastic"],
}


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


@pytest.fixture()
def demo(tmp_path: Path) -> Path:
    out = tmp_path / "demo out"  # a space: links must be percent-encoded
    tiles = out / "tiles"
    tiles.mkdir(parents=True)
    cols = ["slide", "status", "n_tiles", "mpp", "mpp_source", "seconds", "error", "slide_id"]
    with open(tiles / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, lineterminator="\n")
        w.writeheader()
        w.writerow(
            dict(
                zip(
                    cols,
                    [SLIDE_NAME, "ok", "48", "0.499", "openslide.mpp-x", "0.56", "", SLIDE_ID],
                    strict=True,
                )
            )
        )
        w.writerow(
            dict(
                zip(
                    cols,
                    [
                        "slides/broken.svs",
                        "failed",
                        "0",
                        "",
                        "",
                        "0.00",
                        "corrupt <file>",
                        "broken",
                    ],
                    strict=True,
                )
            )
        )
    _png(tiles / "overviews" / f"{SLIDE_ID}.png")
    _png(out / "augment-simclr.png")
    pre = out / "pretrain"
    (pre / "simclr_resnet18").mkdir(parents=True)
    (pre / "simclr_resnet18" / "last.pt").write_bytes(b"not a real checkpoint")
    lines = [
        {"step": s, "kind": "train", "time": 1.0 + s, "loss": 4.2 - 0.01 * s, "lr": 0.001}
        for s in range(10, 210, 10)
    ]
    lines.insert(3, {"step": 35, "kind": "skipped", "reason": "non-finite", "loss": "nan"})
    (pre / "simclr_resnet18" / "metrics.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in lines)
    )
    _json(
        pre / "stage.json",
        {"stage": "pretrain", "seconds": 251.3, "device": "cpu", "steps": 200, "last_loss": 2.2},
    )
    _json(out / "knn" / "knn.json", KNN)
    _json(out / "knn" / "stage.json", {"stage": "knn", "seconds": 17.2, "device": "cpu"})
    nuc = out / "nuclei"
    _json(nuc / "val_metrics.json", NUCLEI)
    (nuc / "nuclei.pt").write_bytes(b"x")
    (nuc / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "loss": 3.0 / s, "np_ce": 0.5}) + "\n" for s in (10, 20))
    )
    _json(
        nuc / "stage.json",
        {
            "stage": "nuclei",
            "seconds": 101.0,
            "device": "cpu",
            "steps": 300,
            "init": str(pre / "simclr_resnet18/last.pt"),
        },
    )
    return out


def _parse(path: Path) -> _Collector:
    c = _Collector()
    c.feed(path.read_text(encoding="utf-8"))
    c.close()
    return c


def test_report_tables_images_and_escaping(demo: Path) -> None:
    path = dp.write_report(demo)
    assert path == demo / "report.html"
    raw = path.read_text(encoding="utf-8")
    page = _parse(path)
    text = " ".join(page.text)
    assert page.tables >= 5
    for number in ("0.5488", "0.6141", "0.7831", "0.7402", "0.3124"):  # kNN table
        assert number in text
    for number in ("0.4321", "0.7456", "0.5791", "0.3012", "0.4567", "0.6912", "0.3333"):
        assert number in text  # nuclei metrics and per-class PQ
    assert "neoplastic" in text
    assert "48" in text and "0.499" in text  # tiling row
    assert "4 min 11 s" in text and "17.2 s" in text  # stage wall times
    assert "nan" not in text.lower()  # NaN shows as an empty cell
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
    assert "augment-simclr.png" in srcs
    assert "pretrain/loss_curve.png" in srcs and "nuclei/loss_curve.png" in srcs
    assert any(s.startswith("tiles/overviews/") and "%3C" in s for s in srcs)
    # The missing prediction stage.
    assert "not run" in text
    assert "predict" in text and "GeoJSON" not in text
    assert not (demo / ".report.html.tmp").exists()
    assert [p.name for p in demo.iterdir() if p.name.endswith(".tmp")] == []


def test_loss_curve_png(demo: Path) -> None:
    dp.write_report(demo)
    img = cv2.imread(str(demo / "pretrain" / "loss_curve.png"), cv2.IMREAD_COLOR)
    assert img is not None
    assert img.shape == (*dp.CURVE_SIZE, 3)
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 2  # not blank
    rgb = img[:, :, ::-1].reshape(-1, 3).astype(int)
    line = np.all(np.abs(rgb - np.array(dp.CURVE_RGB)) < 10, axis=1)
    assert line.sum() > 200  # the curve is drawn
    # The curve falls from left to right, as the loss does.
    ys, xs = np.divmod(np.flatnonzero(line), dp.CURVE_SIZE[1])
    assert ys[xs < np.percentile(xs, 10)].mean() < ys[xs > np.percentile(xs, 90)].mean()


def test_read_losses_skips_other_kinds(demo: Path) -> None:
    steps, losses = dp.read_losses(demo / "pretrain" / "simclr_resnet18" / "metrics.jsonl")
    assert len(steps) == 20 and 35 not in steps
    assert losses[0] == pytest.approx(4.1)


def test_empty_folder_shows_every_stage_not_run(tmp_path: Path) -> None:
    page = _parse(dp.write_report(tmp_path))
    text = " ".join(page.text)
    assert text.count("not run") >= 1 + 1 + len(dp.STAGES)  # stages table rows
    assert page.srcs == []


def test_run_skips_stages_that_are_done(demo: Path, tmp_path: Path) -> None:
    pred = demo / "predict"
    _json(pred / "stage.json", {"stage": "predict", "seconds": 14.8, "device": "cpu"})
    (pred / "CMU-1-Small-Region.geojson").write_text('{"type": "FeatureCollection"}')
    _png(pred / "CMU-1-Small-Region_overlay.png")
    logs: list[str] = []
    times = dp.run(demo, tmp_path / "no-data", 200, 300, log=logs.append)
    assert times == {}
    assert len(logs) == len(dp.STAGES) and all("skipped" in line for line in logs)
    page = _parse(dp.write_report(demo))
    text = " ".join(page.text)
    assert "not run" not in text
    assert "CMU-1-Small-Region_overlay.png" in " ".join(page.srcs)
    assert "predict/CMU-1-Small-Region.geojson" in page.hrefs
