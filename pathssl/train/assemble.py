"""The one training assembly: every training mode (pretraining, the nuclei head, fine-tuning)
becomes a :class:`~pathssl.train.loop.Trainer` here, and nowhere else.

A mode supplies what is its own: the module that owns parameters and loss, its parameter groups,
a loader + resumable sampler, a :class:`~pathssl.train.loop.BatchStep` (what a batch means), the
checkpoint ``meta`` and an optional :class:`~pathssl.train.loop.Validation`. The shared config
sections supply the rest:

- :class:`~pathssl.train.config.LoopConfig` (``train.*``): device (:func:`setup_runtime`, the one
  device rule :func:`~pathssl.train.distributed.pick_device` or torchrun's), precision (the one
  rule :func:`~pathssl.train.distributed.use_bf16`), steps, checkpoints, logging, resume,
  ``init_from`` (a previous stage's checkpoint);
- :class:`~pathssl.train.config.OptimConfig` (``optim.*``): optimiser, per-group rates
  (``optim.groups``), warmup + cosine or step-decay schedule, weight-decay schedule, clipping.

Then :func:`start` resumes from ``out_dir/last.pt`` or starts fresh (loading ``init_from``)::

    dist_info, device = setup_runtime(cfg.train)
    check_out_dir(cfg.train.out_dir)                  # before any compute
    trainer = assemble(module, groups, loader, sampler, step, optim=cfg.optim, train=cfg.train,
                       device=device, meta=meta)
    start(trainer, cfg.train)
    trainer.fit()
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from pathssl.models.pretrained import KINDS, CheckpointError, checkpoint_kind
from pathssl.train.checkpoint import (
    CHECKPOINT_NAME,
    check_resumable,
    check_same_run,
    load_checkpoint,
)
from pathssl.train.config import ConfigError, LoopConfig, OptimConfig
from pathssl.train.distributed import DistInfo, init_distributed, pick_device, use_bf16
from pathssl.train.loop import (
    BatchSource,
    BatchStep,
    LoopSettings,
    ResumableOrder,
    Trainer,
    Validation,
)
from pathssl.train.optim import Schedule, build_optimizer, build_schedule, configure_groups
from tiling.errors import OutputError
from tiling.outputs import writable

__all__ = [
    "assemble",
    "build_optimization",
    "check_out_dir",
    "check_previous_run",
    "configure_runtime",
    "load_previous_stage",
    "setup_runtime",
    "start",
]


def setup_runtime(t: LoopConfig, distributed: bool = False) -> tuple[DistInfo, torch.device]:
    """The process's device (``train.device``; ``auto``: CUDA when present) and, with
    ``distributed``, torch.distributed from torchrun's variables; CPU threads
    (``train.threads``) and the CUDA speed settings (cuDNN autotuning, TF32)."""
    if distributed:
        dist_info, device = init_distributed(t.device)
    else:
        dist_info, device = DistInfo(), pick_device(t.device)
    configure_runtime(t, device)
    return dist_info, device


def configure_runtime(t: LoopConfig, device: torch.device) -> None:
    """CPU threads (``train.threads``) and, on CUDA, cuDNN autotuning and TF32 matmuls."""
    if t.threads:
        torch.set_num_threads(t.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def check_out_dir(out_dir: str | Path, key: str = "train.out_dir") -> Path:
    """Fail now, before any compute, when ``out_dir`` cannot be written. The rule is the one
    every writing command uses (:func:`tiling.outputs.writable`: the nearest existing folder
    must be a writable folder; nothing is created here), raised as a :class:`ConfigError`
    naming ``key``."""
    try:
        writable(out_dir, key)
    except OutputError as exc:
        raise ConfigError(str(exc), key) from None
    return Path(out_dir)


def build_optimization(
    param_groups: list[dict[str, Any]], o: OptimConfig, max_steps: int, lr: float | None = None
) -> tuple[torch.optim.Optimizer, Schedule]:
    """Optimiser and schedule from ``optim.*``: per-group rates from ``optim.groups`` (peak
    ``lr``, default ``optim.lr``: callers pass the batch-scaled rate), then ``optim.schedule``
    and the optional weight-decay schedule."""
    peak = o.lr if lr is None else lr
    groups = configure_groups(param_groups, o.groups, peak)
    optimizer = build_optimizer(
        o.name,
        groups,
        lr=peak,
        weight_decay=o.weight_decay,
        momentum=o.momentum,
        betas=(o.betas[0], o.betas[1]),
        lars_eta=o.lars_eta,
    )
    schedule = build_schedule(
        optimizer,
        max_steps,
        o.schedule,
        o.warmup_steps,
        o.min_lr_ratio,
        o.milestones,
        o.gamma,
        o.weight_decay,
        o.weight_decay_end,
    )
    return optimizer, schedule


def assemble(
    module: nn.Module,
    param_groups: list[dict[str, Any]],
    loader: BatchSource,
    sampler: ResumableOrder,
    batch_step: BatchStep,
    *,
    optim: OptimConfig,
    train: LoopConfig,
    device: torch.device,
    meta: dict[str, Any],
    lr: float | None = None,
    generator: torch.Generator | None = None,
    dist_info: DistInfo | None = None,
    model: nn.Module | None = None,
    validation: Validation | None = None,
) -> Trainer:
    """The :class:`Trainer` of a run: ``module`` owns the parameters (``param_groups``: its
    trainable ones, ``{"params", ["name"], ...}``) and is what checkpoints hold; ``model`` is
    what the step calls (``module`` or its DDP wrapper); ``lr``: the peak rate when it is not
    ``optim.lr`` (batch-size scaling)."""
    optim.check("optim")
    train.check("train")
    optimizer, scheduler = build_optimization(param_groups, optim, train.max_steps, lr)
    settings = LoopSettings(
        max_steps=train.max_steps,
        out_dir=Path(train.out_dir),
        ckpt_every=train.ckpt_every,
        log_every=train.log_every,
        bf16=use_bf16(train.precision, device),
        clip_grad=optim.clip_grad or None,  # 0 or null: no clipping
        max_bad_steps=train.max_bad_steps,
        progress=train.progress,
    )
    return Trainer(
        module,
        optimizer,
        scheduler,
        loader,
        sampler,
        batch_step,
        device,
        settings,
        meta,
        generator=generator,
        dist_info=dist_info,
        model=model,
        validation=validation,
    )


def check_previous_run(t: LoopConfig, meta: dict[str, Any]) -> None:
    """Before any compute: a ``last.pt`` in ``train.out_dir`` must belong to this kind of run
    (``meta``'s kind, method and backbone; one line naming both otherwise) and, when resuming,
    be readable (else: delete it or set ``train.resume=false``). A damaged one is replaced by a
    fresh run."""
    path = Path(t.out_dir) / CHECKPOINT_NAME
    if not path.is_file():
        return
    try:
        old = load_checkpoint(path, lazy=True)
    except CheckpointError:
        if t.resume:
            raise
        return  # damaged: replaced by this run
    if t.resume:
        check_resumable(old, meta, path)
    else:
        check_same_run(old.get("meta") or {}, meta, path)


def start(trainer: Trainer, t: LoopConfig) -> bool:
    """Resume from ``out_dir/last.pt`` (``train.resume`` and the file exists) or start fresh,
    replacing an earlier run of the same kind; True when resumed. A ``last.pt`` of another
    method, backbone or mode is refused either way, a damaged one is an error when resuming and
    replaced otherwise (:func:`check_previous_run`, which builders also call before any
    compute). ``train.init_from``: a previous stage's checkpoint, recorded in
    ``meta["init_from"]`` and loaded on a fresh start."""
    if not t.resume:  # resume() makes the same checks itself
        check_previous_run(t, trainer.meta)
    resumed = t.resume and trainer.resume()
    if t.init_from:  # checked (and on a fresh start loaded) before an earlier run is replaced
        trainer.meta["init_from"] = load_previous_stage(trainer.method, t.init_from, not resumed)
    if not resumed:
        trainer.start_fresh()
    return resumed


def load_previous_stage(module: nn.Module, path: str | Path, load: bool = True) -> dict[str, Any]:
    """Load a previous stage's weights (every entry of its ``method`` / ``model`` state whose
    name and shape this ``module`` has, as saved or under one of its children) into ``module``; returns what ``meta["init_from"]``
    records: ``{path, kind, step, method, loaded, of}``. ``load=False`` only checks and
    describes."""
    fix = "set train.init_from to the previous stage's last.pt or model file"
    ckpt = load_checkpoint(path, fix=fix)
    kind = checkpoint_kind(ckpt)
    state = ckpt.get("method") if isinstance(ckpt.get("method"), dict) else ckpt.get("model")
    if not isinstance(state, dict):
        raise CheckpointError(f"train.init_from {path} is {KINDS[kind]} without weights: {fix}")
    own = module.state_dict()
    matched: dict[str, Any] = {}
    for prefix in ["", *(f"{name}." for name, _ in module.named_children())]:
        # as saved, or under one of the module's children (a nuclei.pt's model in the loop's
        # NucleiTrainModule.model)
        matched = {
            prefix + k: v
            for k, v in state.items()
            if prefix + k in own
            and isinstance(v, torch.Tensor)
            and v.shape == own[prefix + k].shape
        }
        if matched:
            break
    if not matched:
        raise CheckpointError(
            f"train.init_from {path}: none of its {len(state)} weights matches this run's model "
            f"by name and shape: {fix}"
        )
    if load:
        module.load_state_dict(matched, strict=False)
    found = ckpt.get("meta")
    meta: dict[str, Any] = found if isinstance(found, dict) else {}
    return {
        "path": str(path),
        "kind": kind,
        "step": int(ckpt["step"]) if "step" in ckpt else None,
        "method": meta.get("method", meta.get("kind")),
        "loaded": len(matched),
        "of": len(own),
    }
