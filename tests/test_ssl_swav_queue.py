"""SwAV's feature queue (Caron et al. 2020) on real H&E crops.

References: the queue after N steps against a naive list of the embeddings each step produced
(seen by a hook on the projector, so independently of the queue code); the codes and the loss
against a naive float64 Sinkhorn-Knopp on ``[queue; batch]`` written with explicit loops; the
state_dict round trip; a step the NaN guard skips (method hooks, then the real training loop)
enqueues nothing; two processes (gloo) share the queue in the distributed Sinkhorn so that the
codes equal one process's on the whole concatenation.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from test_ssl_shuffle_bn import load_crops
from test_train_methods import tiny_overrides
from torch import Tensor, nn

from pathssl.models import build_backbone
from pathssl.ssl.swav import SwAV
from pathssl.train import build_trainer, load_config

B = 4
K = 16  # prototypes
WORLD = 2


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def pool(data_dir: Path) -> Tensor:
    """48 real crops ``(48, 3, 64, 64)``: each step takes another 4."""
    return load_crops(data_dir, n=48, seed=3)


def make_swav(**kwargs: Any) -> SwAV:
    torch.manual_seed(0)
    params: dict[str, Any] = {
        "proj_hidden_dim": 64,
        "proj_dim": 32,
        "num_prototypes": K,
        "freeze_prototypes_steps": 0,
        "n_local_views": 2,
        "queue_length": 10,  # not a multiple of the batch: the oldest rows leave part by part
        "queue_start_step": 0,
        **kwargs,
    }
    return SwAV(build_backbone("vit_tiny"), **params).train()


def views_at(pool: Tensor, step: int) -> list[Tensor]:
    x = pool[(step * B) % len(pool) :][:B]
    return [x, x.flip(-1), x[..., :32, :32], x[..., 32:, 32:]]


class Recorder:
    """Hooks the projector: the L2-normalised embeddings ``(n_crops * B, D)`` of each forward."""

    def __init__(self, swav: SwAV) -> None:
        self.z: list[Tensor] = []
        swav.projector.register_forward_hook(self.hook)

    def hook(self, module: nn.Module, inputs: Any, out: Tensor) -> None:
        self.z.append(F.normalize(out.detach(), dim=1).clone())


def step(swav: SwAV, opt: torch.optim.Optimizer, views: list[Tensor], i: int) -> Tensor:
    out = swav(views)
    opt.zero_grad()
    out["loss"].backward()
    swav.on_after_backward(i)
    opt.step()
    swav.on_step_end(i, 100)
    return out["loss"].detach()


def naive_sinkhorn(scores: np.ndarray, eps: float, iters: int) -> np.ndarray:
    """Sinkhorn-Knopp with loops (float64): rows = samples, columns = prototypes."""
    n, k = scores.shape
    q = np.exp((scores - scores.max()) / eps)
    q /= q.sum()
    for _ in range(iters):
        for j in range(k):
            q[:, j] /= q[:, j].sum() * k
        for i in range(n):
            q[i, :] /= q[i, :].sum() * n
    return q * n


def test_queue_after_steps_matches_a_list(pool: Tensor) -> None:
    swav = make_swav(queue_start_step=2)
    rec = Recorder(swav)
    opt = torch.optim.AdamW(swav.parameters(), lr=1e-3)
    lists: list[list[Tensor]] = [[], []]
    for i in range(6):
        step(swav, opt, views_at(pool, i), i)
        if i >= 2:  # nothing is queued before queue_start_step
            for c in (0, 1):
                lists[c].extend(rec.z[-1][c * B : (c + 1) * B])
    assert len(lists[0]) == 16
    assert int(swav.queue_filled) == 10
    for c in (0, 1):
        torch.testing.assert_close(swav.queued(c), torch.stack(lists[c][-10:]))


def test_codes_and_loss_with_the_queue_equal_naive_sinkhorn(pool: Tensor) -> None:
    swav = make_swav(queue_length=12)
    rec = Recorder(swav)
    opt = torch.optim.AdamW(swav.parameters(), lr=1e-3)
    for i in range(2):  # 8 of 12 rows filled: the zero rows must be left out
        step(swav, opt, views_at(pool, i), i)
    assert int(swav.queue_filled) == 8
    past = [torch.cat([z[c * B : (c + 1) * B] for z in rec.z]) for c in (0, 1)]  # (8, D) each
    loss = swav(views_at(pool, 2))["loss"]
    z = rec.z[-1].double()
    w = swav.prototypes.weight.detach().double()
    scores = (z @ w.T).chunk(4)
    expected = 0.0
    for c in (0, 1):
        queued = past[c].double() @ w.T
        cat = torch.cat([queued, scores[c]]).numpy()
        q = naive_sinkhorn(cat, swav.epsilon, swav.sinkhorn_iterations)[-B:]
        got = swav.codes(scores[c].float(), c, use_queue=True)
        np.testing.assert_allclose(got.numpy(), q, rtol=1e-4, atol=1e-6)
        alone = naive_sinkhorn(scores[c].numpy(), swav.epsilon, swav.sinkhorn_iterations)
        assert np.abs(alone - q).max() > 1e-2  # the queue changes the codes
        sub = 0.0
        for v, s in enumerate(scores):
            if v != c:
                logp = F.log_softmax(s / swav.temperature, dim=1).numpy()
                sub -= float((q * logp).sum(1).mean())
        expected += sub / 3
    assert float(loss.detach()) == pytest.approx(expected / 2, rel=1e-4)


def test_state_dict_round_trip_resumes_the_queue(pool: Tensor) -> None:
    swav = make_swav()
    opt = torch.optim.AdamW(swav.parameters(), lr=1e-3)
    for i in range(3):
        step(swav, opt, views_at(pool, i), i)
    restored = make_swav()
    views = views_at(pool, 3)
    with torch.no_grad():
        assert float(restored(views)["loss"]) != float(swav(views)["loss"])  # can fail
    restored = make_swav()
    restored.load_state_dict(swav.state_dict())
    assert int(restored.queue_filled) == 10
    assert torch.equal(restored.queue, swav.queue)
    torch.testing.assert_close(restored(views)["loss"], swav(views)["loss"], rtol=0, atol=0)
    restored.on_step_end(3, 100)
    swav.on_step_end(3, 100)
    assert torch.equal(restored.queue, swav.queue)


def test_skipped_step_does_not_enqueue(pool: Tensor) -> None:
    swav = make_swav(queue_length=16)
    rec = Recorder(swav)
    skipped, applied = views_at(pool, 0), views_at(pool, 1)
    swav(skipped)  # the NaN guard skips this step: no on_step_end follows
    swav(applied)
    swav.on_step_end(0, 100)
    assert int(swav.queue_filled) == B  # one batch, not two
    torch.testing.assert_close(swav.queued(0), rec.z[1][:B])
    torch.testing.assert_close(swav.queued(1), rec.z[1][B : 2 * B])


class PoisonSecondCall(nn.Module):
    """Wraps the loop's view module: its second call returns NaN views."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls = 0

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Any:
        out = self.inner(x, generator)
        if self.calls == 1:
            out["views"] = [v * float("nan") for v in out["views"]]
        self.calls += 1
        return out


@pytest.fixture(scope="module")
def store(cmu_slide: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiling import tile_slides

    out = tmp_path_factory.mktemp("tiles")
    tile_slides([cmu_slide], out, mpp=0.5, size=224, progress=False, report=False)
    return out


def test_loop_skipped_step_leaves_the_queue_alone(store: Path, tmp_path: Path) -> None:
    params = {"proj_hidden_dim": 64, "proj_dim": 32, "num_prototypes": K, "queue_length": 64}
    ov = tiny_overrides("swav", store, tmp_path, steps=3) + [f"method.params={params}"]
    trainer = build_trainer(load_config(None, ov))
    trainer.views = PoisonSecondCall(trainer.views)
    trainer.fit()
    swav = trainer.method
    assert isinstance(swav, SwAV)
    assert int(swav.queue_filled) == 2 * B  # steps 1 and 3; step 2 was skipped
    assert torch.isfinite(swav.queue).all()


# ---------------------------------------------------------------- two processes (gloo)


def worker(rank: int, init_file: str, out_dir: str, queue: Tensor, z: Tensor) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        swav = make_swav(queue_length=8)
        swav.queue.copy_(queue)
        swav.queue_filled.fill_(6)  # 3 queued rows for each rank
        scores = F.linear(z[rank * B : (rank + 1) * B], swav.prototypes.weight.detach())
        torch.save(swav.codes(scores, 0, use_queue=True), Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_processes_share_the_queue_in_sinkhorn(pool: Tensor, tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(4)
    queue = F.normalize(torch.randn(2, 8, 32, generator=g), dim=2)
    queue[:, :2] = 0  # not yet filled
    z = F.normalize(torch.randn(WORLD * B, 32, generator=g), dim=1)
    args = (str(tmp_path / "init"), str(tmp_path), queue, z)
    mp.spawn(worker, args=args, nprocs=WORLD, join=True)
    got = torch.cat([torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)])

    w = make_swav().prototypes.weight.detach().double()
    cat = torch.cat([queue[0, 2:].double() @ w.T, z.double() @ w.T]).numpy()
    expected = naive_sinkhorn(cat, 0.05, 3)[-WORLD * B :]
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-4, atol=1e-6)
    assert math.isclose(float(got.sum()), WORLD * B, rel_tol=1e-5)  # each sample's row sums to 1
