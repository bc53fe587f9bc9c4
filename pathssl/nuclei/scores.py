"""Nuclei metrics over a set of images, as the CLI, label-efficiency runs, the demo and
in-training validation report them (one place; each metric's convention is in
:mod:`pathssl.eval.metrics`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from pathssl.eval import detection as D
from pathssl.eval import metrics as M
from pathssl.nuclei.data import LabelledImage
from pathssl.nuclei.postprocess import Instances


def nuclei_scores(
    trues: Sequence[tuple[Any, Any]],
    preds: Sequence[tuple[Any, Any]],
    tissues: Sequence[str] | None = None,
    radius: float = 12.0,
    classes: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Metrics over images (see :mod:`pathssl.eval.metrics` for each convention):

    ``pq``/``sq``/``dq`` from TP/FP/FN/IoU summed over images; ``pq_image_mean`` the mean of
    per-image PQ (HoVer-Net ``compute_stats``); ``mpq_plus`` CoNIC aggregated mPQ+ and
    ``per_class_pq``; AJI/AJI+/Dice/DICE2 image means; detection F1 within ``radius`` px (12 px:
    HoVer-Net's, at 40x ~3 um; use 6 px at 20x) from summed pairings, per-class F1 in
    ``detection``; with one ``tissues`` name per image, ``pannuke``: PanNuke mPQ / bPQ (per image,
    nan-mean per tissue, mean over tissues) and per tissue. ``classes``: the type ids scored
    (default: those in the labels)."""
    if len(trues) != len(preds) or not trues:
        raise ValueError(f"{len(preds)} predictions for {len(trues)} labelled images")
    results, dets, ajis, ajips, dices, dice2s = [], [], [], [], [], []
    if classes is None:
        classes = sorted({int(c) for _, tt in trues for c in np.unique(tt)} - {0})
    for (ti, tt), (pi, pt) in zip(trues, preds, strict=True):
        if np.shape(ti) != np.shape(pi):
            raise ValueError(f"prediction {np.shape(pi)} and labels {np.shape(ti)} differ in size")
        results.append(M.panoptic_quality(ti, pi, tt, pt, classes=classes))
        dets.append(D.detection_counts(ti, pi, tt, pt, radius=radius))
        ajis.append(M.aji(ti, pi))
        ajips.append(M.aji_plus(ti, pi))
        dices.append(M.dice(ti, pi))
        dice2s.append(M.dice2(ti, pi))
    agg = M.conic_pq(results, classes)
    det = D.detection_scores(dets, classes)
    out: dict[str, Any] = {
        "images": len(results),
        "pq": agg.binary.pq,
        "sq": agg.binary.sq,
        "dq": agg.binary.dq,
        "pq_image_mean": agg.pq,
        "mpq_plus": agg.mpq_plus,
        "per_class_pq": {str(c): v.pq for c, v in agg.per_class.items()},
        "aji": M.nanmean(ajis),
        "aji_plus": M.nanmean(ajips),
        "dice": M.nanmean(dices),
        "dice2": M.nanmean(dice2s),
        "f1_detection": det.f1,
        "detection_radius_px": radius,
        "detection": det.as_dict(),
        "counts": agg.binary.as_dict(),
    }
    if tissues is not None:
        pn = M.pannuke_pq(results, list(tissues), classes)
        out["pannuke"] = {
            "mpq": pn.mpq,
            "bpq": pn.bpq,
            "per_tissue": {t: {"mpq": m, "bpq": b} for t, (m, b) in pn.per_tissue.items()},
            "per_class_pq": {str(c): v for c, v in pn.per_class.items()},
        }
    return out


def score_images(
    images: Sequence[LabelledImage],
    preds: Sequence[Instances],
    classes: Sequence[int] | None = None,
) -> dict[str, Any]:
    """:func:`nuclei_scores` of labelled images and their predictions (PanNuke mPQ/bPQ too when
    every image names its tissue)."""
    tissues = [i.tissue for i in images]
    return nuclei_scores(
        [(i.inst, i.types) for i in images],
        [(p.inst, p.types) for p in preds],
        tissues if all(tissues) else None,
        classes=classes,
    )
