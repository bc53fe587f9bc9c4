"""Tile classification on an encoder's features: linear probe, kNN, few-shot, fine-tune.

``pathssl eval configs/eval/qc_tissue_resnet18.yaml [key=value ...] [--out DIR] [--device cpu]``
reads labelled tiles, embeds them with a pretrained checkpoint's trunk (or a randomly initialised
backbone), runs the protocols the config lists and writes ``metrics.json`` (balanced accuracy,
macro-F1, AUROC one-vs-rest macro, ECE with 15 bins, confusion matrices) and
``confusion_<protocol>.png`` into ``train.out_dir``. ``--out`` and ``--device`` set
``train.out_dir`` and ``train.device``; ``--print-config`` prints the composed, checked config
and exits. The config schema, with an annotated example, is :mod:`pathssl.eval.config` (the same
key names as pretraining: ``model.*``, ``data.batch_size``, ``train.out_dir|device|seed``).

A config that lists ``encoders:`` and ``tasks:`` is a benchmark (``configs/eval/encoders.yaml``):
every encoder on every task (tile classification with these protocols, or a frozen-encoder
nuclei head on a nuclei config) at each label fraction x seed, one progress line per encoder x
task and per cell, finished cells kept in ``OUT/cells.jsonl`` (a rerun skips them), and one table
(``benchmark.md``, ``.csv``, ``.json``) and one figure (``benchmark.png``) in ``train.out_dir``
(:mod:`pathssl.eval.benchmark`, :mod:`pathssl.nuclei.bench`).

Library functions: ``pathssl.eval.config.load_config`` (the typed config),
``pathssl.eval.protocols.evaluate_features`` (frozen features in, metrics out),
``pathssl.eval.encoder`` (``load_encoder``, ``extract_features``), ``pathssl.eval.finetune``
(``fine_tune``: the trunk + a linear layer through the one training loop, dihedral + HED-jitter
augmentation, a validation split scored each epoch, best weights kept, early stopping; its run
lands in ``OUT/finetune/``).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathssl.eval.config import BenchmarkConfig, EvalConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="evaluation config (YAML), see configs/eval/")
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. protocols.knn.k=5"
    )
    parser.add_argument("--out", default=None, help="output folder (sets train.out_dir)")
    parser.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N (train.device)")
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved config and exit"
    )


def evaluate(
    cfg: EvalConfig | Mapping[str, Any],
    out_dir: str | Path | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Run the evaluation ``cfg`` describes (an :class:`~pathssl.eval.config.EvalConfig`, or
    nested dicts in its schema); ``out_dir``/``device`` replace ``train.out_dir``/``train.device``.
    Returns the metrics dict it wrote to ``out_dir/metrics.json``."""
    from pathssl.config import to_plain
    from pathssl.eval.config import config_from_dict
    from pathssl.eval.encoder import extract_features, load_encoder, tile_dataset
    from pathssl.eval.outputs import check_eval_output
    from pathssl.eval.protocols import finetune_scores, hyperrule_protocol_scores, run_protocols
    from pathssl.eval.report import write_confusion_png, write_json
    from pathssl.train.distributed import pick_device

    if isinstance(cfg, Mapping):
        cfg = config_from_dict(dict(cfg))
    out = Path(out_dir if out_dir is not None else cfg.train.out_dir)
    check_eval_output(out, cfg)  # before any work: never an input, nothing foreign replaced
    dev = str(pick_device(device or cfg.train.device))
    size, batch, seed = cfg.data.image_size, cfg.data.batch_size, cfg.train.seed
    protocols = cfg.protocols

    from pathssl.eval.data import labelled_splits

    train, test = labelled_splits(cfg.data)
    classes = train.class_names
    if len(test) == 0 or len(train) == 0:
        raise ValueError(f"empty split: {len(train)} train and {len(test)} test tiles")
    m = cfg.model
    encoder = load_encoder(
        m.backbone,
        m.checkpoint,
        image_size=size,
        seed=seed,
        mean=m.mean,
        std=m.std,
        tile_mpp=m.tile_mpp,
    )
    train_ds = tile_dataset(encoder, train, size)  # at the encoder's tile_mpp, said once
    test_ds = tile_dataset(encoder, test, size, log=None)
    train_x, train_y = extract_features(encoder, train_ds, batch, dev)
    test_x, test_y = extract_features(encoder, test_ds, batch, dev)

    results = run_protocols(
        train_x, train_y, test_x, test_y, len(classes), protocols, seed=cfg.data.seed
    )
    if protocols.bit_hyperrule is not None:  # a copy of the encoder is trained
        results["bit_hyperrule"] = hyperrule_protocol_scores(
            encoder,
            train_ds,
            train.labels,
            test_ds,
            len(classes),
            protocols.bit_hyperrule,
            out / "bit_hyperrule",
            image_size=size,
            batch_size=batch,
            precision=cfg.train.precision,
            device=dev,
            seed=seed,
        )
    if protocols.finetune is not None:
        results["finetune"] = finetune_scores(
            encoder,
            train_ds,
            train.labels,
            test_ds,
            len(classes),
            protocols.finetune,
            out / "finetune",
            batch_size=batch,
            precision=cfg.train.precision,
            device=dev,
            seed=seed,
        )

    pngs = {}
    for name, res in results.items():
        if "confusion_matrix" in res:
            png = out / f"confusion_{name}.png"
            write_confusion_png(png, res["confusion_matrix"], classes, f"{name} ({encoder.name})")
            pngs[name] = png.name
    metrics = {
        "encoder": {
            "backbone": encoder.name,
            "checkpoint": cfg.model.checkpoint,
            "feature_dim": int(train_x.shape[1]),
        },
        "data": {
            "class_names": classes,
            "n_train": len(train),
            "n_test": len(test),
            "train_counts": [int((train.labels == k).sum()) for k in range(len(classes))],
            "test_counts": [int((test.labels == k).sum()) for k in range(len(classes))],
            "image_size": size,
        },
        "protocols": results,
        "confusion_png": pngs,
        "config": to_plain(cfg),
    }
    write_json(out / "metrics.json", metrics)
    return metrics


def run(args: argparse.Namespace) -> int:
    from pathssl.config import dump
    from pathssl.eval.config import is_benchmark, load_benchmark_config, load_config

    overrides = list(args.overrides)
    if args.out is not None:  # JSON strings are YAML strings: any path stays a string
        overrides.append(f"train.out_dir={json.dumps(args.out)}")
    if args.device is not None:
        overrides.append(f"train.device={json.dumps(args.device)}")
    if Path(args.config).is_file() and is_benchmark(args.config):
        bench = load_benchmark_config(args.config, overrides)
        if args.print_config:
            print(dump(bench), end="")
            return 0
        return run_benchmark_config(bench)
    cfg = load_config(args.config, overrides)  # errors: one line from pathssl.cli.main
    if args.print_config:
        print(dump(cfg), end="")
        return 0
    metrics = evaluate(cfg)
    for name, res in metrics["protocols"].items():
        if "balanced_accuracy" in res:
            print(
                f"{name:9s} balanced acc {res['balanced_accuracy']:.3f}  "
                f"macro-F1 {res['macro_f1']:.3f}  AUROC {res.get('auroc', float('nan')):.3f}  "
                f"ECE {res.get('ece', float('nan')):.3f}"
            )
        else:
            for n, s in res.items():
                print(f"{name} {n}-shot balanced acc {s['balanced_accuracy']['mean']:.3f}")
    print(f"metrics -> {Path(cfg.train.out_dir) / 'metrics.json'}")
    return 0


def run_benchmark_config(cfg: BenchmarkConfig) -> int:
    """Run a benchmark config (every registered task kind), print its table and outputs."""
    from pathssl.eval.report import benchmark_markdown
    from pathssl.nuclei.bench import run_config

    report = run_config(cfg)
    print(benchmark_markdown(report), end="")
    out = Path(cfg.train.out_dir)
    print(f"table -> {out / 'benchmark.md'} (.csv, .json); figure -> {out / 'benchmark.png'}")
    return 0
