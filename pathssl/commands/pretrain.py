"""Pretrain an encoder with a self-supervised method on tile stores.

``pathssl pretrain configs/pretrain/simclr.yaml data.stores=[tiles/] optim.lr=0.2`` reads the
YAML config, applies ``key=value`` overrides (values are YAML), and trains on the CPU, one GPU,
or several (``torchrun --nproc_per_node N -m pathssl.cli pretrain ...``). Checkpoints go to
``train.out_dir/last.pt`` every ``train.ckpt_every`` steps; rerunning the same command resumes
exactly from the last one. Library function: ``pathssl.train.pretrain(load_config(...))``.

Online evaluation: ``eval.knn=configs/eval/qc_tissue_resnet18.yaml`` (a ``pathssl eval``
config: its ``data`` section names the labelled set and split) runs ``pathssl eval``'s kNN probe
every ``eval.every`` steps on frozen features of the encoder being trained, logs it (``val`` rows
of ``metrics.jsonl``, TensorBoard) and, with ``eval.select_best``, keeps ``best.pt`` at the best
kNN top-1. ``pathssl.train`` only knows the generic :class:`~pathssl.train.online.Evaluator` hook; the
probe is :func:`pathssl.eval.online.knn_evaluator` (``pathssl eval``'s data formats, split and
``knn_probe``), built here and by library callers::

    cfg = load_config("configs/pretrain/simclr.yaml", ["eval.knn=configs/eval/x.yaml"])
    pretrain(cfg, knn_evaluator(cfg.eval.knn, backbone=cfg.model.backbone, k=cfg.eval.k))

Methods that train on labels (S4L, ``supervised``) read the training side of the ``pathssl eval``
config ``data.labelled.config`` (``data.labelled.fraction`` of it, stratified and seeded); the
library call passes :func:`pathssl.eval.online.labelled_source` as ``pretrain``'s third argument.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML config (configs/pretrain/*.yaml)")
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. optim.lr=0.1"
    )
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved config and exit"
    )


def run(args: argparse.Namespace) -> int:
    """Errors found before any compute (config, data, the ``eval.knn`` labelled set, outputs, a
    damaged or foreign ``last.pt``) are ``ValueError``s: ``pathssl.cli.main`` prints them on one
    line and exits 2; a failure during training (e.g. divergence) exits 1."""
    from pathssl.config import dump
    from pathssl.eval.online import knn_evaluator, labelled_source
    from pathssl.train import load_config, pretrain
    from pathssl.train.distributed import cleanup_distributed

    cfg = load_config(args.config, args.overrides)
    if args.print_config:
        print(dump(cfg), end="")
        return 0
    e = cfg.eval
    evaluator = None
    if e.knn:
        evaluator = knn_evaluator(
            e.knn,
            backbone=cfg.model.backbone,
            k=e.k,
            temperature=e.temperature,
            batch_size=e.batch_size,
            max_images=e.max_images,
        )
    labelled = None
    if cfg.data.labelled.config:
        labelled = labelled_source(cfg.data.labelled.config, backbone=cfg.model.backbone)
    try:
        trainer = pretrain(cfg, evaluator, labelled)
    finally:
        cleanup_distributed()
    if trainer.dist.is_main:
        print(f"done: {trainer.step} steps, checkpoint {trainer.checkpoint_path}")
        if evaluator is not None and trainer.best is not None:
            kept = f" ({trainer.best_path})" if e.select_best else ""
            print(f"best kNN top-1 {trainer.best:.4f} at step {trainer.best_step}{kept}")
    return 0
