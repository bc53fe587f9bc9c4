"""Tile classification on an encoder's features: linear probe, kNN, few-shot, fine-tune.

``pathssl eval configs/eval/qc_tissue_resnet18.yaml [--out DIR] [--device cpu]`` reads labelled
tiles, embeds them with a pretrained checkpoint's trunk (or a randomly initialised backbone),
runs the protocols the config lists and writes ``metrics.json`` (balanced accuracy, macro-F1,
AUROC one-vs-rest macro, ECE with 15 bins, confusion matrices) and ``confusion_<protocol>.png``
into the output folder. Config::

    data:
      source: {format: csv, csv: labels.csv, path_column: path, label_column: label}
      # or format: folder + root, or format: store + store + labels (index,label CSV)
      # test: {...} a separate test source; without it: test_fraction of each class (seeded)
      test_fraction: 0.3
      seed: 0
      image_size: 224
      class_names: null          # fixes the class order (default: sorted label strings)
    encoder: {backbone: resnet18, checkpoint: null, seed: 0}
    protocols:
      linear: {l2: 1.0e-4, max_iter: 500}
      knn: {k: 20}
      fewshot: {shots: [1, 4, 16], episodes: 100}
      finetune: {epochs: 10, lr: 1.0e-4, weight_decay: 1.0e-4, batch_size: 32,
                 warmup_epochs: 1, val_fraction: 0.1, patience: 3, hed_jitter: 0.05,
                 label_smoothing: 0.0, precision: auto}
    batch_size: 64
    device: auto
    output: runs/eval/NAME

Library functions: ``pathssl.eval.protocols.evaluate_features`` (frozen features in, metrics
out), ``pathssl.eval.encoder`` (``load_encoder``, ``extract_features``),
``pathssl.eval.finetune`` (``fine_tune``: the trunk + a linear layer through the one training loop,
dihedral + HED-jitter augmentation, a validation split scored each epoch, best weights kept,
early stopping; its run lands in ``OUT/finetune/``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathssl.eval.data import LabelledTiles

KNOWN_TOP = {"data", "encoder", "protocols", "batch_size", "device", "output"}
KNOWN_PROTOCOLS = {"linear", "knn", "fewshot", "finetune"}
FINETUNE_KEYS = {
    "epochs",
    "lr",
    "weight_decay",
    "batch_size",
    "warmup_epochs",
    "val_fraction",
    "patience",
    "hed_jitter",
    "label_smoothing",
    "precision",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="evaluation config (YAML), see configs/eval/")
    parser.add_argument("--out", default=None, help="output folder (overrides config output)")
    parser.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N")


def _source(spec: dict[str, Any], class_names: list[str] | None) -> LabelledTiles:
    from pathssl.eval import data

    kind = spec.get("format")
    if kind == "folder":
        return data.image_folder(spec["root"], class_names)
    if kind == "csv":
        return data.csv_images(
            spec["csv"],
            path_column=spec.get("path_column", "path"),
            label_column=spec.get("label_column", "label"),
            root=spec.get("root"),
            class_names=class_names,
        )
    if kind == "store":
        return data.store_tiles(
            spec["store"],
            spec["labels"],
            index_column=spec.get("index_column", "index"),
            label_column=spec.get("label_column", "label"),
            class_names=class_names,
        )
    raise ValueError(f"data source format must be folder, csv or store, got {kind!r}")


def _splits(cfg: dict[str, Any]) -> tuple[LabelledTiles, LabelledTiles]:
    from pathssl.eval.data import stratified_split

    names = cfg.get("class_names")
    if "source" not in cfg:
        raise ValueError("data.source is required")
    train = _source(cfg["source"], names)
    if cfg.get("test") is not None:
        test = _source(cfg["test"], names or train.class_names)
        if test.class_names != train.class_names:
            raise ValueError(
                f"train classes {train.class_names} differ from test classes "
                f"{test.class_names}; set data.class_names"
            )
        return train, test
    tr, te = stratified_split(
        train.labels, float(cfg.get("test_fraction", 0.3)), int(cfg.get("seed", 0))
    )
    return train.subset(tr), train.subset(te)


def check_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """Reject unknown keys (top level, protocols, fine-tune settings); returns the protocols."""
    unknown = set(cfg) - KNOWN_TOP
    if unknown:
        raise ValueError(f"unknown config keys {sorted(unknown)} (known: {sorted(KNOWN_TOP)})")
    protocols: dict[str, Any] = cfg.get("protocols") or {"linear": {}, "knn": {}}
    if set(protocols) - KNOWN_PROTOCOLS:
        raise ValueError(f"unknown protocols {sorted(set(protocols) - KNOWN_PROTOCOLS)}")
    unknown_ft = set(protocols.get("finetune") or {}) - FINETUNE_KEYS
    if unknown_ft:
        raise ValueError(
            f"unknown protocols.finetune keys {sorted(unknown_ft)} (known: {sorted(FINETUNE_KEYS)})"
        )
    return protocols


def evaluate(cfg: dict[str, Any], out_dir: Path, device: str) -> dict[str, Any]:
    """Run the evaluation a parsed config describes; returns the metrics dict it wrote."""
    import torch

    from pathssl.eval.data import TileImages
    from pathssl.eval.encoder import extract_features, load_encoder
    from pathssl.eval.finetune import fine_tune, predict, summary
    from pathssl.eval.protocols import evaluate_features, score
    from pathssl.eval.report import write_confusion_png, write_json

    protocols = check_config(cfg)
    data_cfg: dict[str, Any] = cfg.get("data") or {}
    enc_cfg: dict[str, Any] = cfg.get("encoder") or {}
    size = int(data_cfg.get("image_size", 224))
    batch = int(cfg.get("batch_size", 64))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"

    train, test = _splits(data_cfg)
    classes = train.class_names
    if len(test) == 0 or len(train) == 0:
        raise ValueError(f"empty split: {len(train)} train and {len(test)} test tiles")
    encoder = load_encoder(
        enc_cfg.get("backbone"),
        enc_cfg.get("checkpoint"),
        image_size=size,
        seed=int(enc_cfg.get("seed", 0)),
    )
    train_ds, test_ds = TileImages(train, size), TileImages(test, size)
    train_x, train_y = extract_features(encoder, train_ds, batch, device)
    test_x, test_y = extract_features(encoder, test_ds, batch, device)

    lin = protocols.get("linear")
    knn = protocols.get("knn")
    few = protocols.get("fewshot")
    results = evaluate_features(
        train_x,
        train_y,
        test_x,
        test_y,
        len(classes),
        linear=lin is not None,
        l2=float((lin or {}).get("l2", 1e-4)),
        max_iter=int((lin or {}).get("max_iter", 500)),
        knn_k=int((knn or {}).get("k", 20)) if knn is not None else None,
        few_shots=[int(n) for n in (few or {}).get("shots", [])] if few is not None else (),
        episodes=int((few or {}).get("episodes", 100)),
        seed=int(data_cfg.get("seed", 0)),
    )
    ft = protocols.get("finetune")
    if ft is not None:
        patience = ft.get("patience", 3)
        result = fine_tune(
            encoder,
            train_ds,
            train.labels,
            len(classes),
            out_dir / "finetune",
            epochs=int(ft.get("epochs", 10)),
            lr=float(ft.get("lr", 1e-4)),
            weight_decay=float(ft.get("weight_decay", 1e-4)),
            batch_size=int(ft.get("batch_size", 32)),
            warmup_epochs=float(ft.get("warmup_epochs", 1.0)),
            val_fraction=float(ft.get("val_fraction", 0.1)),
            patience=None if patience is None else int(patience),
            hed_jitter=float(ft.get("hed_jitter", 0.05)),
            label_smoothing=float(ft.get("label_smoothing", 0.0)),
            precision=str(ft.get("precision", "auto")),
            device=device,
            seed=int(enc_cfg.get("seed", 0)),
        )
        output, labels = predict(result.classifier, test_ds, batch, device)
        results["finetune"] = {**score(output, labels, len(classes)), **summary(result)}

    pngs = {}
    for name, res in results.items():
        if "confusion_matrix" in res:
            png = out_dir / f"confusion_{name}.png"
            write_confusion_png(png, res["confusion_matrix"], classes, f"{name} ({encoder.name})")
            pngs[name] = png.name
    metrics = {
        "encoder": {
            "backbone": encoder.name,
            "checkpoint": enc_cfg.get("checkpoint"),
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
        "config": cfg,
    }
    write_json(out_dir / "metrics.json", metrics)
    return metrics


def run(args: argparse.Namespace) -> int:
    import yaml

    path = Path(args.config)
    if not path.is_file():
        print(f"eval: error: config {path} not found", file=sys.stderr)
        return 2
    cfg = yaml.safe_load(path.read_text()) or {}
    out = Path(args.out or cfg.get("output") or "runs/eval")
    device = args.device or str(cfg.get("device", "auto"))
    try:
        metrics = evaluate(cfg, out, device)
    except (ValueError, FileNotFoundError, KeyError, OSError) as exc:
        print(f"eval: error: {exc}", file=sys.stderr)
        return 2
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
    print(f"metrics -> {out / 'metrics.json'}")
    return 0
