"""Optimisers (SGD, LARS, AdamW), per-group learning rates and the schedules: warmup + cosine or
warmup + step decay for the learning rate, optionally a cosine weight-decay schedule."""

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


def configure_groups(
    groups: list[dict[str, Any]], options: dict[str, dict[str, float]], lr: float
) -> list[dict[str, Any]]:
    """Per parameter group peak rates and weight decays.

    ``groups``: ``{"params", "name", ...}`` dicts (unnamed groups are named ``decay``,
    ``no_decay`` in that order, the layout of ``SSLMethod.param_groups``, else ``group<i>``);
    ``options``: ``{name: {"lr_scale" | "lr" | "weight_decay": value}}``. Every group gets an
    explicit ``lr``: ``options[name]["lr"]``, else ``lr * lr_scale`` (default 1)."""
    default_names = ("decay", "no_decay") if len(groups) == 2 else ()
    out = []
    for i, group in enumerate(groups):
        g = dict(group)
        g.setdefault("name", default_names[i] if default_names else f"group{i}")
        out.append(g)
    names = [g["name"] for g in out]
    for name in options:
        if name not in names:
            raise ValueError(
                f"optim.groups.{name}: no parameter group named {name!r} (groups: "
                f"{', '.join(names)}); use one of those names"
            )
    for g in out:
        opts = options.get(g["name"], {})
        g["lr"] = float(opts["lr"]) if "lr" in opts else lr * float(opts.get("lr_scale", 1.0))
        if "weight_decay" in opts:
            g["weight_decay"] = float(opts["weight_decay"])
    return out


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


class WarmupStep:
    """LR multiplier at step ``s``: ``(s + 1) / warmup`` during warmup, then ``gamma ** k``
    where ``k`` is the number of ``milestones`` (step numbers) at or before ``s``."""

    def __init__(self, warmup_steps: int, milestones: list[int], gamma: float = 0.1) -> None:
        self.warmup_steps = warmup_steps
        self.milestones = [int(m) for m in milestones]
        self.gamma = gamma

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        result: float = self.gamma ** sum(step >= m for m in self.milestones)
        return result


def cosine_factor(step: int, max_steps: int, end_ratio: float) -> float:
    """Cosine from 1 at step 0 to ``end_ratio`` at ``max_steps`` (constant after)."""
    t = min(1.0, step / max(1, max_steps))
    return end_ratio + (1 - end_ratio) * 0.5 * (1 + math.cos(math.pi * t))


class Schedule(torch.optim.lr_scheduler.LambdaLR):
    """The learning-rate multiplier ``lr_lambda`` (per group: ``group lr = its peak *
    lr_lambda(step)``) and, when ``wd_end_ratio`` is set, the weight decay of every group:
    ``its initial weight decay * cosine_factor(step, max_steps, wd_end_ratio)`` (groups without
    weight decay keep none). Step it once per optimisation step; its state is checkpointable
    with tensors-only loading."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        lr_lambda: Callable[[int], float],
        wd_end_ratio: float | None = None,
        max_steps: int = 1,
    ) -> None:
        self.wd_end_ratio = wd_end_ratio
        self.wd_steps = max_steps
        if wd_end_ratio is not None:
            for g in optimizer.param_groups:
                g.setdefault("initial_weight_decay", g["weight_decay"])
        super().__init__(optimizer, lr_lambda)

    def step(self, epoch: int | None = None) -> None:
        super().step(epoch)
        if self.wd_end_ratio is not None:
            f = cosine_factor(self.last_epoch, self.wd_steps, self.wd_end_ratio)
            for g in self.optimizer.param_groups:
                g["weight_decay"] = g["initial_weight_decay"] * f


def build_schedule(
    optimizer: torch.optim.Optimizer,
    max_steps: int,
    schedule: str = "cosine",
    warmup_steps: int = 0,
    min_ratio: float = 0.0,
    milestones: list[int] | None = None,
    gamma: float = 0.1,
    weight_decay: float = 0.0,
    weight_decay_end: float | None = None,
) -> Schedule:
    """``cosine`` (:class:`WarmupCosine`) or ``step`` (:class:`WarmupStep`), plus the cosine
    weight-decay schedule from ``weight_decay`` to ``weight_decay_end`` when the latter is set."""
    lam: Callable[[int], float]
    if schedule == "cosine":
        lam = WarmupCosine(warmup_steps, max_steps, min_ratio)
    elif schedule == "step":
        lam = WarmupStep(warmup_steps, list(milestones or []), gamma)
    else:
        raise ValueError(f"optim.schedule: unknown schedule {schedule!r} (cosine, step)")
    ratio = None
    if weight_decay_end is not None:
        if weight_decay <= 0:
            raise ValueError(
                "optim.weight_decay_end needs optim.weight_decay > 0 (the schedule scales each "
                f"group's weight decay by weight_decay_end / weight_decay), got {weight_decay}"
            )
        ratio = weight_decay_end / weight_decay
    return Schedule(optimizer, lam, ratio, max_steps)


def warmup_cosine(
    optimizer: torch.optim.Optimizer, warmup_steps: int, max_steps: int, min_ratio: float = 0.0
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` with :class:`WarmupCosine` (step it once per optimisation step)."""
    return Schedule(optimizer, WarmupCosine(warmup_steps, max_steps, min_ratio))
