"""Nuclei instance segmentation + classification metrics (numpy + scipy, no torch).

Inputs are ``(H, W)`` integer instance maps (``0`` = background, ids need not be contiguous) and,
for per-class metrics, per-instance classes given as an ``(H, W)`` type map (majority vote inside
each instance) or a ``{instance id: class}`` mapping; see :mod:`pathssl.eval.instances`.

Conventions (each metric names the one it follows):

* **PQ / SQ / DQ** -- Kirillov et al. 2019, "Panoptic Segmentation": a true and a predicted
  instance match when IoU > 0.5 (such matches are necessarily unique);
  ``DQ = TP / (TP + FP/2 + FN/2)``, ``SQ = sum(IoU of matches) / TP``, ``PQ = DQ * SQ``.
  Per class: the same on the instances of that class only. ``nan`` when TP + FP + FN = 0; SQ is 0
  when TP = 0. A threshold below 0.5 switches to Hungarian matching maximising the summed IoU
  (MONAI's ``PanopticQualityMetric`` behaviour).
* **PanNuke mPQ / bPQ** -- Gamper et al. 2020 (PanNuke-metrics ``run.py``): PQ per image and per
  class, ``nan`` where the class is absent from the ground truth of that image, nan-mean over
  classes per image (mPQ) or the binary PQ (bPQ), nan-mean over the images of each tissue, mean
  over tissues.
* **CoNIC aggregated PQ (mPQ+)** -- Graham et al. 2021/2024 (CoNIC ``compute_stats.py``): TP, FP,
  FN and IoU sums accumulated over all images per class, PQ per class from the totals (0 for a
  class absent from every image, as CoNIC's ``1e-6`` guards give), mean over all classes; CoNIC's
  binary PQ is the mean over images of the per-image PQ (0 for an image without any nucleus).
* **AJI** -- Kumar et al. 2017 as implemented in HoVer-Net ``get_fast_aji``: each true nucleus is
  paired with the overlapping prediction of highest IoU (a prediction may serve several);
  ``AJI = sum |G ∩ S| / (sum |G ∪ S| + unpaired true areas + never-used prediction areas)``.
* **AJI+** -- Graham et al. 2019 (HoVer-Net ``get_fast_aji_plus``): the same with a unique
  pairing maximising the summed IoU (Hungarian), so no pixel is counted twice in the union.
* **Dice** -- binary foreground Dice ``2|A ∩ B| / (|A| + |B|)`` (HoVer-Net ``get_dice_1``).
* **DICE2** -- HoVer-Net ``get_dice_2`` ("ensemble dice"): over every overlapping (true, pred)
  pair, ``2 sum |G ∩ S| / sum (|G| + |S|)``.
* **Detection F1 / per-class F1** -- Graham et al. 2019 (HoVer-Net ``compute_stats.py``):
  centroids paired by Hungarian matching on Euclidean distance (``linear_sum_assignment`` over all
  pairs), pairs farther than ``radius`` (12 px) dropped. ``F1_d = 2TP / (2TP + FP + FN)``; for class
  c, over paired nuclei where true or pred is c, ``F1_c = 2TP_c / (2TP_c + 2FP_c + 2FN_c + FP_d,c +
  FN_d,c)`` with ``FP_d,c`` / ``FN_d,c`` the unpaired predictions / true nuclei of class c.

Every metric returns ``nan`` (never raises) when it is undefined, e.g. on two empty maps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from pathssl.eval.detection import (
    DetectionCounts,
    DetectionScores,
    detection_counts,
    detection_scores,
    match_centroids,
)
from pathssl.eval.instances import (
    InstanceOverlap,
    Types,
    instance_classes,
    instance_overlap,
    max_weight_matching,
)

__all__ = [
    "AggregatedPQ",
    "DetectionCounts",
    "DetectionScores",
    "PQCounts",
    "PanNukeScores",
    "PanopticResult",
    "aji",
    "aji_plus",
    "conic_pq",
    "detection_counts",
    "detection_scores",
    "dice",
    "dice2",
    "match_centroids",
    "pannuke_pq",
    "panoptic_quality",
]

IntMap = NDArray[np.integer]


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den > 0 else float("nan")


def nanmean(values: Sequence[float] | NDArray[np.float64]) -> float:
    """Mean of the non-NaN values (NaN when there are none), without a warning."""
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[~np.isnan(arr)]
    return float(arr.mean()) if arr.size else float("nan")


# ----------------------------------------------------------------------------- PQ


@dataclass(frozen=True)
class PQCounts:
    """Matching counts of one class (or binary) over one or many images; add them to aggregate."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    iou_sum: float = 0.0

    def __add__(self, other: PQCounts) -> PQCounts:
        return PQCounts(
            self.tp + other.tp,
            self.fp + other.fp,
            self.fn + other.fn,
            self.iou_sum + other.iou_sum,
        )

    @property
    def empty(self) -> bool:
        """No instance on either side."""
        return self.tp + self.fp + self.fn == 0

    @property
    def true_present(self) -> bool:
        """The ground truth has at least one instance."""
        return self.tp + self.fn > 0

    @property
    def dq(self) -> float:
        """Detection quality ``TP / (TP + FP/2 + FN/2)`` (an F1 score)."""
        return _ratio(self.tp, self.tp + 0.5 * self.fp + 0.5 * self.fn)

    @property
    def sq(self) -> float:
        """Segmentation quality: mean IoU of matched pairs (0 without matches)."""
        if self.empty:
            return float("nan")
        return self.iou_sum / self.tp if self.tp else 0.0

    @property
    def pq(self) -> float:
        """Panoptic quality ``DQ * SQ``."""
        return self.dq * self.sq

    def as_dict(self) -> dict[str, float]:
        return {
            "pq": self.pq,
            "sq": self.sq,
            "dq": self.dq,
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "iou_sum": self.iou_sum,
        }


@dataclass(frozen=True)
class PanopticResult:
    """PQ counts of one image: ``binary`` (all nuclei as one class) and ``per_class``."""

    binary: PQCounts
    per_class: dict[int, PQCounts] = field(default_factory=dict)


def _match_pairs(
    ti: NDArray[np.int64], pj: NDArray[np.int64], iou: NDArray[np.float64], threshold: float
) -> NDArray[np.bool_]:
    """Mask of matched candidate pairs: IoU > threshold (unique when threshold >= 0.5), else a
    Hungarian pairing maximising summed IoU, then IoU > threshold."""
    if threshold >= 0.5:
        return iou > threshold
    return max_weight_matching(ti, pj, iou) & (iou > threshold)


def panoptic_quality(
    true: IntMap,
    pred: IntMap,
    true_types: Types | None = None,
    pred_types: Types | None = None,
    classes: Sequence[int] | None = None,
    iou_threshold: float = 0.5,
) -> PanopticResult:
    """PQ counts of one image (Kirillov et al. 2019; see the module docstring).

    Args:
        true, pred: ``(H, W)`` instance maps.
        true_types, pred_types: per-instance classes (type map or ``{id: class}``); both or neither.
        classes: class ids to report (default: every non-zero class seen on either side).
        iou_threshold: match when IoU > this; 0.5 is the standard.
    """
    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    if (true_types is None) != (pred_types is None):
        raise ValueError("give both true_types and pred_types, or neither")
    table, t_lab, p_lab = instance_overlap(true, pred)
    iou = table.iou
    ti, pj = table.true_index, table.pred_index
    matched = _match_pairs(ti, pj, iou, iou_threshold)
    tp = int(matched.sum())
    binary = PQCounts(
        tp, table.pred_ids.size - tp, table.true_ids.size - tp, float(iou[matched].sum())
    )
    per_class: dict[int, PQCounts] = {}
    if true_types is not None:
        t_cls = instance_classes(t_lab, table.true_ids, true_types)
        p_cls = instance_classes(p_lab, table.pred_ids, pred_types)
        if classes is None:
            classes = sorted(
                (set(np.unique(t_cls).tolist()) | set(np.unique(p_cls).tolist())) - {0}
            )
        for c in classes:
            same = (t_cls[ti] == c) & (p_cls[pj] == c)
            m = np.zeros_like(same)
            m[same] = _match_pairs(ti[same], pj[same], iou[same], iou_threshold)
            tp_c = int(m.sum())
            per_class[int(c)] = PQCounts(
                tp_c,
                int((p_cls == c).sum()) - tp_c,
                int((t_cls == c).sum()) - tp_c,
                float(iou[m].sum()),
            )
    return PanopticResult(binary, per_class)


@dataclass(frozen=True)
class PanNukeScores:
    """PanNuke mPQ / bPQ, per tissue ``{tissue: (mPQ, bPQ)}`` and per class (nan-mean of the
    per-image class PQ over all images)."""

    mpq: float
    bpq: float
    per_tissue: dict[str, tuple[float, float]]
    per_class: dict[int, float]


def pannuke_pq(
    results: Sequence[PanopticResult],
    tissues: Sequence[str],
    classes: Sequence[int],
    nan_if_true_empty: bool = True,
) -> PanNukeScores:
    """PanNuke mPQ and bPQ (Gamper et al. 2020, PanNuke-metrics ``run.py``).

    Per image: class PQ is ``nan`` where the ground truth has no nucleus of that class
    (``nan_if_true_empty=False``: only where neither side has one, so spurious predictions of an
    absent class score 0); mPQ of the image = nan-mean over ``classes``; bPQ of the image = binary
    PQ (``nan`` on an image without nuclei). Then nan-mean over the images of each tissue, then
    mean over tissues (nan-mean, tissues whose images are all ``nan`` are skipped).
    """
    if len(results) != len(tissues):
        raise ValueError(f"{len(results)} results but {len(tissues)} tissue names")

    def image_pq(c: PQCounts) -> float:
        absent = not c.true_present if nan_if_true_empty else c.empty
        return float("nan") if absent else c.pq

    class_pq = np.array(
        [[image_pq(r.per_class.get(int(c), PQCounts())) for c in classes] for r in results],
        dtype=np.float64,
    ).reshape(len(results), len(classes))
    mpq_img = np.array([nanmean(row) for row in class_pq])
    bpq_img = np.array([image_pq(r.binary) for r in results])
    tissue_arr = np.asarray(tissues)
    per_tissue: dict[str, tuple[float, float]] = {}
    for t in dict.fromkeys(tissues):
        sel = tissue_arr == t
        per_tissue[str(t)] = (nanmean(mpq_img[sel]), nanmean(bpq_img[sel]))
    return PanNukeScores(
        mpq=nanmean([v[0] for v in per_tissue.values()]),
        bpq=nanmean([v[1] for v in per_tissue.values()]),
        per_tissue=per_tissue,
        per_class={int(c): nanmean(class_pq[:, k]) for k, c in enumerate(classes)},
    )


@dataclass(frozen=True)
class AggregatedPQ:
    """CoNIC-style PQ: ``mpq_plus`` (mean over classes of the PQ of accumulated counts),
    ``per_class`` accumulated counts, ``binary`` accumulated binary counts and ``pq`` (CoNIC's
    binary PQ: mean over images of the per-image binary PQ)."""

    mpq_plus: float
    per_class: dict[int, PQCounts]
    binary: PQCounts
    pq: float


def conic_pq(results: Sequence[PanopticResult], classes: Sequence[int]) -> AggregatedPQ:
    """CoNIC-style aggregated PQ (CoNIC ``compute_stats.py``): counts summed over images per
    class, then PQ per class (0 where a class has no true or predicted nucleus anywhere), then the
    mean over ``classes``; ``pq`` the mean of per-image binary PQ (empty images count 0)."""
    per_class = {int(c): PQCounts() for c in classes}
    binary = PQCounts()
    for r in results:
        binary = binary + r.binary
        for c in per_class:
            per_class[c] = per_class[c] + r.per_class.get(c, PQCounts())

    def zero_if_empty(c: PQCounts) -> float:
        return 0.0 if c.empty else c.pq

    return AggregatedPQ(
        mpq_plus=float(np.mean([zero_if_empty(v) for v in per_class.values()]))
        if per_class
        else float("nan"),
        per_class=per_class,
        binary=binary,
        pq=float(np.mean([zero_if_empty(r.binary) for r in results])) if results else float("nan"),
    )


def _aji_from(table: InstanceOverlap, pair_mask: NDArray[np.bool_]) -> float:
    ti, pj = table.true_index[pair_mask], table.pred_index[pair_mask]
    inter = float(table.inter[pair_mask].sum())
    union = float(table.union[pair_mask].sum())
    t_used = np.zeros(table.true_ids.size, dtype=bool)
    p_used = np.zeros(table.pred_ids.size, dtype=bool)
    t_used[ti] = True
    p_used[pj] = True
    union += float(table.true_area[~t_used].sum()) + float(table.pred_area[~p_used].sum())
    return _ratio(inter, union)


def aji(true: IntMap, pred: IntMap) -> float:
    """Aggregated Jaccard Index (Kumar et al. 2017; HoVer-Net ``get_fast_aji``): every true
    nucleus takes its highest-IoU overlapping prediction (ties: the lowest prediction id), a
    prediction may be used more than once."""
    table, _, _ = instance_overlap(true, pred)
    if table.inter.size == 0:
        return _aji_from(table, np.zeros(0, dtype=bool))
    order = np.lexsort((table.pred_index, -table.iou, table.true_index))
    first = np.ones(order.size, dtype=bool)
    first[1:] = table.true_index[order][1:] != table.true_index[order][:-1]
    mask = np.zeros(order.size, dtype=bool)
    mask[order[first]] = True
    return _aji_from(table, mask)


def aji_plus(true: IntMap, pred: IntMap) -> float:
    """AJI+ (Graham et al. 2019; HoVer-Net ``get_fast_aji_plus``): unique pairing maximising the
    summed IoU (Hungarian), pairs with IoU > 0 kept."""
    table, _, _ = instance_overlap(true, pred)
    mask = max_weight_matching(table.true_index, table.pred_index, table.iou)
    return _aji_from(table, mask)


def dice(true: IntMap, pred: IntMap) -> float:
    """Binary foreground Dice ``2|A ∩ B| / (|A| + |B|)`` (HoVer-Net ``get_dice_1``)."""
    if true.shape != pred.shape:
        raise ValueError(f"true {true.shape} and pred {pred.shape} differ in shape")
    a, b = true > 0, pred > 0
    return _ratio(2.0 * np.count_nonzero(a & b), float(np.count_nonzero(a) + np.count_nonzero(b)))


def dice2(true: IntMap, pred: IntMap) -> float:
    """DICE2, HoVer-Net's ensemble Dice: ``2 sum |G ∩ S| / sum (|G| + |S|)`` over every
    overlapping (true G, pred S) pair (``nan`` when nothing overlaps)."""
    table, _, _ = instance_overlap(true, pred)
    total = table.true_area[table.true_index] + table.pred_area[table.pred_index]
    return _ratio(2.0 * float(table.inter.sum()), float(total.sum()))
