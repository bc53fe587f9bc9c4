"""PIRL (Misra & van der Maaten 2020): the NCE loss against a per-image float64 reference (the
paper's Eq. 3-5 written out), the memory bank's momentum update (one step's indices only, all
ranks' under 2-process DDP), the dataset index reaching the method through the training loop,
the trunk loading into ``pathssl eval`` and the nuclei model, and bitwise resume (slow)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import test_ssl_pretext_tasks as pretext
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from test_train_methods import tiny_overrides

from pathssl.models import build_backbone
from pathssl.ssl import METHODS
from pathssl.ssl.pirl import PIRL

SMALL = {"proj_dim": 8, "bank_size": 40, "num_negatives": 12, "num_permutations": 24}


def build(**kw: object) -> PIRL:
    torch.manual_seed(0)
    m = METHODS.build("pirl", backbone=build_backbone("resnet18"), **{**SMALL, **kw})
    assert isinstance(m, PIRL)
    return m


@pytest.fixture(scope="module")
def store(cmu_slide: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiling import tile_slides

    out = tmp_path_factory.mktemp("tiles")
    tile_slides([cmu_slide], out, mpp=0.5, size=224, progress=False, report=False)
    return out


def test_loss_matches_a_per_image_reference() -> None:
    method = build().eval()
    b, s, t = 3, 72, 0.07
    x0, x1 = torch.randn(b, 3, s, s), torch.randn(b, 3, s, s)
    index = torch.tensor([5, 0, 31])
    torch.manual_seed(5)
    with torch.no_grad():
        out = method([x0, x1], index=index)
    # the same draws in the same order: tile jitter (B, 9, 2), permutation labels (B,), negatives
    torch.manual_seed(5)
    cell, p = 24, round(64 / 75 * 24)
    j = min(round(0.07 * cell), (cell - p) // 2)
    shift = torch.randint(-j, j + 1, (b, 9, 2))
    y = torch.randint(24, (b,))
    neg = torch.randint(40, (12,))
    f, g = [], []
    with torch.no_grad():
        for i in range(b):
            f.append(F.normalize(method.image_head(method.backbone(x0[i : i + 1])), dim=1)[0])
            tiles = []
            for k in range(9):
                r = (k // 3) * cell + (cell - p) // 2 + int(shift[i, k, 0])
                c = (k % 3) * cell + (cell - p) // 2 + int(shift[i, k, 1])
                tile = x1[i, :, r : r + p, c : c + p]
                m, sd = tile.mean((1, 2), keepdim=True), tile.std((1, 2), keepdim=True)
                tiles.append((tile - m) / (sd + 1e-5))
            order = [int(q) for q in method.tiles.permutations[y[i]]]
            per_tile = [method.tile_head(method.backbone(tiles[q][None]))[0] for q in order]
            g.append(F.normalize(method.jigsaw_head(torch.cat(per_tile)[None]), dim=1)[0])
    bank = method.memory.double()
    n, k_neg = 40, 12
    # Z: n times the mean of exp(s / T) over f's scores with its positive and the negatives
    scores = [
        float(f[i].double() @ bank[q]) for i in range(b) for q in [int(index[i]), *neg.tolist()]
    ]
    z = n * sum(math.exp(v / t) for v in scores) / len(scores)

    def nce(q: torch.Tensor, i: int) -> float:
        h = lambda v: math.exp(v / t) / z / (math.exp(v / t) / z + k_neg / n)  # noqa: E731
        pos = float(q.double() @ bank[int(index[i])])
        return -math.log(h(pos)) - sum(math.log(1 - h(float(q.double() @ bank[m]))) for m in neg)

    loss_t = sum(nce(g[i], i) for i in range(b)) / b
    loss_i = sum(nce(f[i], i) for i in range(b)) / b
    assert float(out["loss_jigsaw"]) == pytest.approx(loss_t, rel=1e-4)
    assert float(out["loss_image"]) == pytest.approx(loss_i, rel=1e-4)
    assert float(out["loss"]) == pytest.approx(0.5 * loss_t + 0.5 * loss_i, rel=1e-4)
    assert torch.isnan(method.log_partition)  # eval: estimated, not stored


def test_memory_bank_momentum_update_and_partition() -> None:
    method = build().train()
    views = [torch.randn(4, 3, 64, 64) for _ in range(2)]
    skipped = torch.tensor([1, 2, 3, 4])
    index = torch.tensor([7, 3, 39, 0])
    before = method.memory.clone()
    method(views, index=skipped)  # a step the NaN guard skips: no on_step_end
    log_z = method.log_partition.clone()
    assert torch.isfinite(log_z)  # estimated once, at the first training step
    method(views, index=index)
    torch.testing.assert_close(method.log_partition, log_z)  # not re-estimated
    # no optimiser step: the same weights and train-mode BN give the step's embeddings again
    with torch.no_grad():
        f = F.normalize(method.image_head(method.backbone(views[0])), dim=1)
    method.on_step_end(0, 10)
    expected = before.clone()
    for row, i in enumerate(index.tolist()):
        mixed = 0.5 * before[i] + 0.5 * f[row]
        expected[i] = mixed / mixed.norm()
    torch.testing.assert_close(method.memory, expected)
    assert torch.equal(method.memory[5], before[5])  # the skipped step's rows are untouched
    assert int(method.global_step) == 1


def test_index_outside_the_bank_is_refused() -> None:
    method = build()
    views = [torch.randn(2, 3, 64, 64) for _ in range(2)]
    with pytest.raises(ValueError, match="bank_size"):
        method(views, index=torch.tensor([0, 40]))
    with pytest.raises(ValueError, match="index"):
        method(views)


def _ddp_worker(rank: int, init_file: str, out_file: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        method = build(bank_size=16)
        ddp = torch.nn.parallel.DistributedDataParallel(method)
        g = torch.Generator().manual_seed(rank)
        views = [torch.randn(2, 3, 64, 64, generator=g) for _ in range(2)]
        index = torch.tensor([2, 5]) if rank == 0 else torch.tensor([9, 14])
        ddp(views, index=index)["loss"].backward()
        method.on_step_end(0, 1)
        with torch.no_grad():
            f = F.normalize(method.image_head(method.backbone(views[0])), dim=1)
        torch.save(
            {"memory": method.memory, "f": f, "log_z": method.log_partition}, out_file + str(rank)
        )
    finally:
        dist.destroy_process_group()


def test_two_process_bank_update_uses_every_rank(tmp_path: Path) -> None:
    out = str(tmp_path / "rank")
    mp.spawn(_ddp_worker, args=(str(tmp_path / "init"), out), nprocs=2, join=True)
    r0, r1 = torch.load(out + "0"), torch.load(out + "1")
    assert torch.equal(r0["memory"], r1["memory"])  # both ranks hold the same bank
    assert torch.equal(r0["log_z"], r1["log_z"])  # one Z for the global batch
    before = build(bank_size=16).memory
    changed = (r0["memory"] != before).any(1).nonzero().flatten().tolist()
    assert changed == [2, 5, 9, 14]
    # each rank's rows mixed with that rank's embeddings (no optimiser step: recomputed exactly)
    for rows, f in (([2, 5], r0["f"]), ([9, 14], r1["f"])):
        for j, i in enumerate(rows):
            mixed = 0.5 * before[i] + 0.5 * f[j]
            torch.testing.assert_close(r0["memory"][i], mixed / mixed.norm())


def test_the_loop_hands_the_dataset_index_over(store: Path, tmp_path: Path) -> None:
    from pathssl.train import build_trainer, load_config

    trainer = build_trainer(load_config(None, tiny_overrides("pirl", store, tmp_path)))
    batch = next(iter(trainer.loader))
    inputs = trainer.batch_step.prepare(batch)
    assert torch.equal(inputs.tile_index, batch["index"])
    method = trainer.method
    torch.manual_seed(1)
    ref = method(inputs.views, index=batch["index"])["loss"]
    torch.manual_seed(1)
    got = trainer.batch_step.forward(trainer.model, inputs)["loss"]
    torch.testing.assert_close(got, ref)
    before = method.memory.clone()
    trainer.fit()
    seen = (method.memory != before).any(1)
    assert 0 < int(seen.sum()) <= 8  # 2 steps x 4 tiles, only the tiles drawn
    ckpt = torch.load(tmp_path / "last.pt", map_location="cpu", weights_only=False)
    assert torch.equal(ckpt["method"]["memory"], method.memory)  # the bank is checkpointed


def test_trunk_loads_into_eval_and_nuclei(store: Path, tmp_path: Path) -> None:
    pretext.test_trunk_loads_into_eval_and_nuclei("pirl", store, tmp_path)


@pytest.mark.slow
def test_resume_after_kill_is_bitwise_exact(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pretext.test_resume_after_kill_is_bitwise_exact("pirl", store, tmp_path, monkeypatch)
