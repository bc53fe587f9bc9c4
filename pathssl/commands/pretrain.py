"""Pretrain an encoder with a self-supervised method on tile stores.

``pathssl pretrain configs/pretrain/simclr.yaml data.stores=[tiles/] optim.lr=0.2`` reads the
YAML config, applies ``key=value`` overrides (values are YAML), and trains on the CPU, one GPU,
or several (``torchrun --nproc_per_node N -m pathssl.cli pretrain ...``). Checkpoints go to
``train.out_dir/last.pt`` every ``train.ckpt_every`` steps; rerunning the same command resumes
exactly from the last one. Library function: ``pathssl.train.build_trainer(load_config(...))``.
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
    """Errors found before any compute (config, data, outputs, a damaged or foreign ``last.pt``)
    are ``ValueError``s: ``pathssl.cli.main`` prints them on one line and exits 2; a failure
    during training (e.g. divergence) exits 1."""
    from pathssl.config import dump
    from pathssl.train import build_trainer, load_config
    from pathssl.train.assemble import start
    from pathssl.train.distributed import cleanup_distributed

    cfg = load_config(args.config, args.overrides)
    if args.print_config:
        print(dump(cfg), end="")
        return 0
    try:
        trainer = build_trainer(cfg)
        if start(trainer, cfg.train):  # a damaged or foreign last.pt: an error here
            print(f"resumed from {trainer.checkpoint_path} at step {trainer.step}", flush=True)
        trainer.fit()
    finally:
        cleanup_distributed()
    if trainer.dist.is_main:
        print(f"done: {trainer.step} steps, checkpoint {trainer.checkpoint_path}")
    return 0
