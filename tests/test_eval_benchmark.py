"""``pathssl eval`` with ``encoders:`` and ``tasks:``: one table and one figure across encoders
on real nucleus crops (a random ResNet-18 and a pathssl checkpoint pretrained here for 2 steps),
label fractions 0.1 / 1.0, resumable cells, CLI dispatch, and the frozen-encoder nuclei task."""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from test_train_methods import tiny_overrides

from pathssl.cli import main
from pathssl.eval.benchmark import encoder_keywords, load_entry
from pathssl.eval.config import EncoderEntry
from pathssl.eval.report import PALETTE

CLASSES = ["connective", "inflammatory", "neoplastic"]


@pytest.fixture(scope="module")
def crops(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Nucleus-centred 32 px crops of hgsc_nest's top 400 rows (model-made types), left half
    train, right half test: the demo's kNN layout."""
    from pathssl.demo.knn import nucleus_crops, write_crops
    from pathssl.nuclei.data import load_npz_pair

    nuc = data_dir / "nuclei"
    li = load_npz_pair(
        nuc / "hgsc_nest.jpg", nuc / "hgsc_nest_inst_mask.npz", nuc / "hgsc_nest_type_mask.npz"
    )
    c, y, xy = nucleus_crops(li.image[:400], li.inst[:400], li.types[:400], 32)
    return write_crops(tmp_path_factory.mktemp("crops") / "c", c, y, xy, CLASSES, 750)


@pytest.fixture(scope="module")
def checkpoint(cmu_slide: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny pathssl checkpoint: SimCLR ResNet-18, 2 steps of the pretraining loop."""
    from pathssl.train import build_trainer, load_config
    from tiling import tile_slides

    tiles = tmp_path_factory.mktemp("tiles")
    tile_slides([cmu_slide], tiles, mpp=0.5, size=224, progress=False, report=False)
    run = tmp_path_factory.mktemp("run")
    build_trainer(load_config(None, tiny_overrides("simclr", tiles, run, steps=2))).fit()
    return run / "last.pt"


def _config(path: Path, crops: tuple[Path, Path], checkpoint: Path, **extra: object) -> Path:
    cfg = {
        "encoders": [
            {"name": "random", "backbone": "resnet18"},
            {"name": "tiny_simclr", "checkpoint": str(checkpoint)},
        ],
        "tasks": [
            {
                "name": "hgsc",
                "kind": "tile",
                "data": {
                    "source": {"format": "csv", "csv": str(crops[0])},
                    "test": {"format": "csv", "csv": str(crops[1])},
                    "class_names": CLASSES,
                    "image_size": 32,
                },
                "protocols": {"knn": {"k": 5}},
                "note": "model-made labels",
            }
        ],
        "fractions": [0.1, 1.0],
        "seeds": [0, 1],
        "train": {"device": "cpu"},
        **extra,
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def _class_counts(csv_path: Path) -> list[int]:
    with open(csv_path, newline="") as fh:
        labels = [row["label"] for row in csv.DictReader(fh)]
    return [labels.count(c) for c in CLASSES]


def _bar_heights(png: np.ndarray, rgb: tuple[int, int, int]) -> list[int]:
    """Heights in px of the bars of one colour below the legend, left to right (one x-run of
    columns holding the colour is one bar)."""
    body = png[40:]
    mask = np.all(body == np.array(rgb, np.uint8), axis=2)
    cols = np.flatnonzero(mask.any(axis=0))
    runs = np.split(cols, np.flatnonzero(np.diff(cols) > 1) + 1)
    heights = []
    for run in runs:
        ys = np.flatnonzero(mask[:, run].any(axis=1))
        heights.append(int(ys.max() - ys.min() + 1))
    return heights


def test_benchmark_table_and_figure(
    crops: tuple[Path, Path], checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bench"
    cfg = _config(tmp_path / "b.yaml", crops, checkpoint)
    assert main(["eval", str(cfg), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "[1/2] random x hgsc" in printed and "[2/2] tiny_simclr x hgsc" in printed
    cells = [json.loads(line) for line in (out / "cells.jsonl").read_text().splitlines()]
    # 2 encoders x (2 seeds at 10 % + 1 run at 100 %: frozen features, the same full set)
    assert sorted((c["encoder"], c["fraction"], c["seed"]) for c in cells) == [
        ("random", 0.1, 0),
        ("random", 0.1, 1),
        ("random", 1.0, 0),
        ("tiny_simclr", 0.1, 0),
        ("tiny_simclr", 0.1, 1),
        ("tiny_simclr", 1.0, 0),
    ]
    counts = _class_counts(crops[0])
    for c in cells:  # stratified: ceil(10 % of each class), counted from the CSV
        want = sum(counts) if c["fraction"] == 1.0 else sum(math.ceil(0.1 * n) for n in counts)
        assert c["info"]["n_train"] == want

    # the 100 % cells are what single-encoder `pathssl eval` gives for the same encoder
    for name, model in (
        ("random", {"backbone": "resnet18"}),
        ("tiny_simclr", {"checkpoint": str(checkpoint)}),
    ):
        single = {
            "data": yaml.safe_load(cfg.read_text())["tasks"][0]["data"],
            "model": model,
            "protocols": {"knn": {"k": 5}},
            "train": {"device": "cpu", "seed": 0},
        }
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(single))
        assert main(["eval", str(tmp_path / f"{name}.yaml"), "--out", str(tmp_path / name)]) == 0
        ref = json.loads((tmp_path / name / "metrics.json").read_text())["protocols"]["knn"]
        (full,) = [c for c in cells if c["encoder"] == name and c["fraction"] == 1.0]
        assert full["scores"]["knn"]["balanced_accuracy"] == pytest.approx(ref["balanced_accuracy"])

    report = json.loads((out / "benchmark.json").read_text())
    rows = {
        (r["encoder"], r["fraction"]): r
        for r in report["rows"]
        if r["metric"] == "balanced_accuracy"
    }
    for name in ("random", "tiny_simclr"):
        vals = [
            c["scores"]["knn"]["balanced_accuracy"]
            for c in cells
            if c["encoder"] == name and c["fraction"] == 0.1
        ]
        assert rows[(name, 0.1)]["mean"] == pytest.approx(statistics.mean(vals))
        assert rows[(name, 0.1)]["sd"] == pytest.approx(statistics.stdev(vals))
        assert rows[(name, 1.0)]["sd"] is None and rows[(name, 1.0)]["n"] == 1

    md = (out / "benchmark.md").read_text().splitlines()
    assert md[0] == (
        "| encoder | hgsc · knn · balanced_accuracy @ 10% | hgsc · knn · balanced_accuracy @ 100% |"
    )
    r = rows[("random", 0.1)]
    assert md[2] == (
        f"| random | {r['mean']:.3f} ± {r['sd']:.3f} | {rows[('random', 1.0)]['mean']:.3f} |"
    )
    assert md[3].startswith("| tiny_simclr | ")
    assert any("hgsc: model-made labels" in line for line in md)
    with open(out / "benchmark.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == len(report["rows"]) == 2 * 2 * 5  # encoders x fractions x metrics

    bgr = cv2.imread(str(out / "benchmark.png"))
    assert bgr is not None
    png = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    scale = []
    for k, name in enumerate(("random", "tiny_simclr")):
        heights = _bar_heights(png, PALETTE[k])
        assert len(heights) == 2  # a bar at 10 % and one at 100 %
        for h, f in zip(heights, (0.1, 1.0), strict=True):
            scale.append(h / rows[(name, f)]["mean"])  # px per unit: the same for every bar
    assert max(scale) - min(scale) < 3 / 0.3, scale


def test_rerun_skips_finished_cells(
    crops: tuple[Path, Path], checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bench"
    cfg = _config(tmp_path / "b.yaml", crops, checkpoint, fractions=[0.1, 1.0], seeds=[0])
    assert main(["eval", str(cfg), "--out", str(out)]) == 0
    first = (out / "benchmark.md").read_text()
    lines = (out / "cells.jsonl").read_text().splitlines()
    assert len(lines) == 4
    capsys.readouterr()
    assert main(["eval", str(cfg), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.count("cells done before, skipped") == 2 and " seed 0: " not in text
    # an interrupted run: the last cell lost (and a torn line); only that cell runs again
    (out / "cells.jsonl").write_text("\n".join(lines[:-1]) + '\n{"encoder": "tiny')
    assert main(["eval", str(cfg), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "[2/2] tiny_simclr x hgsc: 1 of 2 cells to run" in text
    assert (out / "benchmark.md").read_text() == first


def test_missing_encoders_and_dispatch(
    crops: tuple[Path, Path], checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "imagenet.pth"
    encoders: list[dict[str, object]] = [
        {"name": "random", "backbone": "resnet18"},
        {"name": "imagenet", "backbone": "resnet18", "checkpoint": str(missing), "optional": True},
    ]
    cfg = _config(tmp_path / "b.yaml", crops, checkpoint, encoders=encoders, fractions=[1.0])
    assert main(["eval", str(cfg), "--out", str(tmp_path / "o")]) == 0
    text = capsys.readouterr().out
    assert f"encoder imagenet: skipped, checkpoint {missing} not found" in text
    md = (tmp_path / "o" / "benchmark.md").read_text()
    assert "| random |" in md and "| imagenet |" not in md and "encoder imagenet skipped" in md
    encoders[1]["optional"] = False
    cfg = _config(tmp_path / "c.yaml", crops, checkpoint, encoders=encoders, fractions=[1.0])
    assert main(["eval", str(cfg), "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert "encoder 'imagenet'" in err and "optional: true" in err
    assert not (tmp_path / "p").exists()  # refused before any work
    # --print-config shows the benchmark schema; a bad key names the file and line
    assert main(["eval", str(cfg), "--print-config"]) == 0
    assert "encoders:" in capsys.readouterr().out
    assert main(["eval", str(cfg), "fractions=[0.5, 0.5]"]) == 2
    assert "fractions" in capsys.readouterr().err


def test_encoder_keywords_only_when_set(checkpoint: Path) -> None:
    assert encoder_keywords(EncoderEntry(name="a", backbone="resnet18")) == {}
    entry = EncoderEntry(name="a", backbone="resnet18", mean=[0.1, 0.2, 0.3], tile_mpp=0.5)
    assert encoder_keywords(entry) == {"mean": (0.1, 0.2, 0.3), "tile_mpp": 0.5}
    enc = load_entry(EncoderEntry(name="s", checkpoint=str(checkpoint)), 32, 0)
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    assert enc.name == "resnet18" and enc.tile_mpp == ckpt["meta"]["tile_mpp"]
    weights = enc.model.state_dict()["conv1.weight"]
    torch.testing.assert_close(weights, ckpt["trunk"]["conv1.weight"])


def test_nuclei_task_trains_a_frozen_head(checkpoint: Path, tmp_path: Path, data_dir: Path) -> None:
    """The nuclei task on hgsc_nest (512 px square trained, 256 px square held apart), 2 steps:
    the head's trunk equals the checkpoint's (frozen), 2 of the 4 label tiles at 50 %."""
    repo = Path(__file__).resolve().parents[1]
    cfg = {
        "encoders": [{"name": "tiny_simclr", "checkpoint": str(checkpoint)}],
        "tasks": [
            {
                "name": "hgsc_nuclei",
                "kind": "nuclei",
                "config": str(repo / "configs" / "nuclei" / "hgsc_resnet18_cpu.yaml"),
                "overrides": [
                    "data.train_region=[0, 0, 512, 512]",
                    "data.val_region=[512, 0, 256, 256]",
                    "train.max_steps=2",
                    f"data.image={data_dir / 'nuclei' / 'hgsc_nest.jpg'}",
                    f"data.inst={data_dir / 'nuclei' / 'hgsc_nest_inst_mask.npz'}",
                    f"data.types={data_dir / 'nuclei' / 'hgsc_nest_type_mask.npz'}",
                ],
            }
        ],
        "fractions": [0.5],
        "train": {"device": "cpu"},
    }
    (tmp_path / "n.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "o"
    assert main(["eval", str(tmp_path / "n.yaml"), "--out", str(out)]) == 0
    (cell,) = [json.loads(x) for x in (out / "cells.jsonl").read_text().splitlines()]
    assert cell["info"]["label_tiles"] == 2  # ceil(0.5 * 4)
    pq = cell["scores"]["frozen_head"]["pq"]
    assert pq is None or 0.0 <= pq <= 1.0
    head = torch.load(
        out / "runs" / "tiny_simclr" / "hgsc_nuclei" / "0.5_0" / "nuclei.pt",
        map_location="cpu",
        weights_only=False,
    )
    trunk = torch.load(checkpoint, map_location="cpu", weights_only=False)["trunk"]
    shared = [k for k in trunk if f"encoder.backbone.{k}" in head["model"]]
    assert "conv1.weight" in shared and "layer4.1.conv2.weight" in shared
    for k in shared:  # every trunk weight and BN statistic as the checkpoint has it
        torch.testing.assert_close(head["model"][f"encoder.backbone.{k}"], trunk[k], msg=k)


def test_fine_tune_cells_train_on_their_subset(
    crops: tuple[Path, Path], checkpoint: Path, tmp_path: Path
) -> None:
    """``protocols.finetune`` in a tile task: one fine-tune run per cell, on the cell's tiles
    (the stratified count), scored on every test tile; fraction 1 runs once per seed (seeded
    training)."""
    cfg = _config(
        tmp_path / "b.yaml",
        crops,
        checkpoint,
        encoders=[{"name": "random", "backbone": "resnet18"}],
        fractions=[0.5, 1.0],
        seeds=[0],
    )
    raw = yaml.safe_load(cfg.read_text())
    raw["tasks"][0]["protocols"] = {"finetune": {"epochs": 1, "batch_size": 16, "patience": None}}
    cfg.write_text(yaml.safe_dump(raw))
    out = tmp_path / "o"
    assert main(["eval", str(cfg), "--out", str(out)]) == 0
    cells = [json.loads(x) for x in (out / "cells.jsonl").read_text().splitlines()]
    assert [(c["fraction"], c["seed"]) for c in cells] == [(0.5, 0), (1.0, 0)]
    counts = _class_counts(crops[0])
    test_counts = _class_counts(crops[1])
    for c in cells:
        assert set(c["scores"]) == {"finetune"}
        assert 0.0 <= c["scores"]["finetune"]["balanced_accuracy"] <= 1.0
        assert c["info"]["n_test"] == sum(test_counts)
        assert c["info"]["n_train"] == sum(math.ceil(c["fraction"] * n) for n in counts)
        run = out / "runs" / "random" / "hgsc" / f"finetune_{c['fraction']:g}_0"
        assert (run / "best.pt").is_file() or (run / "last.pt").is_file()
    report = json.loads((out / "benchmark.json").read_text())
    assert {r["protocol"] for r in report["rows"]} == {"finetune"}
