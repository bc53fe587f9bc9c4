"""The one training assembly (:mod:`pathssl.train.assemble`): per-group learning rates, the
weight-decay and step-decay schedules, MixUp, two data streams, runs in stages, and the checks it
makes before any compute (output folder, damaged or foreign ``last.pt``, checkpoint kinds)."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from pathssl.data import ResumableSampler
from pathssl.models.pretrained import CheckpointError, checkpoint_kind
from pathssl.train.assemble import (
    assemble,
    build_optimization,
    check_out_dir,
    check_previous_run,
    load_previous_stage,
    start,
)
from pathssl.train.checkpoint import load_checkpoint, save_checkpoint
from pathssl.train.config import ConfigError, LoopConfig, OptimConfig
from pathssl.train.loop import Trainer
from pathssl.train.steps import MixUpStep, PairedStep, SupervisedStep
from pathssl.train.streams import PairedLoader, PairedSampler

CPU = torch.device("cpu")


class Tiny(nn.Module):
    """``w * mean(image)``: records the first pixel of every image it sees."""

    def __init__(self, extra: bool = False) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.linspace(1.0, 2.0, 3))
        self.b = nn.Parameter(torch.zeros(1))
        if extra:
            self.head = nn.Linear(3, 2)
        self.seen: list[list[float]] = []

    def forward(self, images: Tensor, targets: dict[str, Tensor]) -> dict[str, Tensor]:
        self.seen.append(images[:, 0].tolist())
        x = images.float().mean(dim=1, keepdim=True)
        return {"loss": ((self.w * x + self.b - 1.0) ** 2).mean()}


class Items(torch.utils.data.Dataset[dict[str, Tensor]]):
    def __init__(self, n: int, offset: int = 0) -> None:
        self.n, self.offset = n, offset

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"image": torch.full((3,), float(self.offset + i))}


def loader(n: int, batch: int, offset: int = 0, seed: int = 0) -> tuple[Any, ResumableSampler]:
    sampler = ResumableSampler(np.zeros(n, np.int64), seed=seed)
    return DataLoader(Items(n, offset), batch_size=batch, sampler=sampler), sampler


def groups(module: nn.Module) -> list[dict[str, Any]]:
    """The SSL layout: weights with decay, then biases without."""
    return [
        {"params": [p for n, p in module.named_parameters() if n != "b"]},
        {"params": [module.b], "weight_decay": 0.0},
    ]


def tiny_trainer(out: Path, module: Tiny, t: LoopConfig, o: OptimConfig | None = None) -> Trainer:
    data, sampler = loader(10, 2)
    return assemble(
        module,
        groups(module),
        data,
        sampler,
        SupervisedStep(CPU),
        optim=o or OptimConfig(name="sgd", lr=0.1, lr_scaling="none"),
        train=t,
        device=CPU,
        meta={"kind": "tiny", "backbone": "w"},
    )


def loop(out: Path, steps: int = 4, **kw: Any) -> LoopConfig:
    base = {"max_steps": steps, "out_dir": str(out), "ckpt_every": 2, "log_every": 1}
    return LoopConfig(**{**base, "progress": False, "device": "cpu", **kw})


# ------------------------------------------------------------------------ optimiser + schedule
def test_per_group_learning_rates() -> None:
    """Barlow Twins' layout: biases at 0.024 x the weights' rate; or an explicit rate."""
    m = Tiny()
    o = OptimConfig(name="sgd", lr=0.2, warmup_steps=2, groups={"no_decay": {"lr_scale": 0.024}})
    opt, sched = build_optimization(groups(m), o, max_steps=10)
    lrs = []
    for _ in range(3):
        lrs.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    assert [g["name"] for g in opt.param_groups] == ["decay", "no_decay"]
    assert lrs[0] + lrs[1] == pytest.approx([0.1, 0.1 * 0.024, 0.2, 0.2 * 0.024])
    assert lrs[2][1] / lrs[2][0] == pytest.approx(0.024)  # the cosine scales both alike
    o = OptimConfig(name="sgd", lr=0.2, groups={"no_decay": {"lr": 0.5, "weight_decay": 0.3}})
    opt, _ = build_optimization(groups(m), o, max_steps=10)
    assert [(g["lr"], g["weight_decay"]) for g in opt.param_groups] == [(0.2, 1e-6), (0.5, 0.3)]
    with pytest.raises(ValueError, match=r"optim\.groups\.bias: no parameter group named"):
        build_optimization(groups(m), OptimConfig(groups={"bias": {"lr": 0.1}}), 10)
    with pytest.raises(ConfigError, match=r"unknown config key 'optim\.groups\.no_decay\.lrr'"):
        OptimConfig(groups={"no_decay": {"lrr": 0.1}}).check()


def test_step_decay_schedule_with_warmup() -> None:
    m = Tiny()
    o = OptimConfig(
        name="sgd", lr=1.0, schedule="step", warmup_steps=2, milestones=[4, 6], gamma=0.1
    )
    opt, sched = build_optimization(groups(m), o, max_steps=10)
    lrs = []
    for _ in range(8):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.5, 1.0, 1.0, 1.0, 0.1, 0.1, 0.01, 0.01])


def test_weight_decay_schedule_is_applied_and_resumes() -> None:
    """AdamW with zero gradients only decays: w_k+1 = w_k (1 - lr_k wd_k), with wd_k a cosine
    from 0.04 to 0.4; the bias group (no weight decay) keeps none."""
    m = Tiny()
    o = OptimConfig(name="adamw", lr=0.5, weight_decay=0.04, weight_decay_end=0.4)
    opt, sched = build_optimization(groups(m), o, max_steps=6)
    w = m.w.detach().clone()
    for k in range(6):
        wd_k = 0.4 + (0.04 - 0.4) * 0.5 * (1 + math.cos(math.pi * k / 6))
        lr_k = 0.5 * 0.5 * (1 + math.cos(math.pi * k / 6))
        assert opt.param_groups[0]["weight_decay"] == pytest.approx(wd_k)
        assert opt.param_groups[1]["weight_decay"] == 0.0
        m.w.grad, m.b.grad = torch.zeros(3), torch.zeros(1)
        opt.step()
        sched.step()
        w = w * (1 - lr_k * wd_k)
        torch.testing.assert_close(m.w.detach(), w)
        if k == 2:  # a resumed schedule continues where it was
            state = (opt.state_dict(), sched.state_dict())
    m2 = Tiny()
    opt2, sched2 = build_optimization(groups(m2), o, max_steps=6)
    opt2.load_state_dict(state[0])
    sched2.load_state_dict(state[1])
    sched2.step()
    wd_4 = 0.4 + (0.04 - 0.4) * 0.5 * (1 + math.cos(math.pi * 4 / 6))
    assert opt2.param_groups[0]["weight_decay"] == pytest.approx(wd_4)


# ------------------------------------------------------------------------ batch steps
def test_mixup_mixes_images_and_labels_alike() -> None:
    """With distinct labels, each soft target shows lam (own label) and 1 - lam (the partner's):
    the image must be the same mix of the same partner."""
    g = torch.Generator().manual_seed(3)
    step = MixUpStep(SupervisedStep(CPU), num_classes=6, alpha=0.4, generator=g)
    images = torch.arange(6 * 3 * 2 * 2, dtype=torch.uint8).view(6, 3, 2, 2)
    labels = torch.tensor([5, 3, 0, 1, 4, 2])
    mixed, targets = step.prepare({"image": images, "label": labels})
    soft = targets["label"]
    assert soft.shape == (6, 6) and torch.allclose(soft.sum(1), torch.ones(6))
    lam = soft[0, labels[0]].item()
    for i in range(6):
        own = soft[i, labels[i]].item()
        others = [(c, v) for c, v in enumerate(soft[i].tolist()) if c != labels[i] and v > 0]
        if not others:  # paired with itself
            assert own == pytest.approx(1.0)
            torch.testing.assert_close(mixed[i], images[i].float())
            continue
        (partner_label, weight), j = others[0], int((labels == others[0][0]).nonzero())
        assert own == pytest.approx(lam) and weight == pytest.approx(1 - lam)
        assert partner_label == labels[j]
        torch.testing.assert_close(mixed[i], lam * images[i].float() + (1 - lam) * images[j])
    again = MixUpStep(SupervisedStep(CPU), 6, 0.4, torch.Generator().manual_seed(3))
    torch.testing.assert_close(again.prepare({"image": images, "label": labels})[0], mixed)


class TwoStreams(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))
        self.seen: list[tuple[list[float], list[float]]] = []

    def forward(self, a: Any, b: Any) -> dict[str, Tensor]:
        (xa, _), (xb, _) = a, b
        self.seen.append((xa[:, 0].tolist(), xb[:, 0].tolist()))
        return {"loss": (self.w * (xa.mean() - xb.mean())) ** 2}


def paired_trainer(out: Path, module: TwoStreams, t: LoopConfig) -> Trainer:
    la, sa = loader(10, 2, seed=1)
    lb, sb = loader(7, 3, offset=100, seed=2)
    return assemble(
        module,
        [{"params": list(module.parameters())}],
        PairedLoader(la, lb),
        PairedSampler(sa, sb, 2, 3),
        PairedStep(SupervisedStep(CPU), SupervisedStep(CPU)),
        optim=OptimConfig(name="sgd", lr=0.01, lr_scaling="none"),
        train=t,
        device=CPU,
        meta={"kind": "pairs"},
    )


class Interrupted(RuntimeError):
    pass


def test_two_streams_in_one_step_resume_exactly(tmp_path: Path) -> None:
    full = TwoStreams()
    trainer = paired_trainer(tmp_path / "full", full, loop(tmp_path / "full", 6))
    start(trainer, trainer_cfg := loop(tmp_path / "full", 6))
    trainer.fit()
    assert trainer_cfg.resume and len(full.seen) == 6
    first = ResumableSampler(np.zeros(10, np.int64), seed=1).epoch_order(0).tolist()
    second = ResumableSampler(np.zeros(7, np.int64), seed=2).epoch_order(0).tolist()
    assert full.seen[0] == (first[:2], [100.0 + i for i in second[:3]])
    assert full.seen[1][1] == [100.0 + i for i in second[3:6]]

    cut = TwoStreams()
    t = loop(tmp_path / "cut", 6)
    trainer = paired_trainer(tmp_path / "cut", cut, t)
    step = Trainer.train_step

    def crash(self: Trainer, batch: Any) -> Any:
        if self.step == 4:
            raise Interrupted
        return step(self, batch)

    start(trainer, t)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Trainer, "train_step", crash)
        with pytest.raises(Interrupted):
            trainer.fit()
    resumed = TwoStreams()
    trainer = paired_trainer(tmp_path / "cut", resumed, t)
    assert start(trainer, t) and trainer.step == 4
    trainer.fit()
    assert resumed.seen == full.seen[4:]
    assert torch.equal(resumed.w, full.w)


# ------------------------------------------------------------------------ stages
def test_a_stage_starts_from_the_previous_stage(tmp_path: Path) -> None:
    one = Tiny()
    t1 = loop(tmp_path / "one", 2)
    trainer = tiny_trainer(tmp_path / "one", one, t1)
    start(trainer, t1)
    trainer.fit()
    two = Tiny(extra=True)
    head = two.head.weight.detach().clone()
    t2 = loop(tmp_path / "two", 2, init_from=str(tmp_path / "one" / "last.pt"))
    trainer = tiny_trainer(tmp_path / "two", two, t2)
    assert not start(trainer, t2)
    assert torch.equal(two.w, one.w) and torch.equal(two.b, one.b)
    assert torch.equal(two.head.weight, head)  # not in stage one: left as initialised
    trainer.fit()
    meta = load_checkpoint(tmp_path / "two" / "last.pt")["meta"]
    assert meta["init_from"] == {
        "path": str(tmp_path / "one" / "last.pt"),
        "kind": "training-state",
        "step": 2,
        "method": "tiny",
        "loaded": 2,
        "of": 4,
    }

    class Wrapper(nn.Module):  # as NucleiTrainModule holds the NucleiModel of a nuclei.pt
        def __init__(self) -> None:
            super().__init__()
            self.model = Tiny()

    save_checkpoint(tmp_path / "m.pt", {"model": one.state_dict(), "meta": {"kind": "nuclei"}})
    wrapped = Wrapper()
    info = load_previous_stage(wrapped, tmp_path / "m.pt")
    assert torch.equal(wrapped.model.w, one.w) and (info["kind"], info["loaded"]) == ("nuclei", 2)

    class Other(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.v = nn.Parameter(torch.zeros(2))

    with pytest.raises(CheckpointError, match="none of its 2 weights matches"):
        load_previous_stage(Other(), tmp_path / "one" / "last.pt")


# ------------------------------------------------------------------------ checks before compute
def test_out_dir_must_be_writable(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    here = re.escape(str(afile))
    with pytest.raises(ConfigError, match=rf"{here} \(train\.out_dir\): {here} is a file, not a"):
        check_out_dir(afile)
    with pytest.raises(ConfigError, match=rf"{here}/run \(train\.out_dir\): {here} is a file"):
        check_out_dir(afile / "run")
    assert check_out_dir(tmp_path / "new" / "run") == tmp_path / "new" / "run"
    assert not (tmp_path / "new").exists()  # checking creates nothing


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_damaged_last_pt(tmp_path: Path, damage: str) -> None:
    t = loop(tmp_path, 2)
    trainer = tiny_trainer(tmp_path, Tiny(), t)
    start(trainer, t)
    trainer.fit()
    last = tmp_path / "last.pt"
    data = last.read_bytes()
    last.write_bytes(b"" if damage == "empty" else data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="train.resume=false"):
        check_previous_run(t, {"kind": "tiny"})  # what builders call before any compute
    trainer = tiny_trainer(tmp_path, Tiny(), t)
    with pytest.raises(CheckpointError) as err:
        start(trainer, t)
    msg = str(err.value)
    assert str(last) in msg and "train.resume=false" in msg and "\n" not in msg
    assert ("empty" if damage == "empty" else "truncated or damaged") in msg
    fresh = loop(tmp_path, 2, resume=False)
    trainer = tiny_trainer(tmp_path, Tiny(), fresh)
    assert not start(trainer, fresh) and not last.exists()  # damaged: replaced by this run


def test_another_runs_out_dir_is_refused(tmp_path: Path) -> None:
    save_checkpoint(
        tmp_path / "last.pt",
        {"method": {}, "optimizer": {}, "step": 3, "meta": {"method": "byol", "backbone": "r18"}},
    )
    for resume in (True, False):
        t = loop(tmp_path, 2, resume=resume)
        trainer = tiny_trainer(tmp_path, Tiny(), t)
        with pytest.raises(ValueError) as err:
            start(trainer, t)
        msg = str(err.value)
        assert "method 'byol'" in msg and "kind 'tiny'" in msg and "train.out_dir" in msg
        assert "\n" not in msg
    assert (tmp_path / "last.pt").is_file()  # nothing replaced


def test_checkpoint_kinds_name_what_a_file_is(tmp_path: Path) -> None:
    from pathssl.nuclei.train import load_nuclei_model

    pre = {"trunk": {}, "method": {}, "optimizer": {}, "step": 1, "meta": {"method": "simclr"}}
    state = {"method": {}, "optimizer": {}, "step": 5, "meta": {"kind": "nuclei"}}
    model = {"model": {}, "meta": {"kind": "nuclei"}}
    best = {"method": {}, "step": 2, "scores": {}, "meta": {"kind": "nuclei"}}
    assert [checkpoint_kind(c) for c in (pre, state, model, best, {"x": 1})] == [
        "pretrain",
        "nuclei-state",
        "nuclei",
        "best-weights",
        "unknown",
    ]
    save_checkpoint(tmp_path / "pre.pt", pre)
    with pytest.raises(CheckpointError, match=r"is a pretraining checkpoint .*expected a nuclei"):
        load_nuclei_model(tmp_path / "pre.pt")
    save_checkpoint(tmp_path / "last.pt", state)
    with pytest.raises(CheckpointError, match=r"resumable state .*nuclei\.pt in the same folder"):
        load_nuclei_model(tmp_path / "last.pt")
    from pathssl.models.pretrained import read_pretrained

    save_checkpoint(tmp_path / "nuclei.pt", model)
    with pytest.raises(CheckpointError, match=r"is a nuclei model .*expected a pretraining"):
        read_pretrained(tmp_path / "nuclei.pt")


def test_value_ranges_before_compute() -> None:
    from pathssl.train.build import check_batch
    from pathssl.train.config import load_config

    for override, match in [
        ("optim.lr=-1", r"optim\.lr must be > 0, got -1"),
        ("data.batch_size=0", r"data\.batch_size must be >= 1, got 0"),
        ("train.max_steps=0", r"train\.max_steps must be >= 1"),
        ("optim.weight_decay_end=-0.1", r"optim\.weight_decay_end must be >= 0"),
        ("optim.schedule=linear", r"optim\.schedule: 'linear' is not one of"),
        ("optim.milestones=[5, 3]", r"optim\.milestones must be increasing"),
    ]:
        with pytest.raises(ConfigError, match=match):
            load_config(None, [override])
    check_batch(4, 2, 8)
    with pytest.raises(ConfigError, match=r"data\.batch_size 8 x 2 .* than the 10 tiles"):
        check_batch(8, 2, 10)


def test_suspicious_settings_are_named_not_fatal() -> None:
    from pathssl.train.build import suspicious

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert suspicious(32, 1, 10_000, 2, "auto", cpu, 2) == []
    few = suspicious(32, 2, 500, 2, "fp32", cpu, 2)
    assert len(few) == 1 and "only 500 tiles for a global batch of 64" in few[0]
    assert "every ~7 steps" in few[0]
    (bf16,) = suspicious(32, 1, 10_000, 2, "bf16", cpu, 2)
    assert "bf16 on the CPU" in bf16
    assert suspicious(32, 1, 10_000, 2, "bf16", cuda, 2) == []
    (workers,) = suspicious(32, 1, 10_000, 8, "auto", cpu, 2)
    assert "data.num_workers 8 is more than the 2 cores" in workers
