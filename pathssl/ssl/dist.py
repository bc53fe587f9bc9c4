"""torch.distributed helpers that are no-ops in a single process.

All gathers assume every rank holds a tensor of the same shape (equal per-rank batches).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums each slice's gradient over ranks and returns this rank's.

    With DDP averaging parameter gradients over ``W`` ranks this gives exactly the gradient of
    the mean of the per-rank losses, i.e. of the loss over the global batch.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad.chunk(dist.get_world_size(), dim=0)[dist.get_rank()]


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` ``(B, ...)`` from all ranks -> ``(W * B, ...)``, differentiable."""
    if world_size() == 1:
        return x
    out: Tensor = _GatherWithGrad.apply(x)
    return out


@torch.no_grad()
def gather_no_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` ``(B, ...)`` from all ranks -> ``(W * B, ...)`` (rank order)."""
    if world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


@torch.no_grad()
def broadcast(x: Tensor, src: int = 0) -> Tensor:
    """``x`` as held by rank ``src`` on every rank (in place; returns ``x``)."""
    if world_size() > 1:
        dist.broadcast(x, src=src)
    return x


@torch.no_grad()
def all_reduce_sum(x: Tensor) -> Tensor:
    """Sum over ranks (returns a new tensor; ``x`` itself unchanged)."""
    x = x.clone()
    if world_size() > 1:
        dist.all_reduce(x)
    return x


@torch.no_grad()
def all_reduce_mean(x: Tensor) -> Tensor:
    return all_reduce_sum(x) / world_size()


@torch.no_grad()
def all_reduce_max(x: Tensor) -> Tensor:
    x = x.clone()
    if world_size() > 1:
        dist.all_reduce(x, op=dist.ReduceOp.MAX)
    return x
