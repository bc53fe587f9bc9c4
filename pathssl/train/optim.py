"""Optimisers (SGD, LARS, AdamW) and the warmup + cosine learning-rate schedule."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling (You, Gitman, Ginsburg 2017,
    arXiv:1708.03888), as used by SimCLR/BYOL/Barlow Twins.

    Per parameter: ``d = grad + wd * w``; for parameters in groups that are not excluded
    (``lars_exclude``, default: groups without weight decay, i.e. biases and norms),
    ``d *= eta * ||w|| / ||d||`` when both norms are positive; then ``buf = m * buf + d``,
    ``w -= lr * buf``.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        eta: float = 0.001,
    ) -> None:
        if lr < 0:
            raise ValueError(f"invalid learning rate {lr}")
        super().__init__(
            params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "eta": eta}
        )

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            wd, mom, eta = group["weight_decay"], group["momentum"], group["eta"]
            exclude = group.get("lars_exclude", wd == 0)
            for p in group["params"]:
                if p.grad is None:
                    continue
                d: Tensor = p.grad
                if wd != 0:
                    d = d.add(p, alpha=wd)
                if not exclude:
                    w_norm = torch.linalg.vector_norm(p)
                    d_norm = torch.linalg.vector_norm(d)
                    trust = torch.where(
                        (w_norm > 0) & (d_norm > 0), eta * w_norm / d_norm, torch.ones_like(w_norm)
                    )
                    d = d.mul(trust)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = d.clone()
                else:
                    state["momentum_buffer"].mul_(mom).add_(d)
                p.add_(state["momentum_buffer"], alpha=-group["lr"])
        return loss


def scaled_lr(base_lr: float, global_batch: int, scaling: str) -> float:
    """Peak learning rate: ``base_lr * global_batch / 256`` (linear), ``* sqrt(.../256)``
    (sqrt) or ``base_lr`` (none)."""
    if scaling == "linear":
        return base_lr * global_batch / 256
    if scaling == "sqrt":
        return base_lr * math.sqrt(global_batch / 256)
    if scaling == "none":
        return base_lr
    raise ValueError(f"unknown lr scaling {scaling!r} (linear, sqrt, none)")


def build_optimizer(
    name: str,
    param_groups: list[dict[str, Any]],
    lr: float,
    weight_decay: float,
    momentum: float = 0.9,
    betas: tuple[float, float] = (0.9, 0.999),
    lars_eta: float = 0.001,
) -> torch.optim.Optimizer:
    """``sgd`` | ``lars`` | ``adamw`` over ``param_groups`` (groups keep their own
    ``weight_decay``; ``weight_decay`` is the default for groups without one)."""
    if name == "sgd":
        return torch.optim.SGD(param_groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "lars":
        return LARS(param_groups, lr=lr, momentum=momentum, weight_decay=weight_decay, eta=lars_eta)
    if name == "adamw":
        return torch.optim.AdamW(param_groups, lr=lr, betas=betas, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r} (sgd, lars, adamw)")


class WarmupCosine:
    """LR multiplier at step ``s``: ``(s + 1) / warmup`` during warmup, then cosine from 1 to
    ``min_ratio`` at ``max_steps`` (a picklable callable for ``LambdaLR``)."""

    def __init__(self, warmup_steps: int, max_steps: int, min_ratio: float = 0.0) -> None:
        self.warmup_steps = warmup_steps
        self.max_steps = max_steps
        self.min_ratio = min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        span = max(1, self.max_steps - self.warmup_steps)
        t = min(1.0, (step - self.warmup_steps) / span)
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * t))


def warmup_cosine(
    optimizer: torch.optim.Optimizer, warmup_steps: int, max_steps: int, min_ratio: float = 0.0
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` with :class:`WarmupCosine` (step it once per optimisation step)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, WarmupCosine(warmup_steps, max_steps, min_ratio)
    )
