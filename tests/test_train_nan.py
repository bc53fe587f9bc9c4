"""NaN/inf guard: a step whose loss is not finite is skipped (no update, buffers restored) and
logged; too many in a row stop training with a clear message."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from test_train_methods import tiny_overrides
from torch import nn

from pathssl.train import Trainer, TrainingDiverged, build_trainer, load_config
from pathssl.train.logger import read_metrics


@pytest.fixture(scope="module")
def store(cmu_slide: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiling import tile_slides

    out = tmp_path_factory.mktemp("tiles")
    tile_slides([cmu_slide], out, mpp=0.5, size=224, progress=False, report=False)
    return out


class PoisonViews(nn.Module):
    """Wraps a view module; calls listed in ``bad`` (0-based) return NaN views."""

    def __init__(self, inner: nn.Module, bad: set[int] | None = None) -> None:
        super().__init__()
        self.inner = inner
        self.bad = bad
        self.calls = 0

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> Any:
        out = self.inner(x, generator)
        if self.bad is None or self.calls in self.bad:
            out["views"] = [v * float("nan") for v in out["views"]]
        self.calls += 1
        return out


def make_trainer(store: Path, out: Path, steps: int, extra: tuple[str, ...] = ()) -> Trainer:
    # simclr on a ResNet: BatchNorm running statistics must be restored after a bad step
    cfg = load_config(None, [*tiny_overrides("simclr", store, out, steps=steps), *extra])
    return build_trainer(cfg)


def test_nan_step_is_skipped_and_logged(store: Path, tmp_path: Path) -> None:
    trainer = make_trainer(store, tmp_path, steps=4)
    trainer.views = PoisonViews(trainer.views, bad={1})
    trainer.fit()
    assert trainer.step == 4
    records = read_metrics(tmp_path / "metrics.jsonl")
    skipped = [r for r in records if r["kind"] == "skipped"]
    assert [r["step"] for r in skipped] == [2]
    assert skipped[0]["loss"] == "nan"
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    p0 = trainer.optimizer.param_groups[0]["params"][0]
    assert int(trainer.optimizer.state[p0]["step"]) == 3  # three real AdamW updates
    for p in trainer.method.parameters():
        assert torch.isfinite(p).all()


def test_bad_step_changes_nothing(store: Path, tmp_path: Path) -> None:
    trainer = make_trainer(store, tmp_path, steps=4)
    trainer.views = PoisonViews(trainer.views)  # every call is bad
    batch = next(iter(trainer.loader))
    before = {k: v.clone() for k, v in trainer.method.state_dict().items()}
    ok, logs = trainer.train_step(batch)
    assert not ok and not torch.isfinite(logs["loss"])
    after = trainer.method.state_dict()
    for k, v in before.items():
        assert torch.equal(v, after[k]), f"{k} changed by a skipped step"
    assert not trainer.optimizer.state  # no optimiser step happened


def test_repeated_nan_stops_with_a_clear_message(store: Path, tmp_path: Path) -> None:
    trainer = make_trainer(store, tmp_path, steps=10, extra=("train.max_bad_steps=3",))
    trainer.views = PoisonViews(trainer.views)
    with pytest.raises(TrainingDiverged, match="3 consecutive steps.*non-finite"):
        trainer.fit()
    assert trainer.step == 2  # stopped on the third bad step
    skipped = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r["kind"] == "skipped"]
    assert len(skipped) == 3
