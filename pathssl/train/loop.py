"""The one training loop: every SSL method, the supervised nuclei head and fine-tuning run
through it; :mod:`pathssl.train.assemble` builds its :class:`Trainer` from the shared config
sections (the only place one is constructed).

What a batch means is a small pluggable :class:`BatchStep`: ``prepare(batch)`` (outside autocast)
makes the model's inputs on the device, ``forward(model, inputs)`` (under autocast) returns
``{"loss": scalar, **logs}``. Its kinds live in :mod:`.steps`: :class:`ViewStep` (SSL: uint8
tiles -> batched views on the device -> ``method(views)``), :class:`SupervisedStep`
(``{"image", **targets}`` -> ``module(images, targets)``), ``MixUpStep`` (a supervised batch
mixed) and ``PairedStep`` (two data streams, :mod:`.streams`, in one step).

Shared by both, per step: bf16 autocast (CUDA) -> backward -> method hooks (when the module has
them) -> gradient clipping -> NaN/inf guard -> optimiser and scheduler step -> EMA/queue updates;
metrics JSONL, progress, and checkpoints every ``ckpt_every`` steps (atomic) that allow an exact
resume. An optional :class:`Validation` scores the model every ``every`` steps, keeps the best
weights in ``best.pt`` (a checkpoint follows every improvement, so a resumed run never holds a
``best.pt`` newer than its state) and stops early after ``patience`` scores without improvement.
"""

from __future__ import annotations

import io
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import Tensor, nn

from pathssl.models.backbones import trunk_state_dict
from pathssl.train.checkpoint import (
    CHECKPOINT_NAME,
    check_resumable,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from pathssl.train.distributed import DistInfo, any_true
from pathssl.train.logger import MetricsLogger, truncate_metrics
from pathssl.train.steps import SupervisedStep, ViewStep

__all__ = [
    "BatchSource",
    "BatchStep",
    "LoopSettings",
    "SupervisedStep",
    "Trainer",
    "TrainingDiverged",
    "Validation",
    "ViewStep",
]


class TrainingDiverged(RuntimeError):
    """Too many consecutive steps had a non-finite loss or gradient."""


@dataclass
class LoopSettings:
    """How the loop runs (see :class:`pathssl.train.config.TrainConfig`)."""

    max_steps: int
    out_dir: Path
    ckpt_every: int = 500
    log_every: int = 10
    bf16: bool = False
    clip_grad: float | None = None
    max_bad_steps: int = 10
    progress: bool = True


@dataclass
class Validation:
    """Periodic validation inside the loop.

    ``run()`` is called with the module in eval mode and gradients off, every ``every`` steps and
    after the last one; it returns metrics (logged as ``val`` rows of ``metrics.jsonl``).
    ``monitor`` names the metric to select on (``mode`` ``"max"`` or ``"min"``); the module's
    weights at its best value so far are written to ``out_dir/best.pt``. ``patience``: stop after
    this many validations in a row without an improvement of more than ``min_delta`` (None:
    never stop early). A NaN score never counts as an improvement. ``keep_best`` False: the
    best value is tracked and logged but no ``best.pt`` is written. ``main_only``: under DDP
    only rank 0 runs ``run()`` (the others get its scores)."""

    run: Callable[[], dict[str, float]]
    every: int
    monitor: str
    mode: str = "max"
    patience: int | None = None
    min_delta: float = 0.0
    keep_best: bool = True
    main_only: bool = False

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ValueError(f"validation every must be >= 1 step, got {self.every}")
        if self.mode not in ("max", "min"):
            raise ValueError(f"validation mode must be max or min, got {self.mode!r}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience must be >= 1 or None, got {self.patience}")

    def improves(self, value: float, best: float | None) -> bool:
        if math.isnan(value):
            return False
        if best is None:
            return True
        return (
            value > best + self.min_delta if self.mode == "max" else value < best - self.min_delta
        )


BEST_NAME = "best.pt"


class ResumableOrder(Protocol):
    """A sampler that can restart after ``consumed`` samples (``ResumableSampler``)."""

    def state_dict(self, consumed: int) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class BatchSource(Protocol):
    """What the loop iterates: a ``DataLoader`` or :class:`~pathssl.train.streams.PairedLoader`
    (``batch_size``: the per-process batch the sampler's consumed count is measured in)."""

    @property
    def batch_size(self) -> int | None: ...

    def __iter__(self) -> Any: ...


class BatchStep(Protocol):
    """How one loader batch becomes a loss. ``prepare`` runs outside autocast (no graph needed);
    ``forward`` runs under autocast and returns ``{"loss": scalar tensor, **logs}``."""

    def prepare(self, batch: Any) -> Any: ...

    def forward(self, model: nn.Module, inputs: Any) -> dict[str, Tensor]: ...


class Trainer:
    """Runs ``method`` on batches from ``loader`` (whose sampler is ``sampler``).

    ``batch_step``: what a batch means (:class:`ViewStep`, :class:`SupervisedStep`); ``method``:
    the module that owns the parameters and buffers; its optional hooks ``on_after_backward(step)``,
    ``on_step_end(step, max_steps)`` and ``export_backbone()`` (a ``trunk`` in checkpoints) are
    called when present; ``model``: what to call for the forward pass (``method`` itself, or its
    DDP wrapper); ``generator``: the augmentation generator checkpointed with the RNG states;
    ``meta``: stored in every checkpoint; ``validation``: optional :class:`Validation`.
    """

    def __init__(
        self,
        method: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,  # see pathssl.train.optim.Schedule
        loader: BatchSource,
        sampler: ResumableOrder,
        batch_step: BatchStep,
        device: torch.device,
        settings: LoopSettings,
        meta: dict[str, Any],
        generator: torch.Generator | None = None,
        dist_info: DistInfo | None = None,
        model: nn.Module | None = None,
        validation: Validation | None = None,
    ) -> None:
        self.method = method
        self.model = model if model is not None else method
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.loader = loader
        self.sampler = sampler
        self.batch_step = batch_step
        self.device = device
        self.generator = generator
        self.s = settings
        self.meta = meta
        self.dist = dist_info or DistInfo()
        self.batch_size = int(loader.batch_size or 1)
        self.global_batch = self.batch_size * self.dist.world_size
        self.step = 0
        self.bad_streak = 0
        self.metrics = MetricsLogger(settings.out_dir, enabled=self.dist.is_main)
        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        self.validation = validation
        self.best: float | None = None  # best monitored validation value so far
        self.best_step = 0
        self.best_scores: dict[str, float] = {}
        self.stale = 0  # validations in a row without improvement
        self.stopped_early = False

    @property
    def views(self) -> nn.Module:
        """The view module of a :class:`ViewStep` (replaceable, e.g. to inject bad views)."""
        assert isinstance(self.batch_step, ViewStep), "views: only an SSL ViewStep has views"
        return self.batch_step.views

    @views.setter
    def views(self, module: nn.Module) -> None:
        assert isinstance(self.batch_step, ViewStep), "views: only an SSL ViewStep has views"
        self.batch_step.views = module

    def _hook(self, name: str, *args: int) -> None:
        fn = getattr(self.method, name, None)
        if callable(fn):
            fn(*args)

    # ----------------------------------------------------------------- checkpoints
    @property
    def checkpoint_path(self) -> Path:
        return Path(self.s.out_dir) / CHECKPOINT_NAME

    def state(self) -> dict[str, Any]:
        """The checkpoint payload (see :mod:`pathssl.train.checkpoint`)."""
        rng = rng_state(self.generator)
        rngs: list[Any] = [rng]
        if self.dist.world_size > 1:  # gather as bytes: pickled tensors break all_gather_object
            buf = io.BytesIO()
            torch.save(rng, buf)
            blobs: list[Any] = [None] * self.dist.world_size
            dist.all_gather_object(blobs, buf.getvalue())
            rngs = [torch.load(io.BytesIO(b), weights_only=True) for b in blobs]
        return {
            **self._trunk(),
            "method": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "sampler": self.sampler.state_dict(self.step * self.global_batch),
            "rng": rngs,
            "step": self.step,
            "meta": self.meta,
            "validation": {
                "best": self.best,
                "best_step": self.best_step,
                "best_scores": self.best_scores,
                "stale": self.stale,
            },
        }

    def _trunk(self) -> dict[str, Any]:
        """``{"trunk": torchvision-named backbone weights}`` when the module exports one."""
        export = getattr(self.method, "export_backbone", None)
        return {"trunk": trunk_state_dict(export())} if callable(export) else {}

    def save(self) -> Path | None:
        payload = self.state()  # every rank takes part (RNG gather)
        path = None
        if self.dist.is_main:
            path = save_checkpoint(self.checkpoint_path, payload)
        if self.dist.world_size > 1:
            dist.barrier()
        return path

    def resume(self, path: str | Path | None = None) -> bool:
        """Load ``path`` (default ``out_dir/last.pt``) if it exists; True when resumed."""
        path = Path(path) if path is not None else self.checkpoint_path
        if not path.is_file():
            return False
        ckpt = load_checkpoint(path)
        check_resumable(ckpt, self.meta, path)
        self.method.load_state_dict(ckpt["method"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.sampler.load_state_dict(ckpt["sampler"])
        rngs = ckpt["rng"]
        set_rng_state(
            rngs[self.dist.rank] if len(rngs) == self.dist.world_size else rngs[0], self.generator
        )
        self.step = int(ckpt["step"])
        val = ckpt.get("validation") or {}
        self.best = val.get("best")
        self.best_step = int(val.get("best_step", 0))
        self.best_scores = dict(val.get("best_scores") or {})
        self.stale = int(val.get("stale", 0))
        patience = self.validation.patience if self.validation is not None else None
        self.stopped_early = patience is not None and self.stale >= patience
        if (
            self.best is not None
            and self.best_step == self.step
            and self.validation is not None
            and self.validation.keep_best
            and self._best_file_step() != self.step
        ):
            self.write_best()  # killed between last.pt and best.pt: these weights are the best
        if self.dist.is_main:
            truncate_metrics(self.metrics.path, self.step + 1)
        return True

    # ----------------------------------------------------------------- one step
    def train_step(self, batch: Any) -> tuple[bool, dict[str, Tensor]]:
        """One optimisation step; returns (applied, detached logs). A step whose loss or
        gradient norm is not finite is skipped: no parameter update, method buffers restored."""
        inputs = self.batch_step.prepare(batch)
        snapshot = [b.detach().clone() for b in self.method.buffers()]
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.s.bf16):
            out = self.batch_step.forward(self.model, inputs)
        loss = out["loss"]
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # every rank runs backward (DDP all-reduces inside it)
        self._hook("on_after_backward", self.step)
        grads = [p for p in self.params if p.grad is not None]
        max_norm = self.s.clip_grad if self.s.clip_grad is not None else math.inf
        grad_norm = (
            torch.nn.utils.clip_grad_norm_(grads, max_norm)
            if grads
            else torch.zeros((), device=self.device)
        )
        finite = bool((torch.isfinite(loss.detach()) & torch.isfinite(grad_norm)).item())
        bad = any_true(not finite, self.device)
        logs = {k: v.detach().float() for k, v in out.items()}
        logs["grad_norm"] = grad_norm.detach().float()
        if bad:
            self.optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():
                for b, saved in zip(self.method.buffers(), snapshot, strict=True):
                    b.copy_(saved)
        else:
            self.optimizer.step()
            self._hook("on_step_end", self.step, self.s.max_steps)
        with warnings.catch_warnings():  # a skipped first step: no optimizer.step() yet
            warnings.filterwarnings("ignore", "Detected call of `lr_scheduler")
            self.scheduler.step()  # the schedule follows the step count, skipped steps included
        return not bad, logs

    # ----------------------------------------------------------------- the loop
    def fit(self) -> dict[str, Any]:
        """Train until ``max_steps``; returns the last logged values."""
        from tqdm import tqdm

        self.method.train()
        it = iter(self.loader)
        bar = tqdm(
            total=self.s.max_steps,
            initial=self.step,
            unit="step",
            disable=not (self.s.progress and self.dist.is_main),
            dynamic_ncols=True,
        )
        sums: dict[str, Tensor] = {}
        n_ok, t0, last = 0, time.perf_counter(), {}
        start_step = self.step
        try:
            while self.step < self.s.max_steps and not self.stopped_early:
                batch = next(it)
                lr = self.optimizer.param_groups[0]["lr"]
                ok, logs = self.train_step(batch)
                if ok:
                    self.bad_streak = 0
                    n_ok += 1
                    for k, v in logs.items():
                        sums[k] = sums[k] + v if k in sums else v
                else:
                    self.on_bad_step(logs)
                self.step += 1
                bar.update(1)
                if self.step % self.s.log_every == 0 or self.step == self.s.max_steps:
                    dt = time.perf_counter() - t0
                    done = self.step - start_step
                    last = {k: float(v.item()) / max(n_ok, 1) for k, v in sums.items()}
                    last.update(lr=lr, images_per_s=done * self.global_batch / max(dt, 1e-9))
                    self.metrics.log(self.step, "train", last)
                    bar.set_postfix(
                        loss=f"{last.get('loss', math.nan):.4f}",
                        img_s=f"{last['images_per_s']:.1f}",
                    )
                    sums, n_ok, t0, start_step = {}, 0, time.perf_counter(), self.step
                val = self.validation
                improved = False
                if val is not None and (
                    self.step % val.every == 0 or self.step == self.s.max_steps
                ):
                    t_val = time.perf_counter()
                    improved, self.stopped_early = self.validate()
                    improved = improved and val.keep_best  # only a kept best forces a save
                    t0 += time.perf_counter() - t_val  # images/s excludes validation
                    bar.set_postfix(loss=f"{last.get('loss', math.nan):.4f}", best=self.best)
                if (
                    self.step % self.s.ckpt_every == 0
                    or self.step == self.s.max_steps
                    or self.stopped_early
                    or improved  # last.pt at the best step first, then best.pt (see resume)
                ):
                    t_save = time.perf_counter()
                    self.save()
                    if improved:
                        self.write_best()
                    t0 += time.perf_counter() - t_save  # images/s excludes checkpointing
        finally:
            bar.close()
            self.metrics.close()
        return last

    # ----------------------------------------------------------------- validation
    @property
    def best_path(self) -> Path:
        return Path(self.s.out_dir) / BEST_NAME

    def validate(self) -> tuple[bool, bool]:
        """Score the model once; returns (improved, patience has run out). Under DDP every rank
        runs ``run()`` and rank 0's scores decide for all, so ranks never disagree."""
        v = self.validation
        assert v is not None
        self.method.eval()
        try:
            with torch.no_grad():
                runs = self.dist.is_main or not v.main_only
                scores = {k: float(x) for k, x in v.run().items()} if runs else {}
        finally:
            self.method.train()
        if self.dist.world_size > 1:
            shared: list[Any] = [scores]
            dist.broadcast_object_list(shared, src=0)
            scores = shared[0]
        if v.monitor not in scores:
            raise KeyError(f"validation returned {sorted(scores)}, not the monitored {v.monitor!r}")
        value = scores[v.monitor]
        improved = v.improves(value, self.best)
        if improved:
            self.best, self.best_step, self.stale = value, self.step, 0
            self.best_scores = scores
        else:
            self.stale += 1
        self.metrics.log(self.step, "val", {**scores, "best": self.best, "improved": improved})
        return improved, v.patience is not None and self.stale >= v.patience

    def write_best(self) -> None:
        """``best.pt``: the module's weights now (called at the best step, after ``last.pt``),
        with a ``trunk`` like ``last.pt``'s when the module exports one (so ``pathssl eval`` and
        ``nuclei train`` read a pretraining ``best.pt`` as they read ``last.pt``)."""
        if self.dist.is_main:
            payload = {
                **self._trunk(),
                "method": self.method.state_dict(),
                "step": self.step,
                "scores": self.best_scores,
                "meta": self.meta,
            }
            save_checkpoint(self.best_path, payload)

    def start_fresh(self) -> None:
        """Forget an earlier run in ``out_dir``: its checkpoint, metrics log and best weights."""
        if self.dist.is_main:
            for path in (self.checkpoint_path, self.metrics.path, self.best_path):
                path.unlink(missing_ok=True)

    def _best_file_step(self) -> int | None:
        if not self.best_path.is_file():
            return None
        return int(load_checkpoint(self.best_path)["step"])

    def restore_best(self) -> int:
        """Load this run's best validated weights (``best.pt``) into the module; returns their
        step (0 and no change when no validation improved)."""
        if self.best is None or not self.best_path.is_file():
            return 0
        ckpt = load_checkpoint(self.best_path)
        if int(ckpt["step"]) != self.best_step:
            raise RuntimeError(
                f"{self.best_path} holds step {ckpt['step']}, but this run's best validation was "
                f"at step {self.best_step}: did another run write into {self.s.out_dir}?"
            )
        self.method.load_state_dict(ckpt["method"])
        return self.best_step

    def on_bad_step(self, logs: dict[str, Tensor]) -> None:
        self.bad_streak += 1
        values = {k: float(v.item()) for k, v in logs.items()}
        self.metrics.log(
            self.step + 1, "skipped", {"reason": "non-finite loss or gradient", **values}
        )
        if self.dist.is_main:
            print(
                f"step {self.step + 1}: non-finite loss {values.get('loss')} / grad norm "
                f"{values.get('grad_norm')}; step skipped ({self.bad_streak} in a row)",
                flush=True,
            )
        if self.bad_streak >= self.s.max_bad_steps:
            raise TrainingDiverged(
                f"training diverged: {self.bad_streak} consecutive steps (up to step "
                f"{self.step}) had a non-finite loss or gradient. Lower optim.lr, set "
                "optim.clip_grad, or use train.precision=fp32; the last good checkpoint is "
                f"{self.checkpoint_path}"
            )
