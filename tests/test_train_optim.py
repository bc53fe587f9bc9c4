"""Optimisers, schedule and atomic checkpoints."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from pathssl.train.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from pathssl.train.optim import LARS, WarmupCosine, build_optimizer, scaled_lr, warmup_cosine


def test_warmup_cosine_values() -> None:
    f = WarmupCosine(warmup_steps=4, max_steps=14, min_ratio=0.1)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(9) == pytest.approx(0.1 + 0.9 * 0.5)  # halfway through the cosine
    assert f(14) == pytest.approx(0.1) and f(100) == pytest.approx(0.1)
    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([p], lr=2.0)
    sched = warmup_cosine(opt, 4, 14, 0.1)
    lrs = []
    for _ in range(5):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.5, 1.0, 1.5, 2.0, 2.0 * f(4)])
    assert scaled_lr(0.3, 512, "linear") == pytest.approx(0.6)
    assert scaled_lr(0.3, 1024, "sqrt") == pytest.approx(0.6)


def test_lars_matches_a_naive_step() -> None:
    torch.manual_seed(0)
    w, b = torch.randn(4, 3), torch.randn(4)
    gw, gb = torch.randn(4, 3), torch.randn(4)
    pw, pb = torch.nn.Parameter(w.clone()), torch.nn.Parameter(b.clone())
    opt = LARS(
        [{"params": [pw], "weight_decay": 0.1}, {"params": [pb], "weight_decay": 0.0}],
        lr=0.5, momentum=0.9, eta=0.02,
    )  # fmt: skip
    for _ in range(2):
        pw.grad, pb.grad = gw.clone(), gb.clone()
        opt.step()
    # naive: weights adapted by trust ratio, biases (no decay) plain SGD with momentum
    bw, bb, ew, eb = None, None, w.clone(), b.clone()
    for _ in range(2):
        d = gw + 0.1 * ew
        d = d * (0.02 * ew.norm() / d.norm())
        bw = d if bw is None else 0.9 * bw + d
        ew = ew - 0.5 * bw
        bb = gb.clone() if bb is None else 0.9 * bb + gb
        eb = eb - 0.5 * bb
    torch.testing.assert_close(pw.detach(), ew)
    torch.testing.assert_close(pb.detach(), eb)


@pytest.mark.parametrize("name", ["sgd", "lars", "adamw"])
def test_build_optimizer(name: str) -> None:
    p = torch.nn.Parameter(torch.ones(3))
    opt = build_optimizer(name, [{"params": [p], "weight_decay": 0.0}], lr=0.1, weight_decay=0.5)
    p.grad = torch.ones(3)
    opt.step()
    assert (p < 1).all()
    with pytest.raises(ValueError, match="unknown optimizer"):
        build_optimizer("adam", [{"params": [p]}], lr=0.1, weight_decay=0.0)


def test_checkpoint_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"step": 1, "w": torch.ones(3)})

    def crash(obj: Any, f: Any, *a: Any, **k: Any) -> None:
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"step": 2, "w": torch.zeros(3)})
    assert load_checkpoint(path)["step"] == 1  # the old checkpoint survives intact
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary left behind


def test_rng_state_round_trip(tmp_path: Path) -> None:
    import random

    import numpy as np

    g = torch.Generator().manual_seed(5)
    state = rng_state(g)
    save_checkpoint(tmp_path / "r.pt", {"rng": state})
    first = (random.random(), np.random.rand(), torch.rand(2), torch.rand(2, generator=g))  # noqa: NPY002
    set_rng_state(load_checkpoint(tmp_path / "r.pt")["rng"], g)
    again = (random.random(), np.random.rand(), torch.rand(2), torch.rand(2, generator=g))  # noqa: NPY002
    assert first[:2] == again[:2]
    assert torch.equal(first[2], again[2]) and torch.equal(first[3], again[3])
    assert not math.isnan(first[0])
