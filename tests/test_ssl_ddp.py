"""SimCLR over 2 processes (gloo, CPU, DistributedDataParallel) gives the same loss and the same
gradients as one process on the whole global batch: NT-Xent sees the global batch through the
differentiable all-gather. MoCo v2's queue receives the keys of both ranks.

BatchNorm is removed from the projector here: CPU has no SyncBatchNorm, and per-rank batch
statistics would (correctly) differ from single-process ones. The ViT backbone has no BN.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from pathssl.models import build_backbone
from pathssl.ssl import METHODS, SSLMethod

WORLD = 2
BATCH = 8  # global


def make_method() -> SSLMethod:
    torch.manual_seed(0)
    method = METHODS.build(
        "simclr", backbone=build_backbone("vit_tiny"), proj_hidden_dim=32, proj_dim=16
    )
    net = method.projector.net
    for i, layer in enumerate(net):
        if isinstance(layer, nn.BatchNorm1d):
            net[i] = nn.Identity()
    return method


def make_views() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(BATCH, 3, 64, 64, generator=g) for _ in range(2)]


def worker(rank: int, init_file: str, out_file: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        method = make_method()
        ddp = nn.parallel.DistributedDataParallel(method)
        per_rank = BATCH // WORLD
        views = [v[rank * per_rank : (rank + 1) * per_rank] for v in make_views()]
        loss = ddp(views)["loss"]
        loss.backward()  # DDP averages parameter gradients over ranks
        mean_loss = loss.detach().clone()
        dist.all_reduce(mean_loss)
        mean_loss /= WORLD
        # MoCo v2: the queue receives the keys of every rank, in rank order
        torch.manual_seed(0)
        moco = METHODS.build(
            "moco_v2",
            backbone=build_backbone("vit_tiny"),
            proj_hidden_dim=32,
            proj_dim=16,
            queue_size=16,
        )
        moco(views)["loss"].backward()
        moco.on_step_end(0, 10)
        if rank == 0:
            grads = {n: p.grad.clone() for n, p in method.named_parameters() if p.grad is not None}
            torch.save(
                {
                    "loss": mean_loss,
                    "grads": grads,
                    "queue": moco.queue.clone(),
                    "queue_ptr": moco.queue_ptr.clone(),
                },
                out_file,
            )
    finally:
        dist.destroy_process_group()


def test_simclr_two_process_ddp_matches_single_process(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    out_file = tmp_path / "rank0.pt"
    mp.spawn(worker, args=(str(tmp_path / "init"), str(out_file)), nprocs=WORLD, join=True)
    ddp = torch.load(out_file)

    method = make_method()
    loss = method(make_views())["loss"]
    loss.backward()
    torch.testing.assert_close(ddp["loss"], loss.detach(), rtol=1e-5, atol=1e-6)
    grads = {n: p.grad for n, p in method.named_parameters() if p.grad is not None}
    assert set(ddp["grads"]) == set(grads) and len(grads) > 10
    for name, grad in grads.items():
        torch.testing.assert_close(ddp["grads"][name], grad, rtol=1e-4, atol=1e-6, msg=name)

    torch.manual_seed(0)
    moco = METHODS.build(
        "moco_v2",
        backbone=build_backbone("vit_tiny"),
        proj_hidden_dim=32,
        proj_dim=16,
        queue_size=16,
    )
    with torch.no_grad():
        keys = nn.functional.normalize(moco.key_encoder(make_views()[1]), dim=1)
    torch.testing.assert_close(ddp["queue"][:BATCH], keys, rtol=1e-5, atol=1e-6)
    assert int(ddp["queue_ptr"]) == BATCH
