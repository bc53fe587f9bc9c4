"""Every registered SSL method x tiny backbones: steps run, parameters move, the loss falls on a
fixed batch of real image crops, state_dict round-trips; method-specific state (schedules,
queue, centre, frozen prototypes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch

from pathssl.models import build_backbone
from pathssl.ssl import METHODS, SSLMethod
from pathssl.ssl.base import LabelledBatch, cosine_schedule

# multi-task: two tasks with their own views (1 + 2) and heads
TINY_TASKS = {
    "rotation": {"params": {"head_hidden_dim": 32}},
    "simclr": {"weight": 0.5, "params": {"proj_hidden_dim": 64, "proj_dim": 32}},
}
# Small heads for CPU tests; a method missing here is tested with its defaults.
TINY: dict[str, dict[str, Any]] = {
    "simclr": {"proj_hidden_dim": 64, "proj_dim": 32},
    "moco_v2": {"proj_hidden_dim": 64, "proj_dim": 32, "queue_size": 64},
    "moco_v3": {"hidden_dim": 64, "out_dim": 32},
    "byol": {"proj_hidden_dim": 64, "proj_dim": 32},
    "barlow_twins": {"proj_dim": 64},
    "swav": {
        "proj_hidden_dim": 64,
        "proj_dim": 32,
        "num_prototypes": 16,
        "freeze_prototypes_steps": 1,
        "n_local_views": 2,
    },
    "dino": {"out_dim": 128, "hidden_dim": 64, "bottleneck_dim": 32, "n_local_views": 2},
    "mae": {"decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2},
    "maskfeat": {},
    "rotation": {"head_hidden_dim": 32},
    "context": {"pair_dim": 16, "hidden_dim": 64},
    "jigsaw": {"num_permutations": 24, "tile_dim": 16, "hidden_dim": 64},
    "pirl": {"proj_dim": 16, "bank_size": 64, "num_negatives": 32, "num_permutations": 24},
    "colorization": {"head_dim": 32, "grid_step": 20.0, "rebalance": True},
    "orl": {"proj_hidden_dim": 64, "proj_dim": 32, "patch_size": 32},
    "multitask": {"tasks": TINY_TASKS},
    "s4l_rotation": {"head_hidden_dim": 32},
    "s4l_exemplar": {"triplet_dim": 32},
    "supervised": {},
    "split_brain": {"head_dim": 32, "grid_step": 20.0, "l_bins": 20},
}
BACKBONES = ["vit_tiny", "resnet18"]
# On a fixed batch MoCo v2's queue fills with this batch's own keys, so its objective only
# becomes stationary once the queue holds nothing else: a queue of one batch (8) does so after
# one step; with 64 the loss rises for the 8 steps it takes to fill it.
# PIRL likewise: a bank of the batch's 8 entries; the bank starts random and its NCE loss rises
# while the entries fill with the (still similar) embeddings, so it needs a smaller step to fall
# within 20 steps (at 1e-3 Adam overshoots the moving target).
FIXED_BATCH: dict[str, dict[str, Any]] = {"moco_v2": {"queue_size": 8}, "pirl": {"bank_size": 8}}
FIXED_LR: dict[str, float] = {"pirl": 1e-4}


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)


def build(name: str, backbone: str = "vit_tiny", **overrides: Any) -> SSLMethod:
    method = METHODS.build(
        name, backbone=build_backbone(backbone), **{**TINY.get(name, {}), **overrides}
    )
    assert isinstance(method, SSLMethod)
    return method


def random_views(method: SSLMethod, batch: int = 4) -> list[torch.Tensor]:
    return [torch.randn(batch, 3, 64, 64) for _ in range(method.n_global_views)] + [
        torch.randn(batch, 3, 32, 32) for _ in range(method.n_local_views)
    ]


@pytest.fixture(scope="module")
def crops(data_dir: Path) -> torch.Tensor:
    """8 fixed 64x64 crops of a real H&E image, standardised per channel."""
    img = cv2.imread(str(data_dir / "nuclei" / "hgsc_nest.jpg"), cv2.IMREAD_COLOR)
    assert img is not None
    rgb = cv2.cvtColor(img, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0
    rng = np.random.default_rng(0)
    out = []
    for _ in range(8):
        y = int(rng.integers(0, rgb.shape[0] - 64))
        x = int(rng.integers(0, rgb.shape[1] - 64))
        out.append(rgb[y : y + 64, x : x + 64])
    t = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()
    return (t - t.mean((0, 2, 3), keepdim=True)) / t.std((0, 2, 3), keepdim=True)


def fixed_views(method: SSLMethod, crops: torch.Tensor) -> list[torch.Tensor]:
    """Deterministic views: the crops, their mirror images, then 32x32 corners as local views."""
    globals_ = [crops, crops.flip(-1), crops.flip(-2)][: method.n_global_views]
    corners = [
        crops[..., :32, :32],
        crops[..., 32:, 32:],
        crops[..., :32, 32:],
        crops[..., 32:, :32],
    ]
    return globals_ + [corners[i % 4] for i in range(method.n_local_views)]


def call(method: SSLMethod, views: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """``method(views)``; a method with a memory bank gets dataset indices 0..B-1, one that
    trains on labels gets the same views as its labelled batch, labelled 0, 1, 0, 1, ..."""
    kwargs: dict[str, Any] = {}
    if method.needs_index:
        kwargs["index"] = torch.arange(views[0].shape[0])
    if method.needs_labels:
        kwargs["labelled"] = LabelledBatch(views, torch.arange(views[0].shape[0]) % 2)
    return method(views, **kwargs)  # type: ignore[no-any-return]


def train(
    method: SSLMethod, views: list[torch.Tensor], steps: int, lr: float = 1e-3
) -> list[float]:
    opt = torch.optim.AdamW(method.param_groups(weight_decay=1e-4), lr=lr)
    losses = []
    for step in range(steps):
        out = call(method, views)
        opt.zero_grad()
        out["loss"].backward()
        method.on_after_backward(step)
        opt.step()
        method.on_step_end(step, steps)
        losses.append(float(out["loss"].detach()))
        for key, value in out.items():
            assert value.ndim == 0, key
            assert key == "loss" or not value.requires_grad, key
    return losses


def cases() -> list[tuple[str, str]]:
    return [
        (m, b)
        for m in METHODS.names()
        for b in BACKBONES
        if not (METHODS.get(m).vit_only and b != "vit_tiny")
    ]


@pytest.mark.parametrize(("name", "backbone"), cases())
def test_two_steps_run_and_change_parameters(name: str, backbone: str) -> None:
    method = build(name, backbone)
    before = {k: v.detach().clone() for k, v in method.backbone.state_dict().items()}
    losses = train(method, random_views(method), steps=2)
    assert all(np.isfinite(losses)), losses
    changed = [
        k
        for k, v in method.backbone.state_dict().items()
        if v.is_floating_point() and not torch.equal(v, before[k])
    ]
    assert len(changed) > len(before) // 2, f"only {len(changed)} of {len(before)} changed"
    assert int(method.global_step) == 2


@pytest.mark.parametrize("name", METHODS.names())
def test_loss_falls_on_fixed_real_batch(name: str, crops: torch.Tensor) -> None:
    method = build(name, "vit_tiny", **FIXED_BATCH.get(name, {}))
    losses = train(method, fixed_views(method, crops), steps=20, lr=FIXED_LR.get(name, 1e-3))
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    assert last < first, f"{name}: {first:.4f} -> {last:.4f} ({losses})"


@pytest.mark.slow
@pytest.mark.parametrize("name", [m for m in METHODS.names() if not METHODS.get(m).vit_only])
def test_loss_falls_on_fixed_real_batch_resnet18(name: str, crops: torch.Tensor) -> None:
    method = build(name, "resnet18", **FIXED_BATCH.get(name, {}))
    losses = train(method, fixed_views(method, crops), steps=20, lr=FIXED_LR.get(name, 1e-3))
    assert np.mean(losses[-5:]) < np.mean(losses[:5]), losses


@pytest.mark.parametrize("name", METHODS.names())
def test_state_dict_round_trip_restores_outputs(name: str) -> None:
    method = build(name)
    train(method, random_views(method), steps=2)
    views = random_views(method)
    torch.manual_seed(1)
    restored = build(name)
    torch.manual_seed(123)
    with torch.no_grad():
        assert float(call(restored, views)["loss"]) != float(call(method, views)["loss"])
    restored = build(name)
    restored.load_state_dict(method.state_dict())
    for a, b in zip(method.state_dict().values(), restored.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    torch.manual_seed(7)
    expected = call(method, views)["loss"]
    torch.manual_seed(7)
    assert torch.equal(call(restored, views)["loss"], expected)


def test_cosine_momentum_schedule_values() -> None:
    byol = build("byol")
    assert byol.momentum_at(0, 100) == pytest.approx(0.996)  # type: ignore[operator]
    assert byol.momentum_at(50, 100) == pytest.approx(0.998)  # type: ignore[operator]
    assert byol.momentum_at(100, 100) == pytest.approx(1.0)  # type: ignore[operator]
    assert cosine_schedule(25, 100, 0.0, 1.0) == pytest.approx((1 - np.cos(np.pi / 4)) / 2)


def test_ema_update_applies_scheduled_momentum() -> None:
    byol = build("byol")
    train(byol, random_views(byol), steps=1)  # target moved at step 0 (m = 0.996)
    online = dict(byol.backbone.named_parameters())
    target_before = {k: v.clone() for k, v in byol.target[0].named_parameters()}
    out = byol(random_views(byol))
    out["loss"].backward()
    byol.on_step_end(5, 10)  # no optimiser step: online fixed, target = m t + (1 - m) o
    m = byol.momentum_at(5, 10)  # type: ignore[operator]
    assert m == pytest.approx(0.998)
    for k, v in byol.target[0].named_parameters():
        torch.testing.assert_close(v, m * target_before[k] + (1 - m) * online[k])


def test_dino_teacher_temperature_warmup_and_centre() -> None:
    dino = build("dino", warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_teacher_temp_steps=10)
    assert dino.teacher_temp_at(0) == pytest.approx(0.04)  # type: ignore[operator]
    assert dino.teacher_temp_at(5) == pytest.approx(0.055)  # type: ignore[operator]
    assert dino.teacher_temp_at(10) == pytest.approx(0.07)  # type: ignore[operator]
    assert dino.teacher_temp_at(50) == pytest.approx(0.07)  # type: ignore[operator]
    assert dino.momentum_at(0, 10) == pytest.approx(0.996)  # type: ignore[operator]
    assert dino.momentum_at(10, 10) == pytest.approx(1.0)  # type: ignore[operator]
    views = random_views(dino)
    with torch.no_grad():
        t = dino.teacher(torch.cat(views[:2]))  # type: ignore[operator]
        dino(views)
    torch.testing.assert_close(dino.center, 0.1 * t.mean(0, keepdim=True))
    assert "center" in dino.state_dict()


def test_moco_v2_queue_order() -> None:
    moco = build("moco_v2", queue_size=6, proj_dim=4)
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    moco.enqueue(a)  # type: ignore[operator]
    torch.testing.assert_close(moco.queue[:4], a)
    assert int(moco.queue_ptr) == 4
    moco.enqueue(b)  # type: ignore[operator]  # wraps: oldest (a[0], a[1]) overwritten first
    torch.testing.assert_close(moco.queue, torch.cat([b[2:], a[2:], b[:2]]))
    assert int(moco.queue_ptr) == 2
    # through the training interface: the step's keys land at the pointer after the step
    views = random_views(moco)
    with torch.no_grad():
        keys = torch.nn.functional.normalize(moco.key_encoder(views[1]), dim=1)  # type: ignore[operator]
    train(moco, views, steps=1)
    torch.testing.assert_close(moco.queue[2:6], keys)
    assert int(moco.queue_ptr) == 0


def test_swav_prototypes_frozen_then_trained_and_normalised() -> None:
    swav = build("swav", freeze_prototypes_steps=1)
    w0 = swav.prototypes.weight.detach().clone()  # type: ignore[union-attr]
    train(swav, random_views(swav), steps=1)
    torch.testing.assert_close(swav.prototypes.weight.detach(), w0)  # type: ignore[union-attr]
    train(swav, random_views(swav), steps=1)  # fresh count: step 0 again -> still frozen
    swav.freeze_prototypes_steps = 0
    train(swav, random_views(swav), steps=1)
    w = swav.prototypes.weight  # type: ignore[union-attr]
    assert not torch.equal(w, w0)
    torch.testing.assert_close(w.norm(dim=1), torch.ones(w.shape[0]))


def test_vit_only_methods_reject_resnet() -> None:
    for name in METHODS.names():
        if METHODS.get(name).vit_only:
            with pytest.raises(TypeError, match="ViT"):
                build(name, "resnet18")


def test_moco_v2_skipped_step_never_reaches_the_queue() -> None:
    """The loop skips a non-finite step without ``on_step_end``: its keys must not be enqueued
    by the next applied step (they were, before: ``_pending`` kept both steps' keys)."""
    moco = build("moco_v2", queue_size=16, proj_dim=4)
    moco.train()
    skipped, applied = random_views(moco), random_views(moco)
    with torch.no_grad():
        moco(skipped)  # forward of a step the NaN guard skips: no on_step_end follows
        moco(applied)
        keys = torch.nn.functional.normalize(moco.key_encoder(applied[1]), dim=1)  # type: ignore[operator]
    before = moco.queue.clone()
    moco.on_step_end(0, 10)
    n = keys.shape[0]
    assert int(moco.queue_ptr) == n  # one batch of keys, not two
    torch.testing.assert_close(moco.queue[:n], keys)
    torch.testing.assert_close(moco.queue[n:], before[n:])


def test_moco_v3_vit_keeps_a_random_frozen_patch_projection() -> None:
    """MoCo v3 (Sec. 4.2): the ViT's patch projection stays at its random initialisation while
    everything else trains; ``frozen_patch_projection=False`` trains it too."""
    for frozen in (True, False):
        torch.manual_seed(0)
        moco = build("moco_v3", frozen_patch_projection=frozen)
        vit = moco.backbone
        before = vit.conv_proj.weight.detach().clone()  # type: ignore[union-attr]
        block = next(vit.encoder.layers.parameters()).detach().clone()  # type: ignore[union-attr]
        train(moco, random_views(moco), steps=2)
        same = torch.equal(vit.conv_proj.weight, before)  # type: ignore[union-attr]
        assert same is frozen
        assert not torch.equal(next(vit.encoder.layers.parameters()), block)  # type: ignore[union-attr]


def test_sync_batchnorm_covers_vit_heads_across_cuda_processes() -> None:
    """SyncBN for every method with BatchNorm (MoCo v3's ViT heads too), only across CUDA
    processes (the module swap itself runs on the CPU)."""
    from torch import nn

    from pathssl.train.build import sync_batchnorm

    def n_sync(m: nn.Module) -> int:
        return sum(isinstance(x, nn.SyncBatchNorm) for x in m.modules())

    moco = build("moco_v3")
    assert n_sync(sync_batchnorm(moco, 1, torch.device("cuda"))) == 0
    assert n_sync(sync_batchnorm(moco, 2, torch.device("cpu"))) == 0
    synced = sync_batchnorm(moco, 2, torch.device("cuda"))
    assert n_sync(synced.projector) > 0 and n_sync(synced.predictor) > 0  # type: ignore[arg-type]
    assert not any(isinstance(x, nn.BatchNorm1d) for x in synced.modules())
    # MoCo v2's Shuffle-BN needs per-GPU statistics: no SyncBN unless it is turned off
    shuffled = build("moco_v2", backbone="resnet18")
    assert n_sync(sync_batchnorm(shuffled, 2, torch.device("cuda"))) == 0
    plain = build("moco_v2", backbone="resnet18", shuffle_bn=False)
    assert n_sync(sync_batchnorm(plain, 2, torch.device("cuda"))) > 0
