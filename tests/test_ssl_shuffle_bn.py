"""MoCo v2's Shuffling BN (He et al. 2020, Sec. 3.3) on real H&E crops and a ResNet-18.

One process: the keys equal an independent reference computed by hand (the key encoder in
train-mode BN, group by group over the same permutation, written back in the original order),
not the full-batch keys of the old behaviour; the key of an image depends only on its group,
while its query depends on the whole batch. Two processes (gloo, CPU): the ranks encode shards
of the global batch shuffled by rank 0's permutation, and the keys (in every rank's queue)
equal a single-process reference with that permutation and per-rank BN.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import Tensor, nn

from pathssl.models import build_backbone
from pathssl.ssl.moco import MoCoV2
from pathssl.ssl.shuffle_bn import encode_in_groups, group_count, shuffle_bn_encode

B = 8  # global batch
WORLD = 2


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def load_crops(data_dir: Path, n: int = B, seed: int = 0) -> Tensor:
    """``n`` 64x64 crops of a real H&E image, standardised per channel ``(n, 3, 64, 64)``."""
    img = cv2.imread(str(data_dir / "nuclei" / "hgsc_nest.jpg"), cv2.IMREAD_COLOR)
    assert img is not None
    rgb = cv2.cvtColor(img, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        y = int(rng.integers(0, rgb.shape[0] - 64))
        x = int(rng.integers(0, rgb.shape[1] - 64))
        out.append(rgb[y : y + 64, x : x + 64])
    t = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()
    return (t - t.mean((0, 2, 3), keepdim=True)) / t.std((0, 2, 3), keepdim=True)


@pytest.fixture(scope="module")
def crops(data_dir: Path) -> Tensor:
    return load_crops(data_dir)


def make_moco(backbone: str = "resnet18", **kwargs: Any) -> MoCoV2:
    torch.manual_seed(0)
    bb = build_backbone(backbone)
    return MoCoV2(bb, proj_hidden_dim=64, proj_dim=32, queue_size=64, **kwargs).train()


def keys_by_hand(encoder: nn.Module, x: Tensor, shards: list[Tensor]) -> Tensor:
    """Reference: ``encoder`` (train-mode BN) run on ``x[idx]`` for each index set ``idx`` of
    ``shards`` separately, each output row written to its sample's place, L2-normalised."""
    enc = copy.deepcopy(encoder).train()
    out = torch.zeros(x.shape[0], 32)
    with torch.no_grad():
        for idx in shards:
            out[idx] = F.normalize(enc(x[idx]), dim=1)
    return out


def test_group_count_follows_the_batch() -> None:
    assert group_count(256, None) == 8  # the paper: 8 GPUs x 32 images
    assert group_count(512, None) == 16
    assert group_count(8, None) == 2  # at least 2 groups
    assert group_count(8, 8) == 4  # never under 2 images a group
    assert group_count(3, None) == 1  # too small to split: no shuffle
    with pytest.raises(ValueError):
        group_count(8, 0)


def test_shuffle_bn_asks_for_per_rank_batchnorm() -> None:
    """With Shuffling BN the loop must not make BatchNorm synchronised (``sync_bn`` False)."""
    assert make_moco().sync_bn is False
    assert make_moco(shuffle_bn=False).sync_bn is True


def test_single_process_keys_match_groupwise_reference(crops: Tensor) -> None:
    moco = make_moco(shuffle_bn_groups=4)
    views = [crops.flip(-1), crops]
    torch.manual_seed(5)
    perm = torch.randperm(B)
    assert not torch.equal(perm, torch.arange(B))
    expected = keys_by_hand(moco.key_encoder, crops, list(perm.view(4, 2)))  # 4 groups of 2
    full_batch = keys_by_hand(moco.key_encoder, crops, [torch.arange(B)])  # the old behaviour
    assert (expected - full_batch).abs().max() > 0.05  # group BN differs from full-batch BN

    torch.manual_seed(5)  # the permutation is the forward pass's first draw
    moco(views)["loss"].backward()
    moco.on_step_end(0, 10)  # commits the keys to the queue, in the batch's original order
    torch.testing.assert_close(moco.queue[:B], expected, rtol=1e-5, atol=1e-5)
    assert int(moco.queue_ptr) == B

    off = make_moco(shuffle_bn=False)  # the option off: full-batch keys, as before
    off(views)
    off.on_step_end(0, 10)
    torch.testing.assert_close(off.queue[:B], full_batch, rtol=1e-5, atol=1e-5)


def test_key_sees_its_group_query_sees_the_batch(crops: Tensor) -> None:
    """Key BN statistics are the group's: changing an image of another group leaves the key of
    image 0 bit-identical, changing one of its group moves it. The query's BN statistics are the
    whole batch's: any change moves query 0."""
    moco = make_moco()
    perm = torch.tensor([3, 0, 6, 1, 2, 7, 4, 5])  # groups {3, 0, 6, 1} and {2, 7, 4, 5}

    def key0(x: Tensor) -> Tensor:
        return encode_in_groups(moco.key_encoder, x, perm, 2)[0]

    def query0(x: Tensor) -> Tensor:
        with torch.no_grad():
            return moco.projector(moco.backbone(x))[0]

    other, same = crops.clone(), crops.clone()
    other[5] = crops[5].flip(-1)  # image 5: the other group
    same[6] = crops[6].flip(-1)  # image 6: image 0's group
    assert torch.equal(key0(other), key0(crops))
    assert (key0(same) - key0(crops)).abs().max() > 1e-3
    assert (query0(other) - query0(crops)).abs().max() > 1e-3


def test_no_effect_without_batchnorm_or_in_eval(crops: Tensor) -> None:
    vit = make_moco("vit_tiny", shuffle_bn_groups=4)
    with torch.no_grad():
        plain = vit.key_encoder(crops)
    torch.manual_seed(1)
    state = torch.get_rng_state()
    assert torch.equal(shuffle_bn_encode(vit.key_encoder, crops, 4), plain)
    assert torch.equal(torch.get_rng_state(), state)  # no permutation drawn for a ViT
    resnet = make_moco(shuffle_bn_groups=4).eval()
    with torch.no_grad():
        plain = resnet.key_encoder(crops)
    assert torch.equal(shuffle_bn_encode(resnet.key_encoder, crops, 4), plain)


# ---------------------------------------------------------------- two processes (gloo)


def worker(rank: int, init_file: str, out_dir: str, crops: Tensor) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        moco = make_moco()
        seen: list[Tensor] = []
        moco.key_encoder.register_forward_hook(lambda m, i, o: seen.append(i[0].detach().clone()))
        ddp = nn.parallel.DistributedDataParallel(moco, broadcast_buffers=False)
        b = B // WORLD
        local = crops[rank * b : (rank + 1) * b]
        torch.manual_seed(100 + rank)  # ranks draw differently: only rank 0's draw may count
        ddp([local.flip(-1), local])["loss"].backward()
        moco.on_step_end(0, 10)
        torch.save(
            {"shard": seen[0], "queue": moco.queue[:B].clone(), "ptr": int(moco.queue_ptr)},
            Path(out_dir) / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def test_two_processes_shuffle_the_global_batch(crops: Tensor, tmp_path: Path) -> None:
    mp.spawn(worker, args=(str(tmp_path / "init"), str(tmp_path), crops), nprocs=WORLD, join=True)
    outs = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    torch.manual_seed(100)
    perm = torch.randperm(B)  # rank 0's first draw
    torch.manual_seed(101)
    assert not torch.equal(torch.randperm(B), perm)  # rank 1's own draw would differ

    # each rank encoded its shard of the global batch shuffled by rank 0's permutation
    shards = perm.view(WORLD, B // WORLD)
    for r, out in enumerate(outs):
        assert torch.equal(out["shard"], crops[shards[r]])

    moco = make_moco()
    expected = keys_by_hand(moco.key_encoder, crops, list(shards))  # per-rank BN, unshuffled
    unshuffled = keys_by_hand(moco.key_encoder, crops, list(torch.arange(B).view(WORLD, -1)))
    assert (expected - unshuffled).abs().max() > 0.05  # the old behaviour: own local batch
    for out in outs:  # every rank's queue: the global batch's keys in rank order
        torch.testing.assert_close(out["queue"], expected, rtol=1e-5, atol=1e-5)
        assert out["ptr"] == B
