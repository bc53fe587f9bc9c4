"""Nuclei segmentation + classification with a HoVer-Net style head on a pretrained encoder.

``pathssl nuclei train CONFIG [key=value ...]``
    train per a YAML config (``configs/nuclei/*.yaml``): writes ``OUT_DIR/nuclei.pt`` and
    ``metrics.jsonl``; with held-apart data (``data.val_region``) prints its metrics.
    Library: ``pathssl.nuclei.train.train_nuclei(cfg)``.
``pathssl nuclei predict IMAGE_OR_SLIDE --checkpoint nuclei.pt --out OUT_DIR``
    an image (.png/.jpg, at the model's mpp unless ``--mpp``): ``STEM.npz`` (``inst``, ``types``
    maps), ``STEM.geojson`` and ``STEM_overlay.png``; a slide: ``STEM.geojson`` (QuPath
    detections, level-0 coordinates) and ``STEM_overlay.png``, streamed window by window.
    Library: ``pathssl.nuclei.predict.NucleiPredictor`` / ``predict_slide``.
``pathssl nuclei evaluate --pred A.npz [B.npz ...] --true A_true.npz [...] [--out m.json]``
    JSON metrics: PQ/SQ/DQ, per-class PQ and CoNIC mPQ+, AJI, AJI+, Dice, DICE2, detection F1.
    ``.npz`` files hold ``inst`` and ``types`` (or ``nuc_raster``; ``--true-types`` then gives
    the type maps); CoNSeP/Lizard ``.mat`` labels are read too.
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

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="nuclei_command", metavar="{train,predict,evaluate,...}")
    p = sub.add_parser("train", help="train a nuclei head from a YAML config")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="key=value config overrides")
    p.add_argument("--no-progress", action="store_true")
    p = sub.add_parser("predict", help="nuclei of an image or a whole-slide image")
    p.add_argument("input", help="image (.png/.jpg) or slide")
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
    p.add_argument("--out", default=None, help="metrics JSON (default: stdout)")
    p = sub.add_parser("label-efficiency", help="train on 10/30/100%% of the labels, plot")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--no-progress", action="store_true")


def load_maps(path: str | Path, types_path: str | Path | None = None) -> tuple[Any, Any]:
    """(instance map, type map) from our ``.npz`` (inst/types), a ``nuc_raster`` pair or .mat."""
    import numpy as np

    from pathssl.heads.datasets import load_mat_labels

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


def nuclei_scores(trues: Sequence[tuple[Any, Any]], preds: Sequence[tuple[Any, Any]]) -> dict:
    """Metrics over images: ``pq``/``sq``/``dq`` from TP/FP/FN/IoU summed over images, ``mpq``
    CoNIC mPQ+ (per-class PQ of summed counts, class mean), AJI/AJI+/Dice/DICE2 image means,
    detection F1 (radius 12 px) from summed pairings; see :mod:`pathssl.eval.metrics`."""
    import numpy as np

    from pathssl.eval import detection as D
    from pathssl.eval import metrics as M

    results, dets, ajis, ajips, dices, dice2s = [], [], [], [], [], []
    classes = sorted({int(c) for _, tt in trues for c in np.unique(tt)} - {0})
    for (ti, tt), (pi, pt) in zip(trues, preds, strict=True):
        results.append(M.panoptic_quality(ti, pi, tt, pt, classes=classes))
        dets.append(D.detection_counts(ti, pi, tt, pt))
        ajis.append(M.aji(ti, pi))
        ajips.append(M.aji_plus(ti, pi))
        dices.append(M.dice(ti, pi))
        dice2s.append(M.dice2(ti, pi))
    binary = results[0].binary
    for r in results[1:]:
        binary = binary + r.binary
    agg = M.conic_pq(results, classes)
    det = D.detection_scores(dets, classes)
    out: dict[str, Any] = {
        "images": len(results),
        "pq": binary.pq,
        "sq": binary.sq,
        "dq": binary.dq,
        "mpq": agg.mpq_plus,
        "per_class_pq": {str(c): v.pq for c, v in agg.per_class.items()},
        "aji": float(np.mean(ajis)),
        "aji_plus": float(np.mean(ajips)),
        "dice": float(np.mean(dices)),
        "dice2": float(np.mean(dice2s)),
        "f1_detection": det.f1,
        "detection": det.as_dict(),
        "counts": binary.as_dict(),
    }
    return out


def _score_instances(images: Sequence[Any], preds: Sequence[Any]) -> dict:
    return nuclei_scores([(i.inst, i.types) for i in images], [(p.inst, p.types) for p in preds])


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
    from pathssl.nuclei.train import load_data, train_nuclei

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
        scores = _score_instances(val, predict_images(pred, val))
        path = Path(cfg.train.out_dir) / "val_metrics.json"
        path.write_text(json.dumps(scores, indent=2))
        print(json.dumps({k: scores[k] for k in ("pq", "mpq", "aji", "f1_detection")}))
    return 0


def _predict(args: argparse.Namespace) -> int:
    import cv2
    import numpy as np

    from pathssl.heads.datasets import read_rgb
    from pathssl.nuclei.geojson import GeoJSONWriter, draw_overlay, write_png
    from pathssl.nuclei.predict import NucleiPredictor, instances_to_nuclei, predict_slide
    from pathssl.nuclei.train import load_nuclei_model, pick_device

    device = pick_device(args.device)
    model, meta = load_nuclei_model(args.checkpoint, str(device))
    pcfg = meta["config"]["predict"]
    from pathssl.heads.postprocess import PostProcessConfig

    predictor = NucleiPredictor(
        model,
        window=args.window or pcfg["window"],
        overlap=args.overlap if args.overlap is not None else pcfg["overlap"],
        batch_size=args.batch_size or pcfg["batch_size"],
        device=device,
        postprocess_cfg=PostProcessConfig(**meta["config"]["postprocess"]),
        progress=not args.no_progress,
    )
    src, out = Path(args.input), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names, mpp = list(meta["type_names"]), float(meta["mpp"])
    if src.suffix.lower() in IMAGE_SUFFIXES:
        image = read_rgb(src)
        f = 1.0 if args.mpp is None else args.mpp / mpp  # model px per image px
        h, w = image.shape[:2]
        small = image if f == 1 else cv2.resize(image, (round(w * f), round(h * f)))
        res = predictor.predict_image(np.asarray(small, np.uint8))
        inst, types = res.inst, res.types
        if f != 1:
            inst = np.asarray(cv2.resize(inst, (w, h), interpolation=cv2.INTER_NEAREST), np.int32)
            types = np.asarray(cv2.resize(types, (w, h), interpolation=cv2.INTER_NEAREST), np.int32)
        np.savez_compressed(out / f"{src.stem}.npz", inst=inst, types=types)
        nuclei = list(instances_to_nuclei(res, scale=1 / f))
        with GeoJSONWriter(out / f"{src.stem}.geojson", names, args.mpp or mpp) as gw:
            for nuc in nuclei:
                gw.write(nuc)
        write_png(out / f"{src.stem}_overlay.png", draw_overlay(image, nuclei, names))
        print(f"{len(nuclei)} nuclei -> {out / src.stem}.npz/.geojson")
        return 0
    r = predict_slide(
        predictor,
        src,
        out / f"{src.stem}.geojson",
        names,
        mpp,
        region=tuple(args.region) if args.region else None,
        overlay=out / f"{src.stem}_overlay.png",
        assume_mpp=args.assume_mpp,
    )
    print(f"{r.count} nuclei in {r.windows} windows -> {r.geojson}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    if len(args.pred) != len(args.true):
        raise ValueError(f"{len(args.pred)} --pred files but {len(args.true)} --true files")
    ttypes = args.true_types or [None] * len(args.true)
    trues = [load_maps(t, tt) for t, tt in zip(args.true, ttypes, strict=True)]
    preds = [load_maps(p) for p in args.pred]
    text = json.dumps(nuclei_scores(trues, preds), indent=2, default=float)
    if args.out:
        Path(args.out).write_text(text)
    else:
        print(text)
    return 0


def _label_efficiency(args: argparse.Namespace) -> int:
    from pathssl.nuclei.config import load_config
    from pathssl.nuclei.label_efficiency import run_label_efficiency

    cfg = load_config(args.config, args.overrides)
    report = run_label_efficiency(cfg, _score_instances, progress=not args.no_progress)
    for r in report["runs"]:
        print(f"{r['fraction']:>5.0%}: PQ {r['pq']:.3f}  mPQ {r.get('mpq')}")
    print(f"-> {Path(cfg.train.out_dir) / 'label_efficiency.json'}")
    return 0
