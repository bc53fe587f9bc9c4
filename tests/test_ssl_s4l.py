"""S4L (Zhai et al. 2019: S4L-Rotation, S4L-Exemplar) and ``supervised``: each loss against a
naive per-image reference, the seeded stratified labelled fraction against hand counts, the
labelled stream through the real loop on real nucleus crops, and exact resume of both streams."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_train_methods import build_tiny, csv_source, tiny_overrides, write_hgsc_crops

from pathssl.models import build_backbone
from pathssl.ssl.base import LabelledBatch
from pathssl.ssl.s4l import S4LExemplar, S4LRotation, batch_hard_triplet
from pathssl.ssl.supervised import Supervised
from pathssl.train import load_checkpoint, load_config
from pathssl.train.assemble import start
from pathssl.train.config import ConfigError
from pathssl.train.logger import read_metrics


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def store(cmu_slide: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiling import tile_slides

    out = tmp_path_factory.mktemp("tiles")
    tile_slides([cmu_slide], out, mpp=0.5, size=224, progress=False, report=False)
    return out


@pytest.fixture(scope="module")
def train_csv(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_hgsc_crops(data_dir, tmp_path_factory.mktemp("crops") / "hgsc")


def naive_triplet(z: torch.Tensor, ids: list[int], margin: float) -> float:
    """Batch-hard soft-margin triplet loss, one anchor at a time, in float64."""
    z64 = z.double()
    total = 0.0
    for a in range(len(ids)):
        d = [float(torch.sqrt(((z64[a] - z64[b]) ** 2).sum())) for b in range(len(ids))]
        pos = max(d[b] for b in range(len(ids)) if ids[b] == ids[a] and b != a)
        neg = min(d[b] for b in range(len(ids)) if ids[b] != ids[a])
        total += float(np.log1p(np.exp(pos + margin - neg)))
    return total / len(ids)


@pytest.mark.parametrize("margin", [0.0, 0.3])
def test_batch_hard_triplet_matches_a_loop(margin: float) -> None:
    z = F.normalize(torch.randn(12, 6), dim=1)
    ids = [0, 1, 2, 3] * 3
    got = float(batch_hard_triplet(z, torch.tensor(ids), margin))
    assert got == pytest.approx(naive_triplet(z, ids, margin), rel=1e-5)


def one(method: Any, x: torch.Tensor) -> torch.Tensor:
    """Pooled features of one image ``(3, s, s)`` (eval mode: no batch statistics)."""
    return method.backbone(x[None])[0]  # type: ignore[no-any-return]


def ce(logits: torch.Tensor, label: int) -> float:
    return float(F.cross_entropy(logits[None], torch.tensor([label])))


@pytest.mark.parametrize("on_labelled", [True, False])
def test_s4l_rotation_loss_matches_per_image_reference(on_labelled: bool) -> None:
    m = S4LRotation(
        build_backbone("resnet18"), num_classes=3, weight=0.7, ssl_on_labelled=on_labelled
    ).eval()
    xu, xl, y = torch.randn(3, 3, 32, 32), torch.randn(2, 3, 32, 32), [2, 0]
    with torch.no_grad():
        got = m([xu], labelled=LabelledBatch([xl], torch.tensor(y)))
        rot = {"u": [], "l": []}
        cls = []
        for side, x in (("u", xu), ("l", xl)):
            for i in range(len(x)):
                for k in range(4):
                    h = one(m, torch.rot90(x[i], k, dims=(-2, -1)))
                    rot[side].append(ce(m.rotation_head(h[None])[0], k))
                    if side == "l":
                        cls.append(ce(m.classifier(h), y[i]))
    loss_rot = (np.mean(rot["u"]) + np.mean(rot["l"])) / 2 if on_labelled else np.mean(rot["u"])
    assert float(got["loss_self"]) == pytest.approx(loss_rot, rel=1e-4)
    assert float(got["loss_classification"]) == pytest.approx(np.mean(cls), rel=1e-4)
    assert float(got["loss"]) == pytest.approx(np.mean(cls) + 0.7 * loss_rot, rel=1e-4)


def test_s4l_exemplar_loss_matches_per_image_reference() -> None:
    m = S4LExemplar(
        build_backbone("resnet18"), num_classes=3, weight=0.5, triplet_dim=8, n_local_views=1
    ).eval()
    vu = [torch.randn(3, 3, 32, 32) for _ in range(3)]
    vl = [torch.randn(2, 3, 32, 32) for _ in range(3)]
    y = [1, 2]
    with torch.no_grad():
        got = m(vu, labelled=LabelledBatch(vl, torch.tensor(y)))

        def embed(views: list[torch.Tensor]) -> tuple[torch.Tensor, list[int]]:
            z = [
                F.normalize(m.embedding(one(m, v[i])), dim=0) for v in views for i in range(len(v))
            ]
            return torch.stack(z), [i for v in views for i in range(len(v))]

        tri = [naive_triplet(*embed(vu), 0.0), naive_triplet(*embed(vl), 0.0)]
        cls = [ce(m.classifier(one(m, v[i])), y[i]) for v in vl for i in range(2)]
    ref = np.mean(cls) + 0.5 * np.mean(tri)
    assert float(got["loss_self"]) == pytest.approx(np.mean(tri), rel=1e-4)
    assert float(got["loss"]) == pytest.approx(ref, rel=1e-4)


def test_supervised_loss_is_cross_entropy_of_each_image() -> None:
    m = Supervised(build_backbone("resnet18"), num_classes=4).eval()
    x, y = torch.randn(3, 3, 32, 32), [3, 0, 1]
    with torch.no_grad():
        got = m([x], labelled=LabelledBatch([x], torch.tensor(y)))
        ref = np.mean([ce(m.classifier(one(m, x[i])), y[i]) for i in range(3)])
    assert float(got["loss"]) == pytest.approx(ref, rel=1e-4)


def test_labelled_stream_gives_the_kept_crops_with_their_labels(
    store: Path, train_csv: Path, tmp_path: Path
) -> None:
    """The real nucleus crops: a quarter of each class kept (hand count from the CSV), every
    labelled batch made of kept crops with their own labels, the two streams paired."""
    import csv

    from pathssl.train.streams import PairedLoader

    with open(train_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    names = sorted({r["label"] for r in rows})
    per_class = [sum(r["label"] == c for r in rows) for c in names]
    trainer = build_tiny(
        "s4l_rotation", tiny_overrides("s4l_rotation", store, tmp_path), csv_source(train_csv)
    )
    meta = trainer.meta["labelled"]
    assert meta["class_names"] == names and meta["images"] == len(rows)
    # the sweep's rule (pathssl.data.sweep): ceil(fraction * n), at least one per class
    assert meta["kept_per_class"] == [max(1, -(-n // 4)) for n in per_class]
    assert isinstance(trainer.loader, PairedLoader)
    labelled_ds = trainer.loader.second.dataset
    kept = {
        bytes(labelled_ds[i]["image"].numpy().tobytes()): labelled_ds[i]["label"]
        for i in range(len(labelled_ds))
    }
    assert len(kept) == meta["kept"]
    for _, (tiles, lab) in zip(range(3), trainer.loader, strict=False):
        assert tiles["image"].shape[0] == 4 and lab["image"].shape == (4, 3, 64, 64)
        for img, label in zip(lab["image"], lab["label"], strict=True):
            assert kept[bytes(img.numpy().tobytes())] == int(label)


def test_supervised_reads_only_the_labelled_stream(
    store: Path, train_csv: Path, tmp_path: Path
) -> None:
    ov = [*tiny_overrides("supervised", store, tmp_path), "data.labelled.batch_size=6"]
    trainer = build_tiny("supervised", ov, csv_source(train_csv))
    assert isinstance(trainer.loader, torch.utils.data.DataLoader)
    assert trainer.batch_size == 6 and set(next(iter(trainer.loader))) == {"image", "label"}


def test_labels_are_required_and_refused_where_they_belong(
    store: Path, train_csv: Path, tmp_path: Path
) -> None:
    from pathssl.train import build_trainer

    source = csv_source(train_csv)
    with pytest.raises(ConfigError, match="data.labelled.config"):
        build_trainer(load_config(None, tiny_overrides("s4l_rotation", store, tmp_path)))
    with pytest.raises(ConfigError, match="uses no labels"):
        build_trainer(
            load_config(None, tiny_overrides("rotation", store, tmp_path)), labelled=source
        )
    ov = [*tiny_overrides("supervised", store, tmp_path), "method.params={num_classes: 5}"]
    with pytest.raises(ConfigError, match="differs from the 3 classes"):
        build_tiny("supervised", ov, source)


def resumed_equals_uninterrupted(
    method: str, overrides: list[str], labelled: Any, tmp: Path, total: int = 4, cut: int = 2
) -> None:
    """``total`` steps straight vs ``cut`` steps, a checkpoint, a rebuild (as a new process
    would) and the rest: bitwise the same weights, buffers, sampler state (both streams) and
    logged losses."""

    def ov(out: str) -> list[str]:
        swap = {
            "train.out_dir": f"train.out_dir={tmp / out}",
            "train.max_steps": f"train.max_steps={total}",
        }
        return [swap.get(o.split("=")[0], o) for o in overrides]

    straight = build_tiny(method, ov("straight"), labelled)
    straight.fit()
    first = build_tiny(method, ov("resumed"), labelled)
    first.method.train()
    batches = iter(first.loader)
    for _ in range(cut):
        assert first.train_step(next(batches))[0]
        first.step += 1
    first.save()
    second = build_tiny(method, ov("resumed"), labelled)
    assert start(second, load_config(None, ov("resumed")).train)
    assert second.step == cut
    second.fit()
    a, b = (
        load_checkpoint(tmp / "straight" / "last.pt"),
        load_checkpoint(tmp / "resumed" / "last.pt"),
    )
    assert a["step"] == b["step"] == total and a["sampler"] == b["sampler"]
    for k in a["method"]:
        assert torch.equal(a["method"][k], b["method"][k]), f"{k} differs after resume"

    def losses(out: str) -> dict[int, float]:
        rows = read_metrics(tmp / out / "metrics.jsonl")
        return {r["step"]: r["loss"] for r in rows if r["kind"] == "train" and r["step"] > cut}

    assert losses("straight") == losses("resumed")


@pytest.mark.parametrize("method", ["s4l_rotation", "supervised"])
def test_resume_is_exact_with_the_labelled_stream(
    method: str, store: Path, train_csv: Path, tmp_path: Path
) -> None:
    resumed_equals_uninterrupted(
        method,
        tiny_overrides(method, store, tmp_path, steps=3),
        csv_source(train_csv),
        tmp_path,
        total=3,
    )


def test_pretrain_command_reads_the_labelled_eval_config(
    data_dir: Path, store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``pathssl pretrain supervised.yaml data.labelled.config=EVAL`` trains on the training
    side of the eval config: the checkpoint records exactly those images' classes and count."""
    from test_train_methods import crops_eval_config

    from pathssl.cli import main
    from pathssl.eval.data import csv_images

    train_csv = write_hgsc_crops(data_dir, tmp_path / "crops" / "hgsc")
    cfg = crops_eval_config(train_csv)
    out = tmp_path / "run"
    ov = [o for o in tiny_overrides("supervised", store, out) if not o.startswith("method.name")]
    ov.append("data.labelled.fraction=1.0")
    rc = main(["pretrain", "configs/pretrain/supervised.yaml", *ov, f"data.labelled.config={cfg}"])
    assert rc == 0, capsys.readouterr().err
    meta = load_checkpoint(out / "last.pt")["meta"]["labelled"]
    want = csv_images(train_csv)
    assert meta["class_names"] == want.class_names
    assert meta["kept"] == len(want.labels)
    # a config whose images are missing is refused before any compute, naming the key
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"data: {{source: {{format: csv, csv: {tmp_path / 'none.csv'}}}}}\n")
    rc = main(["pretrain", "configs/pretrain/supervised.yaml", *ov, f"data.labelled.config={bad}"])
    assert rc == 2
    assert "data.labelled.config" in capsys.readouterr().err
