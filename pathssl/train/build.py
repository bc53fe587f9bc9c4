"""The one place where a :class:`PretrainConfig` becomes objects (dataset, sampler, loader,
views and method via :mod:`pathssl.train.methods`, the labelled stream via
:mod:`pathssl.train.labelled`, the online evaluation's hook); optimiser, schedule and trainer
come from the one training assembly (:mod:`pathssl.train.assemble`). Every other building block
takes explicit arguments. :func:`pretrain` is ``pathssl pretrain`` as a library call."""

from __future__ import annotations

import random
import sys
from typing import Any

import numpy as np
import torch
from torch import nn

import pathssl.ssl  # noqa: F401  (registers every method)
from pathssl import __version__
from pathssl.data import ResumableSampler, TileDataset, collate_jpeg, collate_uint8, tile_mean_std
from pathssl.models.backbones import ConvBackbone
from pathssl.ssl.base import METHODS
from pathssl.train.assemble import (
    assemble,
    check_out_dir,
    check_previous_run,
    configure_runtime,
    setup_runtime,
    start,
)
from pathssl.train.checkpoint import load_checkpoint
from pathssl.train.config import ConfigError, PretrainConfig, to_dict
from pathssl.train.distributed import DistInfo
from pathssl.train.labelled import LabelledSource, check_labelled, with_labelled_stream
from pathssl.train.loop import BatchSource, ResumableOrder, Trainer, ViewStep
from pathssl.train.methods import align_mask, build_method, build_views, sync_batchnorm
from pathssl.train.online import Evaluator, online_validation, probed_network
from pathssl.train.optim import scaled_lr
from pathssl.train.steps import LabelledViewStep
from tiling.discover import available_cores


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002  (the legacy global RNG is what libraries use)
    torch.manual_seed(seed)


def build_dataset(cfg: PretrainConfig, encoded: bool = False) -> TileDataset:
    d = cfg.data
    return TileDataset(d.stores, d.min_tissue, d.max_pen, d.max_white, d.min_blur, encoded=encoded)


def build_loader(
    cfg: PretrainConfig, dataset: TileDataset, sampler: ResumableSampler, pin: bool
) -> torch.utils.data.DataLoader[Any]:
    workers = cfg.data.num_workers
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=cfg.data.batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_jpeg if dataset.encoded else collate_uint8,
        pin_memory=pin,
        drop_last=True,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
        # its own generator: creating an iterator must not draw from the global RNG (resume)
        generator=torch.Generator().manual_seed(cfg.train.seed),
    )


def check_batch(batch_size: int, world_size: int, n_tiles: int) -> None:
    """A global batch larger than the dataset repeats tiles inside every batch (for contrastive
    losses: an image as its own negative): an error, before any compute."""
    if batch_size * world_size > n_tiles:
        raise ConfigError(
            f"data.batch_size {batch_size} x {world_size} process(es) is more than the "
            f"{n_tiles} tiles of data.stores after the QC filters: every batch would repeat "
            "tiles (an image as its own negative); lower data.batch_size or add tiles"
        )


def suspicious(
    batch_size: int,
    world_size: int,
    n_tiles: int,
    num_workers: int,
    precision: str,
    device: torch.device,
    cores: int,
) -> list[str]:
    """Legal but suspicious settings, as one-line warnings (printed, never fatal): so few tiles
    that every tile recurs within a few steps, bf16 autocast on the CPU (slow emulation), more
    loader workers than the cores this process may use."""
    out = []
    global_batch = batch_size * world_size
    if n_tiles < 10 * global_batch:
        out.append(
            f"only {n_tiles} tiles for a global batch of {global_batch}: every tile recurs every "
            f"~{max(1, n_tiles // global_batch)} steps, so the encoder mostly memorises them; add "
            "tiles (more slides, or tile with overlap) for a useful run"
        )
    if precision == "bf16" and device.type == "cpu":
        out.append("train.precision=bf16 on the CPU is emulated and slow: use auto or fp32 there")
    if num_workers > cores:
        out.append(
            f"data.num_workers {num_workers} is more than the {cores} cores this process may "
            "use: loader workers will compete with the training step"
        )
    return out


def view_generator(seed: int, rank: int = 0) -> torch.Generator:
    """The generator rank ``rank``'s training views draw from in a run seeded ``seed`` (also
    what ``pathssl augment-preview --config`` draws with, so it shows the training's views)."""
    return torch.Generator().manual_seed(seed * 7919 + rank + 1)


def build_trainer(
    cfg: PretrainConfig,
    dist_info: DistInfo | None = None,
    device: torch.device | None = None,
    evaluator: Evaluator | None = None,
    labelled: LabelledSource | None = None,
) -> Trainer:
    """Everything for a run of ``cfg``: initialises torch.distributed from torchrun's variables
    unless ``dist_info``/``device`` are given. Inputs and outputs are checked before any
    compute. Call :func:`pathssl.train.assemble.start` (or ``trainer.resume()``), then
    ``fit()``.

    ``evaluator``: the online probe (:mod:`pathssl.train.online`), run every ``eval.every``
    steps, choosing ``best.pt`` when ``eval.select_best``; required when ``eval.knn`` is set
    (``pathssl.eval.online.knn_evaluator`` builds that one).

    ``labelled``: the labelled set of a method that trains on labels (``needs_labels``: S4L,
    ``supervised``), read at the tiles' mpp (:mod:`pathssl.train.labelled`); required for such
    a method and refused for the others."""
    t = cfg.train
    cfg.optim.check("optim")
    t.check("train")
    cfg.eval.check("eval")
    if cfg.eval.knn and evaluator is None:
        raise ConfigError(
            f"eval.knn is set ({cfg.eval.knn}) but no evaluator was given: build the kNN probe "
            "with pathssl.eval.online.knn_evaluator(...) and pass evaluator=, or set "
            "eval.knn to empty"
        )
    if dist_info is None or device is None:
        dist_info, device = setup_runtime(t, distributed=True)
    else:
        configure_runtime(t, device)
    recipe = build_views(cfg)
    m_cls = METHODS.get(cfg.method.name)
    check_labelled(cfg.method.name, bool(m_cls.needs_labels), labelled is not None)
    uses_tiles = bool(m_cls.uses_tiles)
    recipe.check_inputs()  # stain statistics / targets the views name: read before any compute
    encoded = cfg.data.decode == "device" or (cfg.data.decode == "auto" and device.type == "cuda")
    dataset = build_dataset(cfg, encoded=False)  # data errors first, before building models
    recipe.check_tile(dataset.tile_size)
    if uses_tiles:
        check_batch(cfg.data.batch_size, dist_info.world_size, len(dataset))
    lset = labelled(dataset.tile_mpp) if labelled is not None else None  # read before compute
    if dist_info.is_main:
        for warning in suspicious(
            cfg.data.batch_size,
            dist_info.world_size,
            len(dataset),
            cfg.data.num_workers,
            t.precision,
            device,
            available_cores(),
        ):
            print(f"warning: {warning}", file=sys.stderr, flush=True)
    check_out_dir(t.out_dir)
    identity = {"kind": "pretrain", "method": cfg.method.name, "backbone": cfg.model.backbone}
    check_previous_run(t, identity)  # a damaged or foreign last.pt: before building anything
    if t.init_from:  # a previous stage's checkpoint: readable and with weights, before compute
        load_checkpoint(t.init_from, fix="set train.init_from to the previous stage's last.pt")
    if evaluator is not None and dist_info.is_main:  # its images read now: errors at the start
        evaluator.prepare(dataset.tile_mpp)
    seed_everything(t.seed)  # identical initial weights and buffers on every rank
    method = build_method(cfg, recipe, len(lset.class_names) if lset is not None else None)
    recipe = align_mask(recipe, method)
    if encoded and dataset.store(0).codec != "jpeg":
        encoded = False
    dataset.encoded = encoded
    mean, std = tile_mean_std(dataset, n=cfg.data.norm_tiles, seed=t.seed)
    method.set_input_normalisation(mean, std)  # views arrive normalised: colour methods undo it
    tile_sampler = ResumableSampler(
        dataset.slide_index,
        seed=t.seed,
        balance_slides=cfg.data.balance_slides,
        num_replicas=dist_info.world_size,
        rank=dist_info.rank,
    )
    loader: BatchSource = build_loader(cfg, dataset, tile_sampler, pin=device.type == "cuda")
    sampler: ResumableOrder = tile_sampler
    labelled_meta = None
    if lset is not None:
        loader, sampler, labelled_meta = with_labelled_stream(
            loader,
            sampler,
            lset,
            cfg.data.labelled,
            tiles_batch=cfg.data.batch_size if uses_tiles else None,
            order_seed=t.seed,
            dist_info=dist_info,
            pin=device.type == "cuda",
        )
    cnn = isinstance(method.backbone, ConvBackbone)
    channels_last = t.channels_last and cnn and device.type == "cuda"
    method = sync_batchnorm(method, dist_info.world_size, device)
    method.to(device)
    if channels_last:
        method.to(memory_format=torch.channels_last)
    if t.compile:
        method.backbone.compile()
    model: nn.Module = method
    if dist_info.world_size > 1:
        model = nn.parallel.DistributedDataParallel(
            method,
            device_ids=[device.index] if device.type == "cuda" else None,
            broadcast_buffers=False,
        )
    o = cfg.optim
    per_step = cfg.data.batch_size if uses_tiles else cfg.data.labelled.batch_size
    lr = scaled_lr(o.lr, per_step * dist_info.world_size, o.lr_scaling)  # the step's images
    seed_everything(t.seed + dist_info.rank)
    generator = view_generator(t.seed, dist_info.rank)
    meta = {
        **identity,
        "backbone_params": dict(cfg.model.params),
        "image_size": recipe.views[0][0].size,
        "tile_mpp": dataset.tile_mpp,
        "tile_size": dataset.tile_size,
        "mean": mean,
        "std": std,
        "config": to_dict(cfg),
        "pathssl_version": __version__,
    }
    if labelled_meta is not None:
        meta["labelled"] = labelled_meta
    step_args = (recipe.torch(tile_mpp=dataset.tile_mpp).to(device), mean, std, device, generator)
    views = (
        ViewStep(*step_args, channels_last)
        if lset is None
        else LabelledViewStep(*step_args, channels_last, tiles=uses_tiles)
    )
    validation = None
    if evaluator is not None:
        e = cfg.eval
        validation = online_validation(
            method,
            evaluator,
            every=e.every,
            select_best=e.select_best,
            mean=mean,
            std=std,
            device=device,
        )
        if dist_info.is_main:
            best = f", best.pt by {evaluator.monitor}" if e.select_best else ""
            print(
                f"online evaluation every {e.every} steps on {probed_network(method)[1]}{best}",
                flush=True,
            )
    return assemble(
        method,
        method.param_groups(o.weight_decay),
        loader,
        sampler,
        views,
        optim=o,
        train=t,
        device=device,
        meta=meta,
        lr=lr,
        generator=generator,
        dist_info=dist_info,
        model=model,
        validation=validation,
    )


def pretrain(
    cfg: PretrainConfig,
    evaluator: Evaluator | None = None,
    labelled: LabelledSource | None = None,
) -> Trainer:
    """``pathssl pretrain`` as a library call: :func:`build_trainer`, resume from
    ``train.out_dir/last.pt`` or start fresh (:func:`~pathssl.train.assemble.start`), train to
    ``train.max_steps``; returns the trainer (its ``step``, ``best``, ``checkpoint_path``).
    ``evaluator``: the online probe, ``labelled``: the labelled set (see
    :func:`build_trainer`)."""
    trainer = build_trainer(cfg, evaluator=evaluator, labelled=labelled)
    if start(trainer, cfg.train) and trainer.dist.is_main:
        print(f"resumed from {trainer.checkpoint_path} at step {trainer.step}", flush=True)
    trainer.fit()
    return trainer
