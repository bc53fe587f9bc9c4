"""Validation inside the one loop: best weights kept, early stopping, resume of its state."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from pathssl.data.sampler import ResumableSampler
from pathssl.train.logger import read_metrics
from pathssl.train.loop import LoopSettings, SupervisedStep, Trainer, Validation


class Regressor(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 1)

    def forward(self, x: Tensor, targets: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"loss": ((self.lin(x).squeeze(1) - targets["y"]) ** 2).mean()}


class Points(torch.utils.data.Dataset[dict[str, Tensor]]):
    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(32, 4, generator=g)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5, 3.0])

    def __len__(self) -> int:
        return 32

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"image": self.x[i], "y": self.y[i]}


def make_trainer(out: Path, scores: list[float], patience: int | None, steps: int = 20) -> Trainer:
    torch.manual_seed(0)
    module = Regressor()
    ds = Points()
    sampler = ResumableSampler(np.zeros(len(ds), np.int64), seed=0)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, sampler=sampler)
    opt = torch.optim.SGD(module.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    snapshots: dict[int, Tensor] = {}
    calls = iter(scores)

    def run() -> dict[str, float]:
        assert not module.training and not torch.is_grad_enabled()
        snapshots[trainer.step] = module.lin.weight.detach().clone()
        return {"score": next(calls), "other": 1.0}

    settings = LoopSettings(
        max_steps=steps, out_dir=out, ckpt_every=100, log_every=1, progress=False
    )
    trainer = Trainer(
        module,
        opt,
        sched,
        loader,
        sampler,
        SupervisedStep(torch.device("cpu")),
        torch.device("cpu"),
        settings,
        {"method": "regress"},
        validation=Validation(run, every=2, monitor="score", patience=patience),
    )
    trainer.snapshots = snapshots  # type: ignore[attr-defined]
    return trainer


def test_best_weights_kept_and_early_stop(tmp_path: Path) -> None:
    #          step: 2    4    6    8    10   12
    scores = [0.50, 0.70, 0.60, 0.70, 0.65, 0.99]
    trainer = make_trainer(tmp_path, scores, patience=3)
    trainer.fit()
    # 0.70 at step 4 is the best; 0.60, 0.70 (equal is no improvement), 0.65 = 3 stale -> stop
    assert trainer.stopped_early and trainer.step == 10
    assert trainer.best == pytest.approx(0.70) and trainer.best_step == 4
    val = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r["kind"] == "val"]
    assert [r["step"] for r in val] == [2, 4, 6, 8, 10]
    assert [r["improved"] for r in val] == [True, True, False, False, False]
    assert trainer.restore_best() == 4
    assert torch.equal(trainer.method.lin.weight, trainer.snapshots[4])  # type: ignore[attr-defined]
    assert not torch.equal(trainer.snapshots[4], trainer.snapshots[10])  # type: ignore[attr-defined]
    # the stop is checkpointed: a resumed run does not train on
    again = make_trainer(tmp_path, [], patience=3)
    assert again.resume() and again.stopped_early and again.best_step == 4
    again.fit()
    assert again.step == 10


def test_no_patience_runs_to_the_end_and_nan_never_wins(tmp_path: Path) -> None:
    scores = [float("nan"), 0.2, 0.1, float("nan"), 0.3, 0.0, 0.0, 0.0, 0.0, 0.0]
    trainer = make_trainer(tmp_path, scores, patience=None)
    trainer.fit()
    assert not trainer.stopped_early and trainer.step == 20
    assert trainer.best == pytest.approx(0.3) and trainer.best_step == 10


def test_resume_keeps_the_validation_state(tmp_path: Path) -> None:
    scores = [0.5, 0.9, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]
    first = make_trainer(tmp_path, scores, patience=3, steps=6)
    first.fit()  # validations at 2, 4, 6: best 0.9 at 4, one stale
    assert (first.best_step, first.stale) == (4, 1)
    second = make_trainer(tmp_path, [0.1, 0.1, 0.1], patience=3, steps=20)
    assert second.resume() and (second.best_step, second.stale) == (4, 1)
    second.fit()  # two more stale validations (8, 10) reach patience 3
    assert second.stopped_early and second.step == 10 and second.best_step == 4


def test_validation_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="every"):
        Validation(dict, every=0, monitor="x")
    with pytest.raises(ValueError, match="mode"):
        Validation(dict, every=1, monitor="x", mode="up")
    with pytest.raises(ValueError, match="patience"):
        Validation(dict, every=1, monitor="x", patience=0)
    v = Validation(dict, every=1, monitor="x", mode="min", min_delta=0.1)
    assert v.improves(1.0, None) and v.improves(0.5, 1.0) and not v.improves(0.95, 1.0)


def test_a_fresh_run_never_restores_an_older_runs_best(tmp_path: Path) -> None:
    first = make_trainer(tmp_path, [0.9] * 10, patience=None)
    first.fit()
    assert (tmp_path / "best.pt").is_file()
    second = make_trainer(tmp_path, [float("nan")] * 10, patience=None)
    second.start_fresh()
    assert not (tmp_path / "best.pt").exists() and not (tmp_path / "metrics.jsonl").exists()
    second.fit()
    before = second.method.lin.weight.detach().clone()
    assert second.restore_best() == 0 and torch.equal(second.method.lin.weight, before)


def test_an_improvement_is_checkpointed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Checkpoints every 100 steps, validations every 2: a crash at step 5 after improvements at
    2 and 4 resumes from step 4, where best.pt and the loop's state agree."""
    first = make_trainer(tmp_path, [0.5, 0.9, 0.1], patience=None)
    step = Trainer.train_step

    def crash(self: Trainer, batch: object) -> object:
        if self.step == 5:
            raise KeyboardInterrupt
        return step(self, batch)

    monkeypatch.setattr(Trainer, "train_step", crash)
    with pytest.raises(KeyboardInterrupt):
        first.fit()
    monkeypatch.undo()
    again = make_trainer(tmp_path, [0.1] * 10, patience=None)
    assert again.resume() and again.step == 4 and again.best_step == 4
    again.fit()
    assert again.restore_best() == 4


def test_killed_between_last_and_best_rewrites_best(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = make_trainer(tmp_path, [0.5, 0.9, 0.1], patience=None)
    write = Trainer.write_best

    def crash(self: Trainer) -> None:
        if self.step == 4:
            raise KeyboardInterrupt  # last.pt (step 4) is written, best.pt still from step 2
        write(self)

    monkeypatch.setattr(Trainer, "write_best", crash)
    with pytest.raises(KeyboardInterrupt):
        first.fit()
    monkeypatch.undo()
    at_4 = first.snapshots[4]  # type: ignore[attr-defined]
    assert torch.load(tmp_path / "best.pt", weights_only=True)["step"] == 2
    again = make_trainer(tmp_path, [0.1] * 10, patience=None)
    assert again.resume() and again.step == 4
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    assert best["step"] == 4 and torch.equal(best["method"]["lin.weight"], at_4)


def test_more_patience_on_resume_trains_on(tmp_path: Path) -> None:
    stopped = make_trainer(tmp_path, [0.9, 0.1, 0.1], patience=2)
    stopped.fit()
    assert stopped.stopped_early and stopped.step == 6
    more = make_trainer(tmp_path, [0.1] * 10, patience=5)
    assert more.resume() and not more.stopped_early
    more.fit()
    assert more.stopped_early and more.step == 12  # 5 stale validations: 4, 6, 8, 10, 12
    more.start_fresh()
    assert not any((tmp_path / n).exists() for n in ("last.pt", "best.pt", "metrics.jsonl"))
