"""Pretrain an encoder with a self-supervised method on tile stores.

``pathssl pretrain configs/pretrain/simclr.yaml data.stores=[tiles/] optim.lr=0.2`` reads the
YAML config, applies ``key=value`` overrides (values are YAML), and trains on the CPU, one GPU,
or several (``torchrun --nproc_per_node N -m pathssl.cli pretrain ...``). Checkpoints go to
``train.out_dir/last.pt`` every ``train.ckpt_every`` steps; rerunning the same command resumes
exactly from the last one. Library function: ``pathssl.train.build_trainer(load_config(...))``.
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML config (configs/pretrain/*.yaml)")
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. optim.lr=0.1"
    )
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved config and exit"
    )


def run(args: argparse.Namespace) -> int:
    import yaml

    from pathssl.data import EmptyDatasetError
    from pathssl.train import TrainingDiverged, build_trainer, load_config
    from pathssl.train.assemble import start
    from pathssl.train.config import to_dict
    from pathssl.train.distributed import cleanup_distributed

    try:
        cfg = load_config(args.config, args.overrides)
        if args.print_config:
            print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
            return 0
        trainer = build_trainer(cfg)
        resumed = start(trainer, cfg.train)  # a damaged or foreign last.pt: an error here
    except (ValueError, EmptyDatasetError, FileNotFoundError) as exc:  # ConfigError included
        print(f"pretrain: error: {exc}", file=sys.stderr)
        return 2
    try:
        if resumed:
            print(f"resumed from {trainer.checkpoint_path} at step {trainer.step}", flush=True)
        trainer.fit()
    except TrainingDiverged as exc:
        print(f"pretrain: {exc}", file=sys.stderr)
        return 1
    finally:
        cleanup_distributed()
    if trainer.dist.is_main:
        print(f"done: {trainer.step} steps, checkpoint {trainer.checkpoint_path}")
    return 0
