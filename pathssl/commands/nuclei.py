"""Nuclei segmentation + classification with a HoVer-Net style head on a pretrained encoder.

``pathssl nuclei train CONFIG [key=value ...]``
    train per a YAML config (``configs/nuclei/*.yaml``): writes ``OUT_DIR/nuclei.pt`` and
    ``metrics.jsonl``; with held-apart data (``data.val_region``) prints its metrics.
    Library: ``pathssl.nuclei.train.train_nuclei(cfg)``.
``pathssl nuclei predict IMAGE_OR_SLIDE_OR_FOLDER... --model nuclei.pt|classical --out OUT_DIR``
    ``--model``: a trained ``nuclei.pt`` (``--checkpoint`` is the same option) or ``classical``,
    the training-free baseline (haematoxylin threshold + watershed, sizes in micrometres). An
    image (.png/.jpg/.bmp, or a .tif/.tiff that openslide does not recognise as a slide): read at
    ``--mpp`` (the INPUT's um/px; default: the model's), resampled to the model's mpp, outputs in
    the input's pixels: ``ID.npz`` (``inst``, ``types`` maps), ``ID.geojson`` and
    ``ID_overlay.png``; a slide: ``ID.geojson`` (QuPath detections, level-0 coordinates) and
    ``ID_overlay.png``, streamed window by window. ``--tta`` / ``--no-tta``: dihedral test-time
    augmentation (default: the checkpoint's ``predict.tta``); ``--no-stain-norm``: skip the
    normalisation to the checkpoint's stain reference. Folders are searched recursively; a
    failed input is reported and the rest go on (exit code 1); inputs whose outputs exist are
    skipped (``--force``); ``nuclei_manifest.csv`` lists every input.
    Library: ``pathssl.nuclei.batch.load_predictor`` and ``predict_inputs``.
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

from tiling.errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="nuclei_command", metavar="{train,predict,evaluate,...}")
    p = sub.add_parser("train", help="train a nuclei head from a YAML config")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="key=value config overrides")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--print-config", action="store_true", help="print the resolved config, exit")
    p = sub.add_parser("predict", help="nuclei of images and whole-slide images")
    p.add_argument(
        "input", nargs="+", help="images (.png/.jpg/.tif tiles), slides, or folders of them"
    )
    p.add_argument("--force", action="store_true", help="redo inputs whose outputs exist")
    p.add_argument(
        "--model",
        "--checkpoint",
        dest="model",
        required=True,
        help="a nuclei checkpoint (nuclei.pt) or 'classical' (training-free baseline)",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--mpp", type=float, default=None, help="the input images' um/px (default: the model's)"
    )
    p.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="dihedral test-time augmentation (default: the checkpoint's predict.tta)",
    )
    p.add_argument(
        "--stain-norm",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="normalise inputs to the checkpoint's stain reference (default: on when it has one)",
    )
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
    p.add_argument("--force", action="store_true", help="replace --out (an earlier metrics file)")
    p = sub.add_parser("label-efficiency", help="train on 10/30/100%% of the labels, plot")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--print-config", action="store_true", help="print the resolved config, exit")


INST_KEYS = ("inst", "nuc_raster")
TYPE_KEYS = ("types", "nuc_raster")


def _npz(path: str | Path, option: str) -> Any:
    """The arrays of an ``.npz`` file, or a one-line ``UsageError`` naming it and the option."""
    import zipfile

    import numpy as np

    if not Path(path).is_file():
        raise UsageError(f"{option} {path}: no such file")
    try:
        d = np.load(path)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise UsageError(f"{option} {path}: not a readable .npz file ({exc})") from None
    if not hasattr(d, "files"):
        raise UsageError(f"{option} {path}: a .npy array, expected an .npz with keys 'inst' ...")
    return d


def _key(d: Any, path: str | Path, option: str, keys: Sequence[str], what: str) -> Any:
    """The first of ``keys`` in the npz ``d``; else a one-line error naming the file, the keys
    it has and the keys expected."""
    for k in keys:
        if k in d.files:
            return d[k]
    expected = " or ".join(repr(k) for k in keys)
    raise UsageError(
        f"{option} {path}: no {what} map; expected key {expected}, the file has "
        f"{', '.join(map(repr, d.files)) or 'no arrays'}"
    )


def load_maps(
    path: str | Path, types_path: str | Path | None = None, option: str = "--true"
) -> tuple[Any, Any]:
    """(instance map, type map) from our ``.npz`` (inst/types), a ``nuc_raster`` pair or .mat."""
    import numpy as np

    from pathssl.nuclei.data import load_mat_labels

    if str(path).endswith(".mat"):
        if not Path(path).is_file():
            raise UsageError(f"{option} {path}: no such file")
        try:
            return load_mat_labels(path)
        except KeyError as exc:
            raise UsageError(
                f"{option} {path}: no {exc.args[0]!r} in the .mat file; expected CoNSeP/Lizard "
                "labels (inst_map, and type_map or class + id)"
            ) from None
    d = _npz(path, option)
    inst = _key(d, path, option, INST_KEYS, "instance")
    if types_path is not None:
        t = _npz(types_path, "--true-types")
        types = _key(t, types_path, "--true-types", TYPE_KEYS, "type")
    else:
        types = d["types"] if "types" in d.files else (inst > 0).astype(np.int32)
    if np.shape(types) != np.shape(inst):
        raise UsageError(
            f"{option} {path}: type map {np.shape(types)} and instance map {np.shape(inst)} "
            "differ in shape"
        )
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
        print(
            "pathssl nuclei: error: no subcommand; choose train, predict, evaluate or "
            "label-efficiency",
            file=sys.stderr,
        )
        return 2
    return handlers[cmd](args)  # errors: one line and exit code by pathssl.cli.main


def _print_config(cfg: Any) -> int:
    """``--print-config``: the composed, overridden, checked config as YAML; no work done."""
    from pathssl.config import dump

    print(dump(cfg), end="")
    return 0


def _train(args: argparse.Namespace) -> int:
    from pathssl.nuclei.config import load_config
    from pathssl.nuclei.label_efficiency import held_apart_scores
    from pathssl.nuclei.train import train_nuclei

    cfg = load_config(args.config, args.overrides)
    if args.print_config:
        return _print_config(cfg)
    res = train_nuclei(cfg, progress=not args.no_progress)
    print(f"checkpoint -> {res.checkpoint} ({res.seconds:.0f} s)")
    if cfg.train.val_every > 0:
        print(
            f"weights of step {res.meta.get('best_step')} (best validation "
            f"{cfg.train.monitor}); the scores below are on the images that selected them"
        )
    out = Path(cfg.train.out_dir) / "val_metrics.json"
    mpp, ref = float(res.meta["mpp"]), res.meta.get("stain_reference")
    scores = held_apart_scores(res.model, cfg, mpp, out, stain_reference=ref)
    if scores is not None:
        keys = ("pq", "aji", "f1_detection")
        parts = {"all": scores, **scores.get("per_source", {})}
        for name, s in parts.items():
            ours = " ".join(f"{k} {s[k]:.3f}" for k in keys)
            base = s.get("classical") or {}
            theirs = " ".join(f"{k} {base[k]:.3f}" for k in keys if k in base)
            print(f"held apart ({name}): model {ours} | classical {theirs}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from pathssl.nuclei.batch import load_predictor, predict_inputs
    from pathssl.train.distributed import pick_device

    _check_predict_args(args)
    try:
        loaded = load_predictor(
            args.model,
            pick_device(args.device),
            window=args.window,
            overlap=args.overlap,
            batch_size=args.batch_size,
            tta=args.tta,
            stain_norm=args.stain_norm,
            progress=not args.no_progress,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    pred = loaded.predictor
    if not 0 <= pred.overlap < pred.window:
        raise UsageError(f"--overlap must be in [0, window {pred.window}), got {pred.overlap}")
    print(f"model: {loaded.description}", flush=True)
    rows = predict_inputs(
        pred,
        args.input,
        args.out,
        loaded.type_names,
        loaded.mpp,
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
    return 1 if counts["failed"] else 0


def _check_predict_args(args: argparse.Namespace) -> None:
    """Bad numbers, inputs without an image or slide, and an output folder that may not be
    written are refused before the model is loaded (``UsageError``: exit code 2)."""
    from pathssl.nuclei.batch import CLASSICAL, check_predict_output, find_inputs

    for name in ("mpp", "assume_mpp"):
        value = getattr(args, name)
        if value is not None and not value > 0:
            raise UsageError(f"--{name.replace('_', '-')} must be > 0 um/px, got {value}")
    if args.window is not None and args.window < 32:
        raise UsageError(f"--window must be >= 32 px, got {args.window}; omit it for the model's")
    if args.overlap is not None and args.overlap < 0:
        raise UsageError(f"--overlap must be >= 0 px, got {args.overlap}")
    if args.batch_size is not None and args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.region is not None and (min(args.region[:2]) < 0 or min(args.region[2:]) < 1):
        raise UsageError(f"--region X Y W H needs X, Y >= 0 and W, H >= 1, got {args.region}")
    classical = args.model == CLASSICAL
    if not classical and not Path(args.model).is_file():
        raise UsageError(f"--model {args.model}: no such file; give a nuclei.pt or '{CLASSICAL}'")
    if not find_inputs(args.input):
        raise UsageError(
            f"no image (.png/.jpg/.bmp) or slide (or .tif tile) in {' '.join(args.input)}; "
            "check the inputs"
        )
    check_predict_output(args.out, args.input, None if classical else args.model)


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
        d = _npz(path, "--pred")
        inst = _key(d, path, "--pred", INST_KEYS, "instance")
        types = d["types"] if "types" in d.files else (inst > 0).astype(np.int32)
        if np.shape(types) != np.shape(inst) or inst.ndim not in (2, 3):
            raise UsageError(
                f"--pred {path}: expected 'inst' and 'types' of one shape, (H, W) or (N, H, W); "
                f"got {np.shape(inst)} and {np.shape(types)}"
            )
        if inst.ndim == 3:
            out.extend(zip(list(inst), list(types), strict=True))
        else:
            out.append((inst, types))
    return out


def is_metrics_file(path: Path) -> bool:
    """Whether ``path`` is a metrics JSON that ``nuclei evaluate`` wrote."""
    try:
        d = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(d, dict) and {"pq", "sq", "dq", "aji"} <= set(d)


def _evaluate(args: argparse.Namespace) -> int:
    from pathssl.eval.report import json_text, write_json
    from pathssl.nuclei.scores import nuclei_scores
    from tiling.outputs import check_output_file

    if args.radius <= 0:
        raise UsageError(f"--radius must be > 0 px, got {args.radius}")
    if args.out:
        check_output_file(
            args.out,
            inputs=[*args.pred, *args.true, *(args.true_types or [])],
            force=args.force,
            is_ours=is_metrics_file,
            command="nuclei evaluate",
        )
    tissues = None
    if len(args.true) == 1 and Path(args.true[0]).is_dir():
        if not (Path(args.true[0]) / "masks.npy").is_file():
            raise UsageError(
                f"--true {args.true[0]}: a folder, but no masks.npy in it; give a PanNuke fold "
                "folder (masks.npy, types.npy) or .npz/.mat label files"
            )
        trues, names = load_pannuke_truth(args.true[0])
        tissues = names or None
    else:
        if args.true_types is not None and len(args.true_types) != len(args.true):
            raise UsageError(
                f"{len(args.true_types)} --true-types files for {len(args.true)} --true files; "
                "give one type map per label file"
            )
        ttypes = args.true_types or [None] * len(args.true)
        trues = [load_maps(t, tt) for t, tt in zip(args.true, ttypes, strict=True)]
    preds = load_predictions(args.pred)
    if args.tissues is not None:
        tissues = list(args.tissues)
    if tissues is not None and len(tissues) != len(trues):
        raise UsageError(f"{len(tissues)} --tissues names for {len(trues)} images; give one each")
    if len(preds) != len(trues):
        raise UsageError(
            f"{len(preds)} predicted images (--pred {' '.join(args.pred)}) for {len(trues)} "
            f"labelled images (--true {' '.join(args.true)}); give one prediction per label map"
        )
    for k, ((ti, _), (pi, _)) in enumerate(zip(trues, preds, strict=True)):
        if ti.shape != pi.shape:
            raise UsageError(
                f"image {k}: prediction {pi.shape} and labels {ti.shape} differ in size "
                f"(--pred {' '.join(args.pred)}, --true {' '.join(args.true)}); pair them in order"
            )
    scores = nuclei_scores(trues, preds, tissues, radius=args.radius)
    if args.out:
        write_json(args.out, scores)
    else:
        print(json_text(scores), end="")
    return 0


def _label_efficiency(args: argparse.Namespace) -> int:
    from pathssl.nuclei.config import load_config
    from pathssl.nuclei.label_efficiency import run_label_efficiency
    from pathssl.nuclei.scores import score_images

    cfg = load_config(args.config, args.overrides)
    if args.print_config:
        return _print_config(cfg)
    report = run_label_efficiency(cfg, score_images, progress=not args.no_progress)
    for r in report["runs"]:
        print(f"{r['fraction']:>5.0%}: PQ {r['pq']:.3f}  mPQ+ {r.get('mpq_plus')}")
    print(f"-> {Path(cfg.train.out_dir) / 'label_efficiency.json'}")
    return 0
