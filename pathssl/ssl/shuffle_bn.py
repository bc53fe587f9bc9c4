"""Shuffling BN for MoCo's key encoder (He et al., "Momentum Contrast for Unsupervised Visual
Representation Learning", CVPR 2020, Sec. 3.3).

With BatchNorm the query and the key of one image, encoded from the same sub-batch, share that
sub-batch's statistics: the model can find its positive through them ("intra-batch
communication") instead of learning a good representation. Shuffling BN gives the key
encoder's BatchNorm a batch composition different from the query's:

- across processes (DDP): the key images of all ranks are gathered, shuffled with one
  permutation drawn on rank 0 and broadcast, each rank encodes its shard of the shuffled
  global batch (per-rank BN statistics), the keys are gathered and put back in order;
- in one process: the batch is permuted and split into ``groups`` sub-batches, each encoded
  on its own (BN statistics per group, as if each were one GPU's share), then un-permuted.

Queries keep the BN statistics of their own (per-process) batch. Without BatchNorm in the
encoder (a ViT) shuffling changes nothing, so the plain forward pass is used.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pathssl.ssl import dist

#: images per BatchNorm sub-batch in the paper's setting (batch 256 on 8 GPUs)
PAPER_GROUP_SIZE = 32


def has_batchnorm(module: nn.Module) -> bool:
    """True when ``module`` holds a BatchNorm layer (``BatchNorm1d/2d/3d`` or ``SyncBatchNorm``)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def group_count(batch: int, groups: int | None) -> int:
    """The number of key sub-batches in one process for a batch of ``batch``.

    ``groups`` None: ``batch // 32`` (the paper's 32 images per GPU, so a batch of 256 gives its
    8 groups); at least 2. Always at most ``batch // 2`` so that every group has >= 2 images
    (BatchNorm needs more than one); 1 (no shuffle) for a batch under 4."""
    wanted = max(2, batch // PAPER_GROUP_SIZE) if groups is None else int(groups)
    if wanted < 1:
        raise ValueError(f"shuffle_bn_groups must be >= 1 or None, got {groups}")
    return max(1, min(wanted, batch // 2))


def _keep_format(shard: Tensor, like: Tensor) -> Tensor:
    """``shard`` in ``like``'s memory format (channels_last survives the gather)."""
    if like.ndim == 4 and like.is_contiguous(memory_format=torch.channels_last):
        return shard.contiguous(memory_format=torch.channels_last)
    return shard


@torch.no_grad()
def encode_in_groups(encoder: nn.Module, x: Tensor, perm: Tensor, groups: int) -> Tensor:
    """One process: ``encoder`` on ``x[perm]`` split into ``groups`` consecutive sub-batches
    (sizes differ by at most 1, ``torch.tensor_split``), outputs returned in the order of ``x``.

    ``x``: ``(B, ...)``; ``perm``: a permutation of ``range(B)``. Returns ``(B, D)``."""
    shuffled = _keep_format(x[perm], x)
    out = torch.cat([encoder(part) for part in shuffled.tensor_split(groups)])
    keys = torch.empty_like(out)
    keys[perm] = out  # row j of the shuffled batch is sample perm[j]
    return keys


@torch.no_grad()
def encode_across_ranks(encoder: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """DDP: gather ``x`` ``(B, ...)`` of every rank -> ``(W * B, ...)`` in rank order; rank 0
    draws a permutation of the global batch (torch's global RNG on ``x``'s device) and
    broadcasts it; rank ``r`` encodes rows ``perm[r * B : (r + 1) * B]``; the keys of all ranks
    are gathered and un-permuted.

    Returns ``(keys, perm)``: ``keys`` ``(W * B, D)`` in the original global order (rank order,
    so this rank's own keys are rows ``r * B : (r + 1) * B``) and the permutation used."""
    b, w, r = x.shape[0], dist.world_size(), dist.rank()
    x_all = dist.gather_no_grad(x)
    if r == 0:
        perm = torch.randperm(w * b, device=x.device)
    else:
        perm = torch.empty(w * b, dtype=torch.long, device=x.device)
    dist.broadcast(perm, src=0)
    shard = _keep_format(x_all[perm[r * b : (r + 1) * b]], x)
    k_shuffled = dist.gather_no_grad(encoder(shard))
    keys = torch.empty_like(k_shuffled)
    keys[perm] = k_shuffled
    return keys, perm


@torch.no_grad()
def shuffle_bn_encode(encoder: nn.Module, x: Tensor, groups: int | None) -> Tensor:
    """Keys of ``x`` ``(B, ...)`` with Shuffling BN (see the module docstring); returns the keys
    of the global batch ``(W * B, D)`` in rank order (``W = 1``: ``(B, D)`` in the order of
    ``x``). Several processes: the ranks are the BN groups (``groups`` unused). One process:
    :func:`group_count` groups after a permutation drawn from torch's global RNG on ``x``'s
    device (none drawn when there is a single group). An encoder without BatchNorm, or one in
    eval mode (running statistics), is run on ``x`` directly and its outputs gathered."""
    if not (encoder.training and has_batchnorm(encoder)):
        return dist.gather_no_grad(encoder(x))
    if dist.world_size() > 1:
        return encode_across_ranks(encoder, x)[0]
    g = group_count(x.shape[0], groups)
    if g == 1:
        return encoder(x)
    perm = torch.randperm(x.shape[0], device=x.device)
    return encode_in_groups(encoder, x, perm, g)
