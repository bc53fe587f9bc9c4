"""Online kNN evaluation while pretraining (``eval.*``): the logged score equals a kNN computed
independently from the saved checkpoints, ``best.pt`` holds the best logged step, resume keeps
the best, the probe never changes training, and a bad ``eval.knn`` fails before any work.

Labelled set: nucleus-centred crops of the real ``hgsc_nest.jpg`` (types from its mask), written
as ``pathssl eval``'s CSV layout (left half train, right half test), as the demo does; a tile
store + label CSV covers the store layout."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from test_train_methods import tiny_overrides

from pathssl.eval.online import KnnEvaluator
from pathssl.train import ConfigError, build_trainer, load_config, pretrain
from pathssl.train.logger import read_metrics

CLASSES = ["connective", "inflammatory", "neoplastic"]
K = 5


@pytest.fixture(scope="module")
def store(cmu_slide: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiling import tile_slides

    out = tmp_path_factory.mktemp("tiles")
    tile_slides([cmu_slide], out, mpp=0.5, size=224, progress=False, report=False)
    return out


@pytest.fixture(scope="module")
def knn_config(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``pathssl eval`` config naming crops of the top-left 480 px of hgsc_nest."""
    from pathssl.demo.knn import nucleus_crops, write_crops

    d = data_dir / "nuclei"
    image = np.asarray(Image.open(d / "hgsc_nest.jpg").convert("RGB"))
    inst = np.load(d / "hgsc_nest_inst_mask.npz")["nuc_raster"]
    types = np.load(d / "hgsc_nest_type_mask.npz")["nuc_raster"]
    r = 480
    crops, labels, centres = nucleus_crops(image[:r, :r], inst[:r, :r], types[:r, :r], 64)
    folder = tmp_path_factory.mktemp("knn") / "crops"
    train_csv, test_csv = write_crops(folder, crops, labels, centres, CLASSES, r // 2)
    cfg = folder.parent / "knn.yaml"
    cfg.write_text(
        f"data:\n  source: {{format: csv, csv: {train_csv}}}\n"
        f"  test: {{format: csv, csv: {test_csv}}}\n"
        f"  class_names: {CLASSES}\n  image_size: 64\n"
        "model: {backbone: resnet50}   # ignored by the online probe\n"
        f"protocols:\n  knn: {{k: {K}}}\n"
    )
    return cfg


def read_split(csv_path: Path) -> tuple[torch.Tensor, np.ndarray]:
    """``(N, 3, 64, 64)`` uint8 images (read with PIL) and ``(N,)`` class indices."""
    with open(csv_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    images = [np.asarray(Image.open(csv_path.parent / r["path"]).convert("RGB")) for r in rows]
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return x, np.array([CLASSES.index(r["label"]) for r in rows])


def naive_knn_top1(
    train_f: np.ndarray, train_y: np.ndarray, test_f: np.ndarray, test_y: np.ndarray, k: int
) -> float:
    """Centred, L2-normalised features, cosine similarity, majority vote of the k nearest
    (ties: the larger summed similarity), one test item at a time in float64."""
    mean = train_f.mean(axis=0)
    tr = train_f - mean
    tr /= np.linalg.norm(tr, axis=1, keepdims=True)
    te = test_f - mean
    te /= np.linalg.norm(te, axis=1, keepdims=True)
    correct = 0
    for q, truth in zip(te, test_y, strict=True):
        sim = tr @ q
        nearest = sorted(range(len(sim)), key=lambda j: -sim[j])[:k]
        votes = {c: (0, 0.0) for c in range(len(CLASSES))}
        for j in nearest:
            n, s = votes[int(train_y[j])]
            votes[int(train_y[j])] = (n + 1, s + float(sim[j]))
        pred = max(votes, key=lambda c: votes[c])
        correct += int(pred == truth)
    return correct / len(test_y)


def checkpoint_top1(path: Path, knn_config: Path) -> float:
    """kNN top-1 of the trunk saved in ``path``, in plain torchvision (no pathssl code)."""
    import torchvision

    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    model = torchvision.models.resnet18()
    model.load_state_dict(ckpt["trunk"], strict=False)
    model.fc = torch.nn.Identity()
    model.eval()
    mean = torch.tensor(ckpt["meta"]["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(ckpt["meta"]["std"]).view(1, 3, 1, 1)
    folder = knn_config.parent / "crops"
    feats = {}
    with torch.no_grad():
        for side in ("train", "test"):
            x, y = read_split(folder / f"{side}.csv")
            feats[side] = (model((x.float() / 255 - mean) / std).double().numpy(), y)
    return naive_knn_top1(*feats["train"], *feats["test"], K)


def overrides(store: Path, out: Path, steps: int, *extra: str) -> list[str]:
    return [*tiny_overrides("simclr", store, out, steps=steps), *extra]


def knn_probe_of(cfg_path: Path) -> KnnEvaluator:
    from pathssl.eval.online import knn_evaluator

    return knn_evaluator(cfg_path, backbone="resnet18", log=None)


def val_rows(out: Path) -> list[dict[str, Any]]:
    return [r for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "val"]


def test_logged_knn_equals_an_independent_knn_of_the_saved_checkpoints(
    store: Path, knn_config: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    cfg = load_config(None, overrides(store, out, 4, f"eval.knn={knn_config}", "eval.every=2"))
    trainer = pretrain(cfg, knn_probe_of(knn_config))
    rows = val_rows(out)
    assert [r["step"] for r in rows] == [2, 4]
    scores = [float(r["knn_top1"]) for r in rows]
    best_step = rows[int(np.argmax(scores))]["step"]  # the first maximum: ties do not improve
    best = torch.load(out / "best.pt", weights_only=True)
    assert best["step"] == best_step == trainer.best_step
    assert best["scores"]["knn_top1"] == max(scores) == trainer.best
    # the scores logged equal a kNN of the saved trunks' features, computed independently
    assert checkpoint_top1(out / "last.pt", knn_config) == pytest.approx(scores[-1], abs=1e-12)
    assert checkpoint_top1(out / "best.pt", knn_config) == pytest.approx(max(scores), abs=1e-12)
    # and evaluating (eval mode, no grad) never changes the training run
    plain = build_trainer(load_config(None, overrides(store, tmp_path / "plain", 4)))
    plain.fit()
    a = torch.load(out / "last.pt", weights_only=True)["method"]
    b = torch.load(tmp_path / "plain" / "last.pt", weights_only=True)["method"]
    assert all(torch.equal(a[key], b[key]) for key in a)


class Scripted:
    """An evaluator (the generic hook) with set scores; it embeds real crops each time."""

    monitor = "score"

    def __init__(self, scores: list[float], images: torch.Tensor) -> None:
        self.scores, self.images = iter(scores), images
        self.mpp: float | None = None

    def prepare(self, tile_mpp: float | None) -> None:
        self.mpp = tile_mpp

    def __call__(self, features: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, float]:
        f = features(self.images)
        assert f.shape == (len(self.images), 512) and f.dtype == torch.float32
        return {"score": next(self.scores)}


def test_resume_keeps_the_best(store: Path, knn_config: Path, tmp_path: Path) -> None:
    images = read_split(knn_config.parent / "crops" / "test.csv")[0][:8]
    out = tmp_path / "run"
    first = Scripted([0.5, 0.9], images)
    trainer = pretrain(load_config(None, overrides(store, out, 4, "eval.every=2")), first)
    assert first.mpp == pytest.approx(0.499, abs=0.01)  # prepared with the tiles' mpp
    kept = torch.load(out / "best.pt", weights_only=True)
    assert kept["step"] == 4 and trainer.best == 0.9
    # resumed with worse scores: best.pt stays the step-4 weights
    again = pretrain(
        load_config(None, overrides(store, out, 8, "eval.every=2")),
        Scripted([0.3, 0.4], images),
    )
    assert (again.best, again.best_step) == (0.9, 4)
    best = torch.load(out / "best.pt", weights_only=True)
    assert best["step"] == 4
    assert all(torch.equal(best["trunk"][k], kept["trunk"][k]) for k in kept["trunk"])
    rows = val_rows(out)
    assert [(r["step"], r["score"], r["best"]) for r in rows] == [
        (2, 0.5, 0.5),
        (4, 0.9, 0.9),
        (6, 0.3, 0.9),
        (8, 0.4, 0.9),
    ]
    # select_best false: the scores are logged, no best.pt
    off = tmp_path / "off"
    cfg = load_config(None, overrides(store, off, 2, "eval.every=1", "eval.select_best=false"))
    pretrain(cfg, Scripted([0.1, 0.2], images))
    assert [r["score"] for r in val_rows(off)] == [0.1, 0.2] and not (off / "best.pt").exists()


def test_the_probed_network_is_the_one_checkpoints_keep() -> None:
    from pathssl.train.build import build_method, build_views
    from pathssl.train.online import probed_network

    for method, phrase in (("dino", "EMA teacher"), ("byol", "online"), ("moco_v2", "online")):
        cfg = load_config(None, tiny_overrides(method, Path("unused"), Path("unused")))
        m = build_method(cfg, build_views(cfg))
        trunk, what = probed_network(m)
        assert phrase in what
        expected = m.teacher[0] if method == "dino" else m.backbone  # type: ignore[index]
        assert trunk is expected and trunk is m.export_backbone()


def test_a_bad_eval_knn_fails_before_any_work(
    store: Path, knn_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pathssl.cli import main

    empty = tmp_path / "empty.yaml"
    empty.write_text("{}\n")
    out = tmp_path / "run"
    missing_cfg = tmp_path / "nope.yaml"
    assert main(["pretrain", str(empty), *overrides(store, out, 2, f"eval.knn={missing_cfg}")]) == 2
    err = capsys.readouterr().err
    assert "eval.knn" in err and str(missing_cfg) in err and "\n" not in err.strip()
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"data:\n  source: {{format: folder, root: {tmp_path / 'no_such_folder'}}}\n")
    assert main(["pretrain", str(empty), *overrides(store, out, 2, f"eval.knn={bad}")]) == 2
    err = capsys.readouterr().err
    assert "eval.knn" in err and "no_such_folder" in err
    assert not out.exists()  # nothing written
    with pytest.raises(ConfigError, match=r"eval\.knn is set .* evaluator"):
        build_trainer(load_config(None, overrides(store, out, 2, f"eval.knn={knn_config}")))
    with pytest.raises(ConfigError, match=r"eval\.every must be >= 1"):
        load_config(None, ["eval.every=0"])


def test_store_layout_and_max_images(store: Path, tmp_path: Path) -> None:
    """A tile store + index,label CSV; ``max_images`` keeps a seeded subset of each side."""
    from pathssl.eval.online import knn_evaluator
    from tiling import open_store

    path = next(store.glob("*.zarr"))
    tiles = open_store(path)
    tissue = np.asarray(tiles.qc["tissue"])
    labels = tmp_path / "labels.csv"
    median = float(np.median(tissue))
    rows = [f"{i},{'dense' if t >= median else 'sparse'}" for i, t in enumerate(tissue)]
    labels.write_text("index,label\n" + "\n".join(rows) + "\n")
    cfg = tmp_path / "store.yaml"
    cfg.write_text(
        f"data:\n  source: {{format: store, store: {path}, labels: {labels}}}\n"
        "  test_fraction: 0.5\n  image_size: 32\n"
    )
    full = knn_evaluator(cfg, backbone="resnet18", log=None)
    assert len(full.train) + len(full.test) == len(tissue) and full.k == 20
    small = knn_evaluator(cfg, backbone="resnet18", k=3, max_images=20, log=None)
    assert (len(small.train), len(small.test)) == (10, 10) and small.k == 3
    assert set(small.train.sources) <= set(full.train.sources)
    assert set(small.test.sources) <= set(full.test.sources)
    again = knn_evaluator(cfg, backbone="resnet18", max_images=20, log=None)
    assert list(again.test.sources) == list(small.test.sources)  # seeded
    small.prepare(tiles.mpp)
    x = small.images["test"]
    assert x.shape == (10, 3, 32, 32) and x.dtype == torch.uint8
    # a tile read as the probe reads it: the stored tile, shrunk to 32 px
    import cv2

    i = small.test.sources[0]
    assert isinstance(i, int)
    ref = cv2.resize(np.asarray(tiles[i]), (32, 32), interpolation=cv2.INTER_AREA)
    assert np.array_equal(x[0].permute(1, 2, 0).numpy(), ref)
