"""BiT-HyperRule: the rule against the paper's table (Kolesnikov et al. 2020, section 3.3) and
the public bit_hyperrule.py, the learning-rate curve against the training loop's own schedule,
BiT's crop against resize-then-crop, and a short fine-tuning run on the real QC tiles."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pathssl.eval import data as D
from pathssl.eval.hyperrule import (
    fine_tune_hyperrule,
    hyperrule,
    hyperrule_scores,
    lr_at,
    mixup_alpha,
    resolution,
    scaled_lr,
    schedule,
)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.mark.parametrize(
    ("n", "steps", "warmup", "decays", "alpha"),
    [  # the paper: < 20k examples 500 steps, < 500k 10k, more 20k; MixUp only from 20k on
        (1, 500, 100, (150, 300, 450), 0.0),
        (1_000, 500, 100, (150, 300, 450), 0.0),  # VTAB-1k
        (19_999, 500, 100, (150, 300, 450), 0.0),
        (20_000, 10_000, 500, (3_000, 6_000, 9_000), 0.1),
        (50_000, 10_000, 500, (3_000, 6_000, 9_000), 0.1),  # CIFAR-10
        (499_999, 10_000, 500, (3_000, 6_000, 9_000), 0.1),
        (500_000, 20_000, 500, (6_000, 12_000, 18_000), 0.1),
        (1_281_167, 20_000, 500, (6_000, 12_000, 18_000), 0.1),  # ImageNet-1k
    ],
)
def test_schedule_and_mixup_follow_the_paper(
    n: int, steps: int, warmup: int, decays: tuple[int, ...], alpha: float
) -> None:
    assert schedule(n) == (steps, warmup, decays)
    assert mixup_alpha(n) == alpha
    rule = hyperrule(n, 224)
    assert (rule.steps, rule.warmup_steps, rule.milestones) == (steps, warmup, decays)
    assert rule.lr == 0.003 and rule.batch_size == 512 and rule.momentum == 0.9
    assert rule.mixup_alpha == alpha


def test_large_schedules_equal_the_public_code() -> None:
    """bit_hyperrule.get_schedule's supports [warm-up, decay, decay, decay, end] (the public
    code; its 500-step schedule decays at 40/60/80 %, the paper's at 30/60/90 %: we follow the
    paper there)."""
    public = {50_000: [500, 3000, 6000, 9000, 10_000], 600_000: [500, 6000, 12_000, 18_000, 20_000]}
    for n, supports in public.items():
        total, warmup, decays = schedule(n)
        assert [warmup, *decays, total] == supports
    assert schedule(100)[1] == 100  # the public 500-step warm-up


def test_shorter_schedules_keep_the_shape() -> None:
    assert schedule(1_000, steps=50) == (50, 10, (15, 30, 45))
    assert schedule(100_000, steps=1_000) == (1_000, 50, (300, 600, 900))
    assert schedule(10, steps=2) == (2, 1, (1, 1, 2))  # every milestone at least step 1
    with pytest.raises(ValueError, match="at least one labelled example"):
        schedule(0)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        schedule(10, steps=0)


def test_resolution_translation() -> None:
    assert resolution(32) == (160, 128, 128)  # CIFAR-size: the paper's 160 -> 128
    assert resolution(95) == (160, 128, 128)  # under 96 x 96 pixels
    assert resolution(96) == (None, 82, None)  # tiles: not resized, crops of 384/448
    assert resolution(224) == (None, 192, None)
    assert resolution(448) == (None, 384, None)  # the paper's crop of a 448 px image


def test_linear_lr_scaling() -> None:
    assert scaled_lr(512) == pytest.approx(0.003)
    assert scaled_lr(64) == pytest.approx(0.003 / 8)
    assert hyperrule(1_000, 224, batch_size=32).lr == pytest.approx(0.003 * 32 / 512)


def test_lr_curve_equals_the_training_loops_schedule() -> None:
    """lr_at (the rule, pure) against the optimiser's rate under the loop's own step schedule
    (pathssl.train.assemble.build_optimization), and a few values by hand."""
    from pathssl.train.assemble import build_optimization
    from pathssl.train.config import OptimConfig

    rule = hyperrule(1_000, 224)
    o = OptimConfig(
        name="sgd", lr=rule.lr, lr_scaling="none", weight_decay=0.0, momentum=0.9,
        warmup_steps=rule.warmup_steps, schedule="step", milestones=list(rule.milestones),
    )  # fmt: skip
    p = torch.nn.Parameter(torch.zeros(1))
    opt, sched = build_optimization([{"params": [p]}], o, rule.steps)
    got = []
    for _ in range(rule.steps):
        got.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    want = [lr_at(rule, s) for s in range(rule.steps)]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    lr = 0.003
    for step, value in [(0, lr / 100), (99, lr), (149, lr), (150, lr / 10), (300, lr / 100)]:
        assert lr_at(rule, step) == pytest.approx(value)
    assert lr_at(rule, 499) == pytest.approx(lr / 1000)


def test_bit_crop_is_resize_then_crop() -> None:
    from pathssl.eval.finetune import BatchBiTCrop

    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.integers(0, 256, (3, 3, 32, 32), dtype=np.uint8))
    g = torch.Generator().manual_seed(0)
    small = BatchBiTCrop(160, 128)(x, g)
    assert small.shape == (3, 3, 128, 128) and small.dtype == torch.uint8
    big = F.interpolate(x.float(), (160, 160), mode="bilinear", align_corners=False)
    for i in range(3):  # each crop is a window of the 160 px resize (best offset within 1 level)
        err = min(
            (small[i].float() - big[i, :, y : y + 128, x0 : x0 + 128]).abs().max().item()
            for y in range(33)
            for x0 in range(33)
        )
        assert err <= 1.0
    y = torch.from_numpy(rng.integers(0, 256, (4, 3, 40, 40), dtype=np.uint8))
    exact = BatchBiTCrop(None, 34)(y, g)  # no resize: exact pixel windows
    for i in range(4):
        assert any(
            torch.equal(exact[i], y[i, :, a : a + 34, b : b + 34])
            for a in range(7)
            for b in range(7)
        )


def _qc_folder(data_dir: Path, root: Path) -> Path:
    qc = data_dir / "tiles" / "qc"
    with open(qc / "labels.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            dest = root / row["tissue"]
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy(qc / row["file"], dest / row["file"])
    return root


def test_fine_tune_hyperrule_through_the_loop(data_dir: Path, tmp_path: Path) -> None:
    """The 34 real QC tiles at 32 px (under 96: 160 -> 128 crops, tested at 128) on a ResNet-v2
    trunk, a 20-step schedule of the rule's shape: the loop logs the rule's rates, the head
    starts at zero, every weight trains, the classifier predicts 32 px tiles."""
    from pathssl.eval.encoder import load_encoder
    from pathssl.eval.finetune import ClassifierModule, predict
    from pathssl.train.logger import read_metrics

    tiles = D.image_folder(_qc_folder(data_dir, tmp_path / "folder"))
    ds = D.TileImages(tiles, size=32)
    encoder = load_encoder("resnetv2_tiny", seed=0)
    head0 = ClassifierModule(encoder, 3, zero_head=True).head
    assert not head0.weight.any() and not head0.bias.any()
    before = {k: v.clone() for k, v in encoder.model.state_dict().items()}
    res, rule = fine_tune_hyperrule(
        encoder, ds, tiles.labels, 3, tmp_path / "run", image_size=32, batch_size=8, steps=20,
        progress=False,
    )  # fmt: skip
    assert (rule.steps, rule.warmup_steps, rule.milestones) == (20, 4, (6, 12, 18))
    assert (rule.resize, rule.crop, rule.test_size, rule.mixup_alpha) == (160, 128, 128, 0.0)
    assert rule.lr == pytest.approx(0.003 * 8 / 512) and res.steps_run == 20
    logged = {r["step"]: r["lr"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")}
    assert sorted(logged) == list(range(2, 21, 2))
    for step, lr in logged.items():  # the rate used by the step just logged (0-based step - 1)
        assert lr == pytest.approx(lr_at(rule, step - 1), rel=1e-9)
    after = res.classifier.trunk.state_dict()
    # the trunk trains too (its gradient is 0 at step 0 only, the head being zero); GN scales
    # start at 1.0, where this small rate's updates (~1e-8) are under float32's resolution
    convs = [k for k in before if k.endswith("conv.weight") or ".conv" in k]
    assert len(convs) == 17 and all(not torch.equal(before[k], after[k]) for k in convs)
    assert res.classifier.head.weight.abs().sum() > 0 and res.classifier.input_size == 128
    out, labels = predict(res.classifier, ds)
    assert out.proba.shape == (34, 3) and labels.tolist() == tiles.labels.tolist()
    np.testing.assert_allclose(out.proba.sum(1), 1.0, rtol=1e-9)


def test_hyperrule_scores_reports_the_rule(data_dir: Path, tmp_path: Path) -> None:
    """The pathssl-eval entry: test metrics, the run's summary and the settings used; a
    dataset size of 20k switches MixUp on (and the 10k-step regime's warm-up fraction); the
    caller's encoder is not changed."""
    from pathssl.eval.encoder import load_encoder

    tiles = D.image_folder(_qc_folder(data_dir, tmp_path / "folder"))
    ds = D.TileImages(tiles, size=32)
    encoder = load_encoder("resnetv2_tiny")
    before = {k: v.clone() for k, v in encoder.model.state_dict().items()}
    res = hyperrule_scores(
        encoder, ds, tiles.labels, ds, 3, tmp_path / "run",
        image_size=32, batch_size=8, base_lr=0.003, steps=4, dataset_size=20_000, mixup=None,
        hed_jitter=0.0, val_fraction=0.0, eval_batch_size=16, precision="fp32", device="cpu",
        seed=0, progress=False,
    )  # fmt: skip
    assert res["hyperrule"]["mixup_alpha"] == 0.1 and res["hyperrule"]["steps"] == 4
    assert res["hyperrule"]["warmup_steps"] == 1 and res["steps_run"] == 4
    assert 0.0 <= res["balanced_accuracy"] <= 1.0 and len(res["confusion_matrix"]) == 3
    for k, v in encoder.model.state_dict().items():  # a copy was trained
        assert torch.equal(v, before[k]), k


def test_pathssl_eval_runs_the_bit_hyperrule_protocol(tmp_path: Path) -> None:
    """``protocols.bit_hyperrule`` in a ``pathssl eval`` config: the command fine-tunes with the
    rule (its settings recorded), scores the test tiles and leaves the frozen protocols' encoder
    as it was (the linear probe equals a run without the protocol)."""
    from pathssl.commands.eval import evaluate
    from pathssl.eval.config import load_config

    cfg_file = Path(__file__).resolve().parents[1] / "configs/eval/qc_tissue_resnet18.yaml"
    ov = ["protocols.fewshot=null", "protocols.knn=null", "train.device=cpu"]
    plain = evaluate(load_config(cfg_file, ov), out_dir=tmp_path / "plain")
    hr = ["protocols.bit_hyperrule={steps: 4, batch_size: 8}"]
    got = evaluate(load_config(cfg_file, ov + hr), out_dir=tmp_path / "hr")
    res = got["protocols"]["bit_hyperrule"]
    assert 0.0 <= res["balanced_accuracy"] <= 1.0
    assert (tmp_path / "hr" / "bit_hyperrule").is_dir() and "bit_hyperrule" not in plain[
        "protocols"
    ]
    assert (
        plain["protocols"]["linear"]["balanced_accuracy"]
        == got["protocols"]["linear"]["balanced_accuracy"]
    )
