"""Nuclei detection and classification F1 from centroids (numpy + scipy, no torch).

Convention: Graham et al. 2019, HoVer-Net (``compute_stats.py``, ``pair_coordinates`` and
``run_nuclei_type_stat``). True and predicted centroids are paired by Hungarian matching on
Euclidean distance over *all* pairs (``scipy.optimize.linear_sum_assignment``); pairs farther apart
than ``radius`` (12 px by default, as used for CoNSeP/PanNuke at 40x) are then dropped, so a
pairing is never forced but a greedy nearest-neighbour one is never used either.

* detection ``F1_d = 2TP / (2TP + FP + FN)``, precision and recall over all nuclei;
* type accuracy = fraction of paired nuclei whose classes agree;
* per-class ``F1_c = 2TP_c / (2TP_c + 2FP_c + 2FN_c + FP_d,c + FN_d,c)``: among paired nuclei
  ``TP_c`` both c, ``FP_c`` pred c but true not c, ``FN_c`` true c but pred not c (each weighted
  2); ``FP_d,c`` / ``FN_d,c`` = unpaired predictions / true nuclei of class c (weighted 1).

Counts accumulate over images (``DetectionCounts + DetectionCounts``); the scores are computed
once over the whole set, as HoVer-Net does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist

from pathssl.eval.instances import Types, instance_centroids, instance_classes, relabel

IntMap = NDArray[np.integer]


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den > 0 else float("nan")


def match_centroids(
    true_yx: NDArray[np.floating], pred_yx: NDArray[np.floating], radius: float = 12.0
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """HoVer-Net ``pair_coordinates``: Hungarian matching of ``(N, 2)`` and ``(M, 2)`` points on
    Euclidean distance over all pairs, then pairs farther than ``radius`` dropped. Returns the
    paired row indices into ``true_yx`` and ``pred_yx``."""
    if len(true_yx) == 0 or len(pred_yx) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty.copy()
    dist = cdist(np.asarray(true_yx, dtype=np.float64), np.asarray(pred_yx, dtype=np.float64))
    rows, cols = linear_sum_assignment(dist)
    keep = dist[rows, cols] <= radius
    return rows[keep].astype(np.int64), cols[keep].astype(np.int64)


@dataclass(frozen=True)
class DetectionCounts:
    """Classes of paired and unpaired nuclei (accumulate over images with ``+``)."""

    paired_true: NDArray[np.int64]
    paired_pred: NDArray[np.int64]
    unpaired_true: NDArray[np.int64]
    unpaired_pred: NDArray[np.int64]

    def __add__(self, other: DetectionCounts) -> DetectionCounts:
        return DetectionCounts(
            *(
                np.concatenate([a, b])
                for a, b in zip(
                    (self.paired_true, self.paired_pred, self.unpaired_true, self.unpaired_pred),
                    (
                        other.paired_true,
                        other.paired_pred,
                        other.unpaired_true,
                        other.unpaired_pred,
                    ),
                    strict=True,
                )
            )
        )


def detection_counts(
    true: IntMap,
    pred: IntMap,
    true_types: Types | None = None,
    pred_types: Types | None = None,
    radius: float = 12.0,
) -> DetectionCounts:
    """Centroid pairing of one image (:func:`match_centroids`) with the class of every nucleus
    (all 1 without types)."""
    t_lab, t_ids, _ = relabel(true)
    p_lab, p_ids, _ = relabel(pred)
    ti, pj = match_centroids(
        instance_centroids(t_lab, t_ids.size), instance_centroids(p_lab, p_ids.size), radius
    )
    t_cls = instance_classes(t_lab, t_ids, true_types)
    p_cls = instance_classes(p_lab, p_ids, pred_types)
    t_un = np.ones(t_ids.size, dtype=bool)
    p_un = np.ones(p_ids.size, dtype=bool)
    t_un[ti] = False
    p_un[pj] = False
    return DetectionCounts(t_cls[ti], p_cls[pj], t_cls[t_un], p_cls[p_un])


@dataclass(frozen=True)
class DetectionScores:
    """Detection F1 / precision / recall, type accuracy over paired nuclei, per-class F1."""

    f1: float
    precision: float
    recall: float
    type_accuracy: float
    per_class_f1: dict[int, float]

    def as_dict(self) -> dict[str, object]:
        return {
            "f1_d": self.f1,
            "precision_d": self.precision,
            "recall_d": self.recall,
            "type_accuracy": self.type_accuracy,
            "per_class_f1": {str(k): v for k, v in self.per_class_f1.items()},
        }


def detection_scores(
    counts: DetectionCounts | Sequence[DetectionCounts], classes: Sequence[int] | None = None
) -> DetectionScores:
    """Detection and classification F1 (HoVer-Net ``run_nuclei_type_stat``; module docstring).

    Per-class ``F1_c = 2TP_c / (2TP_c + 2FP_c + 2FN_c + FP_d,c + FN_d,c)``: among paired nuclei,
    ``TP_c`` both c, ``FP_c`` pred c / true not c, ``FN_c`` true c / pred not c; ``FP_d,c`` and
    ``FN_d,c`` unpaired predictions / true nuclei of class c.
    """
    if not isinstance(counts, DetectionCounts):
        if not counts:
            raise ValueError("no detection counts given")
        total = counts[0]
        for more in counts[1:]:
            total = total + more
        counts = total
    pt, pp, ut, up = (
        counts.paired_true,
        counts.paired_pred,
        counts.unpaired_true,
        counts.unpaired_pred,
    )
    tp, fp, fn = pt.size, up.size, ut.size
    if classes is None:
        seen = np.concatenate([pt, pp, ut, up])
        classes = sorted(set(np.unique(seen).tolist()) - {0})
    per_class: dict[int, float] = {}
    for c in classes:
        tp_c = int(((pt == c) & (pp == c)).sum())
        fp_c = int(((pt != c) & (pp == c)).sum())
        fn_c = int(((pt == c) & (pp != c)).sum())
        den = 2 * tp_c + 2 * fp_c + 2 * fn_c + int((up == c).sum()) + int((ut == c).sum())
        per_class[int(c)] = _ratio(2 * tp_c, den)
    return DetectionScores(
        f1=_ratio(2 * tp, 2 * tp + fp + fn),
        precision=_ratio(tp, tp + fp),
        recall=_ratio(tp, tp + fn),
        type_accuracy=_ratio(int((pt == pp).sum()), tp),
        per_class_f1=per_class,
    )
