"""The shipped pretraining configs follow their papers where a schedule or a parameter group is
part of the method (each assertion failed on the configs before they were fixed): Barlow Twins'
two learning rates (Zbontar et al. 2021: 0.2 for weights, 0.0048 for biases and BN), DINO's
weight-decay schedule (0.04 -> 0.4 by cosine) and teacher temperature warm-up (0.04 -> 0.07)."""

from __future__ import annotations

from pathlib import Path

import pytest
from torch import nn

from pathssl.train import load_config
from pathssl.train.assemble import build_optimization

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "pretrain"


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)
        self.bn = nn.BatchNorm1d(2)


def groups(m: nn.Module, wd: float) -> list[dict]:
    decay = [p for p in m.parameters() if p.ndim > 1]
    rest = [p for p in m.parameters() if p.ndim <= 1]
    return [
        {"name": "decay", "params": decay, "weight_decay": wd},
        {"name": "no_decay", "params": rest, "weight_decay": 0.0},
    ]


def test_barlow_twins_biases_and_bn_at_their_own_rate() -> None:
    cfg = load_config(CONFIGS / "barlow_twins.yaml")
    opt, sched = build_optimization(groups(Tiny(), cfg.optim.weight_decay), cfg.optim, 100, 0.2)
    for _ in range(cfg.optim.warmup_steps):  # past the warm-up: the peak rates
        sched.step()
    rates = {g["name"]: g["lr"] for g in opt.param_groups}
    assert rates["decay"] == pytest.approx(0.2)
    assert rates["no_decay"] == pytest.approx(0.0048)


def test_dino_weight_decay_and_teacher_temperature_schedules() -> None:
    cfg = load_config(CONFIGS / "dino.yaml")
    steps = cfg.train.max_steps
    opt, sched = build_optimization(groups(Tiny(), cfg.optim.weight_decay), cfg.optim, steps)
    wd = [opt.param_groups[0]["weight_decay"]]
    half = steps // 2
    for _ in range(half):
        sched.step()
    wd.append(opt.param_groups[0]["weight_decay"])
    for _ in range(steps - half):
        sched.step()
    wd.append(opt.param_groups[0]["weight_decay"])
    assert wd == pytest.approx([0.04, 0.22, 0.4])
    assert opt.param_groups[1]["weight_decay"] == 0.0  # biases and norms: none, throughout

    from pathssl.models.backbones import build_backbone
    from pathssl.ssl.dino import DINO

    shipped = {
        k: v
        for k, v in cfg.method.params.items()
        if k in ("teacher_temp", "warmup_teacher_temp", "warmup_teacher_temp_steps", "momentum")
    }
    dino = DINO(build_backbone("vit_tiny", image_size=32), 16, 16, 8, **shipped)  # small heads
    w = dino.warmup_teacher_temp_steps
    assert 0 < w < steps
    assert dino.teacher_temp_at(0) == pytest.approx(0.04)
    assert dino.teacher_temp_at(w // 2) == pytest.approx(0.055, abs=1e-3)
    assert dino.teacher_temp_at(w) == pytest.approx(0.07)
    assert dino.teacher_temp_at(steps - 1) == pytest.approx(0.07)


def test_pretext_configs_follow_their_papers() -> None:
    """Jigsaw (Noroozi & Favaro 2016): 64 px tiles in 75 px cells of a 225 px view, 1,000
    permutations; context prediction (Doersch et al. 2015): patches 2/3 of a cell (96 of 144),
    jitter 7 px of 144; rotation (Gidaris et al. 2018): views without the dihedral step."""
    from pathssl.ssl.patches import max_jitter, patch_side
    from pathssl.train.build import build_views

    jig = load_config(CONFIGS / "jigsaw.yaml")
    views = build_views(jig)
    p = jig.method.params
    assert views.views[0][0].size == 225 and p["grid"] == 3 and p["num_permutations"] == 1000
    assert patch_side(225 // 3, p["patch_fraction"]) == 64
    ctx = load_config(CONFIGS / "context.yaml")
    q = ctx.method.params
    assert patch_side(144, q["patch_fraction"]) == 96
    assert max_jitter(144, 96, q["jitter_fraction"]) == 7
    rot = build_views(load_config(CONFIGS / "rotation.yaml"))
    assert rot.n_views == 1 and not rot.views[0][0].dihedral
