"""Nuclei segmentation + classification with a HoVer-Net style head on a pretrained encoder.

``pathssl nuclei train CONFIG [key=value ...]``
    train per a YAML config (``configs/nuclei/*.yaml``): writes ``OUT_DIR/nuclei.pt`` and
    ``metrics.jsonl``; with held-apart data (``data.val_region``) prints its metrics.
    Library: ``pathssl.nuclei.train.train_nuclei(cfg)``.
``pathssl nuclei predict IMAGE_OR_SLIDE_OR_FOLDER... --checkpoint nuclei.pt --out OUT_DIR``
    an image (.png/.jpg, at the model's mpp unless ``--mpp``): ``ID.npz`` (``inst``, ``types``
    maps), ``ID.geojson`` and ``ID_overlay.png``; a slide: ``ID.geojson`` (QuPath detections,
    level-0 coordinates) and ``ID_overlay.png``, streamed window by window. Folders are searched
    recursively; a failed input is reported and the rest go on (exit code 1); inputs whose
    outputs exist are skipped (``--force``); ``nuclei_manifest.csv`` lists every input.
    Library: ``pathssl.nuclei.batch.predict_inputs``, ``pathssl.nuclei.predict.predict_slide``.
``pathssl nuclei evaluate --pred A.npz [B.npz ...] --true A_true.npz [...] [--out m.json]``
    JSON metrics: PQ/SQ/DQ, per-class PQ and CoNIC mPQ+, AJI, AJI+, Dice, DICE2, detection F1
    (``--radius``, 12 px). ``.npz`` files hold ``inst`` and ``types`` (or ``nuc_raster``;
    ``--true-types`` then gives the type maps), or ``(N, H, W)`` stacks; CoNSeP/Lizard ``.mat``
    labels are read too. ``--true FOLD_DIR`` (a PanNuke fold: masks.npy, types.npy) adds PanNuke
    mPQ / bPQ per tissue (``--tissues`` names the tissues of other inputs).
``pathssl nuclei label-efficiency CONFIG``
    train with each of ``fractions`` (default 10/30/100%) of the labels, evaluate on the
    held-apart data, write ``label_efficiency.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="nuclei_command", metavar="{train,predict,evaluate,...}")
    p = sub.add_parser("train", help="train a nuclei head from a YAML config")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="key=value config overrides")
    p.add_argument("--no-progress", action="store_true")
    p = sub.add_parser("predict", help="nuclei of images and whole-slide images")
    p.add_argument("input", nargs="+", help="images (.png/.jpg), slides, or folders of them")
    p.add_argument("--force", action="store_true", help="redo inputs whose outputs exist")
    p.add_argument("--checkpoint", required=True, help="nuclei checkpoint (nuclei.pt)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--mpp", type=float, default=None, help="image um/px (default: the model's)")
    p.add_argument("--assume-mpp", type=float, default=None, help="slide mpp when not recorded")
    p.add_argument("--region", type=int, nargs=4, metavar=("X", "Y", "W", "H"), default=None)
    p.add_argument("--window", type=int, default=None)
    p.add_argument("--overlap", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true")
    p = sub.add_parser("evaluate", help="metrics of predicted vs true instance/type maps")
    p.add_argument("--pred", nargs="+", required=True)
    p.add_argument("--true", nargs="+", required=True)
    p.add_argument("--true-types", nargs="+", default=None)
    p.add_argument("--tissues", nargs="+", default=None, help="tissue of each image: PanNuke mPQ")
    p.add_argument(
        "--radius", type=float, default=12.0, help="detection radius, px (12: 40x; 6: 20x)"
    )
    p.add_argument("--out", default=None, help="metrics JSON (default: stdout)")
    p = sub.add_parser("label-efficiency", help="train on 10/30/100%% of the labels, plot")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--no-progress", action="store_true")


def load_maps(path: str | Path, types_path: str | Path | None = None) -> tuple[Any, Any]:
    """(instance map, type map) from our ``.npz`` (inst/types), a ``nuc_raster`` pair or .mat."""
    import numpy as np

    from pathssl.nuclei.data import load_mat_labels

    if str(path).endswith(".mat"):
        return load_mat_labels(path)
    d = np.load(path)
    inst = d["inst"] if "inst" in d else d["nuc_raster"]
    if types_path is not None:
        t = np.load(types_path)
        types = t["types"] if "types" in t else t["nuc_raster"]
    else:
        types = d["types"] if "types" in d else (inst > 0).astype(np.int32)
    return inst, types


def run(args: argparse.Namespace) -> int:
    cmd = getattr(args, "nuclei_command", None)
    handlers = {
        "train": _train,
        "predict": _predict,
        "evaluate": _evaluate,
        "label-efficiency": _label_efficiency,
    }
    if cmd not in handlers:
        print("nuclei: choose train, predict, evaluate or label-efficiency", file=sys.stderr)
        return 2
    try:
        return handlers[cmd](args)
    except (ValueError, FileNotFoundError, KeyError) as exc:
        print(f"nuclei {cmd}: error: {exc}", file=sys.stderr)
        return 2


def _train(args: argparse.Namespace) -> int:
    from pathssl.nuclei.config import load_config
    from pathssl.nuclei.label_efficiency import predict_images, validation_predictor
    from pathssl.nuclei.scores import score_images
    from pathssl.nuclei.splits import load_data
    from pathssl.nuclei.train import train_nuclei

    cfg = load_config(args.config, args.overrides)
    res = train_nuclei(cfg, progress=not args.no_progress)
    print(f"checkpoint -> {res.checkpoint} ({res.seconds:.0f} s)")
    if cfg.train.val_every > 0:
        print(
            f"weights of step {res.meta.get('best_step')} (best validation "
            f"{cfg.train.monitor}); the scores below are on the images that selected them"
        )
    _, val = load_data(cfg.data)
    if val:
        pred = validation_predictor(res.model, cfg)
        scores = score_images(val, predict_images(pred, val))
        path = Path(cfg.train.out_dir) / "val_metrics.json"
        path.write_text(json.dumps(scores, indent=2))
        print(json.dumps({k: scores[k] for k in ("pq", "mpq_plus", "aji", "f1_detection")}))
    return 0


def _predict(args: argparse.Namespace) -> int:
    from pathssl.nuclei.batch import predict_inputs
    from pathssl.nuclei.postprocess import PostProcessConfig
    from pathssl.nuclei.predict import NucleiPredictor
    from pathssl.nuclei.train import load_nuclei_model
    from pathssl.train.distributed import pick_device

    device = pick_device(args.device)
    model, meta = load_nuclei_model(args.checkpoint, str(device))
    pcfg = meta["config"]["predict"]
    predictor = NucleiPredictor(
        model,
        window=args.window or pcfg["window"],
        overlap=args.overlap if args.overlap is not None else pcfg["overlap"],
        batch_size=args.batch_size or pcfg["batch_size"],
        device=device,
        postprocess_cfg=PostProcessConfig(**meta["config"]["postprocess"]),
        progress=not args.no_progress,
    )
    rows = predict_inputs(
        predictor,
        args.input,
        args.out,
        list(meta["type_names"]),
        float(meta["mpp"]),
        image_mpp=args.mpp,
        region=tuple(args.region) if args.region else None,
        assume_mpp=args.assume_mpp,
        force=args.force,
    )
    counts = {s: sum(r["status"] == s for r in rows) for s in ("done", "skipped", "failed")}
    print(
        f"{counts['done']} done, {counts['skipped']} skipped (outputs exist; --force redoes them), "
        f"{counts['failed']} failed -> {Path(args.out) / 'nuclei_manifest.csv'}"
    )
    if not rows:
        print("nuclei predict: error: no image or slide in the inputs", file=sys.stderr)
        return 2
    return 1 if counts["failed"] else 0


def load_pannuke_truth(folder: str | Path) -> tuple[list[tuple[Any, Any]], list[str]]:
    """(instance, type) maps and tissue names of a PanNuke fold folder (``masks.npy``,
    ``types.npy``): all maps in memory (~0.5 MB per image), made one mask at a time from the
    memory-mapped array. PanNuke's own five type ids; ``--true-types`` does not apply."""
    import numpy as np

    from pathssl.nuclei.data import pannuke_maps

    folder = Path(folder)
    masks = np.load(folder / "masks.npy", mmap_mode="r")
    tissues_path = folder / "types.npy"
    tissues = [str(t) for t in np.load(tissues_path)] if tissues_path.exists() else []
    return [pannuke_maps(np.asarray(m)) for m in masks], tissues


def load_predictions(paths: Sequence[str]) -> list[tuple[Any, Any]]:
    """``.npz`` files with ``inst`` + ``types``: one per image, or one holding ``(N, H, W)``
    stacks (``inst``, ``types``) for N images."""
    import numpy as np

    out: list[tuple[Any, Any]] = []
    for path in paths:
        d = np.load(path)
        inst = d["inst"] if "inst" in d else d["nuc_raster"]
        types = d["types"] if "types" in d else (inst > 0).astype(np.int32)
        if inst.ndim == 3:
            out.extend(zip(list(inst), list(types), strict=True))
        else:
            out.append((inst, types))
    return out


def _evaluate(args: argparse.Namespace) -> int:
    from pathssl.nuclei.scores import nuclei_scores

    tissues = None
    if len(args.true) == 1 and Path(args.true[0]).is_dir():
        trues, names = load_pannuke_truth(args.true[0])
        tissues = names or None
    else:
        if args.true_types is not None and len(args.true_types) != len(args.true):
            raise ValueError(f"{len(args.true_types)} --true-types for {len(args.true)} --true")
        ttypes = args.true_types or [None] * len(args.true)
        trues = [load_maps(t, tt) for t, tt in zip(args.true, ttypes, strict=True)]
    preds = load_predictions(args.pred)
    if args.tissues is not None:
        tissues = list(args.tissues)
    if tissues is not None and len(tissues) != len(trues):
        raise ValueError(f"{len(tissues)} tissue names for {len(trues)} images")
    scores = nuclei_scores(trues, preds, tissues, radius=args.radius)
    text = json.dumps(scores, indent=2, default=float)
    if args.out:
        Path(args.out).write_text(text)
    else:
        print(text)
    return 0


def _label_efficiency(args: argparse.Namespace) -> int:
    from pathssl.nuclei.config import load_config
    from pathssl.nuclei.label_efficiency import run_label_efficiency
    from pathssl.nuclei.scores import score_images

    cfg = load_config(args.config, args.overrides)
    report = run_label_efficiency(cfg, score_images, progress=not args.no_progress)
    for r in report["runs"]:
        print(f"{r['fraction']:>5.0%}: PQ {r['pq']:.3f}  mPQ+ {r.get('mpq_plus')}")
    print(f"-> {Path(cfg.train.out_dir) / 'label_efficiency.json'}")
    return 0
