"""Label efficiency: the nuclei head trained on 10%, 30% and 100% of the labels, one command.

The labelled area is cut into ``train.label_tile`` px tiles, and each (fraction, seed) run keeps
the stratified, seeded, nested subset of them that the package's one label-fraction sweep draws
(:func:`pathssl.data.sweep.fraction_subset`, strata = the tiles' ``data.sources``; shared with
``pathssl eval``'s benchmark): :func:`sweep_subset`. Each run trains from the same
initialisation (seeded by its seed) for the same number of steps, is evaluated on the same
held-apart images, and the mean metric-vs-fraction curve (mean +- sd over seeds,
:func:`pathssl.data.sweep.mean_sd`, in ``summary``) is drawn as a PNG with OpenCV. The metric
function is passed in (``score``: images + predictions -> ``{name: value}``), so this module does
not depend on a particular metrics implementation; ``pathssl nuclei label-efficiency`` passes
``pathssl.eval.metrics`` (PQ, mPQ, AJI, Dice, detection F1).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from pathssl.data.sweep import fraction_subset, mean_sd, sweep_cells
from pathssl.eval.report import write_json
from pathssl.nuclei.config import NucleiConfig
from pathssl.nuclei.data import LabelledImage, PanNukeFold, image_keys
from pathssl.nuclei.postprocess import Instances
from pathssl.nuclei.predict import NucleiPredictor, configured_predictor
from pathssl.nuclei.splits import load_data, load_training_data, subset_labels
from pathssl.nuclei.train import model_mpp, train_nuclei
from pathssl.train.assemble import check_out_dir
from pathssl.train.distributed import pick_device
from tiling.atomic import atomic_path

ScoreFn = Callable[[Sequence[LabelledImage], Sequence[Instances]], dict[str, Any]]


def validation_predictor(
    model: Any, cfg: NucleiConfig, stain_reference: dict[str, Any] | None = None
) -> NucleiPredictor:
    """A quiet predictor for a freshly trained model, with the config's window settings (and
    its stain normalisation when the model has a ``stain_reference``)."""
    return configured_predictor(model, cfg, pick_device(cfg.train.device), stain_reference)


def predict_images(predictor: NucleiPredictor, images: Sequence[LabelledImage]) -> list[Instances]:
    return [predictor.predict_image(im.image) for im in images]


def sweep_subset(
    images: Sequence[LabelledImage], fraction: float, tile: int, seed: int
) -> Sequence[LabelledImage]:
    """The label tiles of one sweep cell: ``images`` cut into ``tile`` px tiles (all of them,
    :func:`~pathssl.nuclei.splits.subset_labels` at fraction 1), of which each source keeps
    ``ceil(fraction * n)`` (:func:`pathssl.data.sweep.fraction_subset`; nested in ``fraction``
    for one ``seed``). A lazy PanNuke fold stays lazy."""
    tiles = subset_labels(images, 1.0, tile, seed=0)
    index = fraction_subset([source for source, _ in image_keys(tiles)], fraction, seed)
    if isinstance(tiles, PanNukeFold):
        return tiles.subset(index.tolist())
    return [tiles[int(i)] for i in index]


METRICS = ("pq", "mpq_plus", "aji", "f1_detection")


def run_label_efficiency(
    cfg: NucleiConfig,
    score: ScoreFn,
    fractions: Sequence[float] | None = None,
    progress: bool = True,
    seeds: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Train and evaluate once per (fraction, seed) (``seeds`` default: ``train.seed``; each
    seed draws the subset and seeds the training); writes ``label_efficiency.json`` (``runs``:
    one row per run; ``summary``: mean +- sd per fraction) and ``label_efficiency.png`` in
    ``cfg.train.out_dir``; returns the JSON content."""
    seeds = list(seeds) if seeds else [cfg.train.seed]
    cells = sweep_cells(fractions or cfg.fractions, seeds, repeat_full=True)
    check_out_dir(cfg.train.out_dir)
    mpp, _ = model_mpp(cfg)
    data = load_training_data(cfg.data, target_mpp=mpp)
    train_images, val_images = data.train, data.val
    if not val_images:
        raise ValueError("label efficiency needs held-apart images (data.val_region)")
    if cfg.train.val_every > 0:
        raise ValueError(
            "label efficiency scores each run on the held-apart images; train.val_every would "
            "select each run's weights on those same images: set train.val_every=0"
        )
    out_dir = Path(cfg.train.out_dir)
    rows: list[dict[str, Any]] = []
    for f, seed in cells:
        subset = sweep_subset(train_images, f, cfg.train.label_tile, seed)
        run_cfg = copy.deepcopy(cfg)
        name = f"fraction_{f:g}" + (f"_seed_{seed}" if len(seeds) > 1 else "")
        run_cfg.train.out_dir = str(out_dir / name)
        run_cfg.train.label_fraction = f
        run_cfg.train.seed = seed
        res = train_nuclei(run_cfg, subset, progress=progress, sources=data.sources)
        predictor = validation_predictor(res.model, cfg)
        scores = score(val_images, predict_images(predictor, val_images))
        rows.append(
            {
                "fraction": f,
                "seed": seed,
                "labelled_nuclei": int(sum(len(np.unique(s.inst)) - 1 for s in subset)),
                "labelled_pixels": labelled_pixels(subset),
                "train_seconds": round(res.seconds, 1),
                "final_loss": res.last.get("loss"),
                "checkpoint": str(res.checkpoint),
                **scores,
            }
        )
    metrics = [k for k in METRICS if k in rows[0]]
    fracs = sorted({r["fraction"] for r in rows})
    summary = [
        {"fraction": f} | {m: mean_sd([r[m] for r in rows if r["fraction"] == f]) for m in metrics}
        for f in fracs
    ]
    report = {
        "steps": cfg.train.max_steps,
        "backbone": cfg.model.backbone,
        "seeds": seeds,
        "runs": rows,
        "summary": summary,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "label_efficiency.json", report)
    curves = {m: [s[m]["mean"] for s in summary] for m in metrics}
    png = plot_curves(
        fracs, {m: [math.nan if v is None else v for v in c] for m, c in curves.items()}
    )
    with atomic_path(out_dir / "label_efficiency.png") as tmp:
        cv2.imwrite(str(tmp), png)
    return report


def labelled_pixels(tiles: Sequence[LabelledImage]) -> int:
    """Distinct pixels under ``tiles`` (regions of one image, by ``name``, may overlap: the last
    row and column of :func:`~pathssl.nuclei.splits.subset_labels` are moved back to the
    border)."""
    boxes: dict[str, list[tuple[int, int, int, int]]] = {}
    for t in tiles:
        h, w = t.image.shape[:2]
        boxes.setdefault(t.name, []).append((t.origin[0], t.origin[1], w, h))
    total = 0
    for group in boxes.values():
        xs = sorted({v for x, _, w, _ in group for v in (x, x + w)})
        ys = sorted({v for _, y, _, h in group for v in (y, y + h)})
        cover = np.zeros((len(ys) - 1, len(xs) - 1), bool)
        for x, y, w, h in group:
            cover[ys.index(y) : ys.index(y + h), xs.index(x) : xs.index(x + w)] = True
        total += int((cover * np.outer(np.diff(ys), np.diff(xs))).sum())
    return total


COLORS = [(200, 60, 30), (40, 150, 40), (30, 60, 200), (150, 40, 160)]  # BGR


def plot_curves(
    xs: Sequence[float], series: dict[str, Sequence[float]], size: tuple[int, int] = (640, 420)
) -> NDArray[np.uint8]:
    """Metric (y, 0..1) vs label fraction (x, 0..1) line plot, BGR uint8 ``(H, W, 3)``."""
    w, h = size
    left, right, top, bottom = 60, 150, 30, 50
    img = np.full((h, w, 3), 255, np.uint8)
    pw, ph = w - left - right, h - top - bottom

    def px(x: float, y: float) -> tuple[int, int]:
        yy = 0.0 if not math.isfinite(y) else min(max(y, 0.0), 1.0)
        return int(left + x * pw), int(top + (1 - yy) * ph)

    font = cv2.FONT_HERSHEY_SIMPLEX
    for t in np.linspace(0, 1, 6):
        y = px(0, float(t))[1]
        cv2.line(img, (left, y), (left + pw, y), (225, 225, 225), 1)
        cv2.putText(img, f"{t:.1f}", (15, y + 4), font, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    for x in xs:
        xp = px(x, 0)[0]
        cv2.line(img, (xp, top), (xp, top + ph), (235, 235, 235), 1)
        cv2.putText(img, f"{x:.0%}", (xp - 14, h - 30), font, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.rectangle(img, (left, top), (left + pw, top + ph), (0, 0, 0), 1)
    cv2.putText(img, "fraction of labels", (left + pw // 2 - 60, h - 8), font, 0.45, (0, 0, 0), 1)
    for i, (name, ys) in enumerate(series.items()):
        color = COLORS[i % len(COLORS)]
        pts = [px(x, y) for x, y in zip(xs, ys, strict=True)]
        for a, b in zip(pts, pts[1:], strict=False):
            cv2.line(img, a, b, color, 2, cv2.LINE_AA)
        for p in pts:
            cv2.circle(img, p, 4, color, -1, cv2.LINE_AA)
        ly = top + 20 + 22 * i
        cv2.line(img, (left + pw + 15, ly - 4), (left + pw + 40, ly - 4), color, 2)
        cv2.putText(img, name, (left + pw + 46, ly), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return img


def held_apart_scores(
    model: Any,
    cfg: NucleiConfig,
    mpp: float,
    out: Path | None = None,
    stain_reference: dict[str, Any] | None = None,
    baseline: bool = True,
) -> dict[str, Any] | None:
    """Scores (:func:`pathssl.nuclei.scores.score_images`) of a trained ``model`` on the config's
    held-apart images read at the model's ``mpp``; written to ``out`` (JSON) when given. None
    when the config holds no images apart. What ``pathssl nuclei train`` and the demo report.
    With several ``data.sources``, ``per_source`` holds the same scores for each source's
    held-apart images (and ``images``: their names). ``stain_reference``: the model's (its
    ``meta``), applied as prediction applies it. ``baseline``: also score the training-free
    classical model (:class:`~pathssl.nuclei.classical.ClassicalNuclei`) on the same images,
    under ``classical`` (and in each ``per_source``): what the model has to beat."""
    from pathssl.nuclei.scores import score_images

    _, val = load_data(cfg.data, target_mpp=mpp)
    if not val:
        return None
    preds = predict_images(validation_predictor(model, cfg, stain_reference), val)
    scores = score_images(val, preds)
    scores["type_names"] = list(cfg.data.type_names)
    base = _classical_predictions(val, mpp) if baseline else None
    if base is not None:
        scores["classical"] = _binary(score_images(val, base))
    keys = image_keys(val)
    names = sorted({s for s, _ in keys})
    if len(cfg.data.sources) > 1:
        scores["per_source"] = {}
        for name in names:
            idx = [i for i, (s, _) in enumerate(keys) if s == name]
            part = score_images([val[i] for i in idx], [preds[i] for i in idx])
            part["images"] = [keys[i][1] for i in idx]
            if base is not None:
                ims, cls = [val[i] for i in idx], [base[i] for i in idx]
                part["classical"] = _binary(score_images(ims, cls))
            scores["per_source"][name] = part
    if out is not None:
        write_json(out, scores)
    return scores


def _classical_predictions(val: Sequence[LabelledImage], mpp: float) -> list[Instances]:
    """The classical model's instances of each held-apart image (given at ``mpp``)."""
    from pathssl.nuclei.batch import classical_predictor
    from pathssl.nuclei.classical import ClassicalNuclei

    return predict_images(classical_predictor(ClassicalNuclei(mpp), progress=False), val)


def _binary(scores: dict[str, Any]) -> dict[str, Any]:
    """The type-free part of a score dict (the classical model finds nuclei, not types)."""
    return {
        k: scores[k]
        for k in ("images", "pq", "dq", "sq", "aji", "f1_detection", "counts")
        if k in scores
    }
