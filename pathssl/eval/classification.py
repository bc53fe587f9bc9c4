"""Tile classification metrics (numpy only, no torch, no scikit-learn).

Labels are integer class indices ``0..C-1``; probabilities are ``(N, C)`` rows summing to 1.
Conventions follow scikit-learn where it has the metric:

* **balanced accuracy** -- mean per-class recall over the classes present in ``y_true``
  (``sklearn.metrics.balanced_accuracy_score``; Brodersen et al. 2010).
* **macro-F1** -- unweighted mean of per-class F1 over the classes present in ``y_true`` or
  ``y_pred`` (or the given ``labels``); a class never predicted and never true is skipped, a class
  with no true positive scores 0 (``f1_score(average="macro", zero_division=0)``).
* **AUROC** -- one-vs-rest, macro: per class, the area under the ROC curve of ``proba[:, c]``
  for ``y == c`` (Mann-Whitney U with mid-ranks for ties), averaged over the classes that have
  both positives and negatives (``roc_auc_score(multi_class="ovr", average="macro")``).
* **ECE** -- expected calibration error, Guo et al. 2017: confidence = max probability, 15
  equal-width bins ``(k/15, (k+1)/15]``, ``sum_b |B_b|/N * |accuracy(B_b) - confidence(B_b)|``.

Undefined metrics return ``nan`` rather than raising.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "auroc_ovr",
    "balanced_accuracy",
    "classification_metrics",
    "confusion_matrix",
    "expected_calibration_error",
    "macro_f1",
]


def _labels(y: ArrayLike) -> NDArray[np.int64]:
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"labels must be integers, got {arr.dtype}")
    if arr.size and arr.min() < 0:
        raise ValueError("labels must be >= 0")
    return arr.astype(np.int64)


def confusion_matrix(
    y_true: ArrayLike, y_pred: ArrayLike, num_classes: int | None = None
) -> NDArray[np.int64]:
    """``(C, C)`` counts, rows = true class, columns = predicted class."""
    t, p = _labels(y_true), _labels(y_pred)
    if t.shape != p.shape:
        raise ValueError(f"y_true {t.shape} and y_pred {p.shape} differ")
    n = (
        num_classes
        if num_classes is not None
        else int(max(t.max(initial=-1), p.max(initial=-1)) + 1)
    )
    return np.bincount(t * n + p, minlength=n * n).reshape(n, n).astype(np.int64)


def balanced_accuracy(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Mean recall over the classes present in ``y_true``."""
    cm = confusion_matrix(y_true, y_pred)
    support = cm.sum(axis=1)
    present = support > 0
    if not present.any():
        return float("nan")
    return float((np.diag(cm)[present] / support[present]).mean())


def per_class_f1(
    y_true: ArrayLike, y_pred: ArrayLike, labels: Sequence[int] | None = None
) -> dict[int, float]:
    """F1 of each class in ``labels`` (default: classes seen in ``y_true`` or ``y_pred``);
    0 when the class has no true positive."""
    t, p = _labels(y_true), _labels(y_pred)
    if labels is None:
        labels = sorted(set(t.tolist()) | set(p.tolist()))
    out: dict[int, float] = {}
    for c in labels:
        tp = int(((t == c) & (p == c)).sum())
        den = int((t == c).sum()) + int((p == c).sum())
        out[int(c)] = 2.0 * tp / den if den else 0.0
    return out


def macro_f1(y_true: ArrayLike, y_pred: ArrayLike, labels: Sequence[int] | None = None) -> float:
    """Unweighted mean of :func:`per_class_f1`."""
    scores = list(per_class_f1(y_true, y_pred, labels).values())
    return float(np.mean(scores)) if scores else float("nan")


def _binary_auc(positive: NDArray[np.bool_], score: NDArray[np.float64]) -> float:
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    sorted_score = score[order]
    ranks = np.empty(score.size, dtype=np.float64)
    # mid-ranks (1-based) for tied scores
    starts = np.flatnonzero(np.r_[True, sorted_score[1:] != sorted_score[:-1]])
    ends = np.r_[starts[1:], score.size]
    mid = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(mid, ends - starts)
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def auroc_ovr(y_true: ArrayLike, proba: ArrayLike) -> float:
    """One-vs-rest macro AUROC of ``(N, C)`` scores (classes lacking positives or negatives in
    ``y_true`` are skipped; ``nan`` if none is left)."""
    t = _labels(y_true)
    s = np.asarray(proba, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] != t.size:
        raise ValueError(f"proba must be (N, C) with N = {t.size}, got {s.shape}")
    aucs = [_binary_auc(t == c, s[:, c]) for c in range(s.shape[1])]
    valid = [a for a in aucs if not np.isnan(a)]
    return float(np.mean(valid)) if valid else float("nan")


def expected_calibration_error(y_true: ArrayLike, proba: ArrayLike, n_bins: int = 15) -> float:
    """ECE with ``n_bins`` equal-width confidence bins (Guo et al. 2017)."""
    t = _labels(y_true)
    s = np.asarray(proba, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] != t.size:
        raise ValueError(f"proba must be (N, C) with N = {t.size}, got {s.shape}")
    if t.size == 0:
        return float("nan")
    conf = s.max(axis=1)
    correct = (s.argmax(axis=1) == t).astype(np.float64)
    bins = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    acc_sum = np.bincount(bins, weights=correct, minlength=n_bins)
    conf_sum = np.bincount(bins, weights=conf, minlength=n_bins)
    return float(np.abs(acc_sum - conf_sum).sum() / t.size)


def classification_metrics(
    y_true: ArrayLike, y_pred: ArrayLike, proba: ArrayLike | None = None, num_classes: int = 0
) -> dict[str, object]:
    """Every metric above as a JSON-ready dict (``auroc`` and ``ece`` need ``proba``)."""
    t, p = _labels(y_true), _labels(y_pred)
    n = max(num_classes, int(max(t.max(initial=-1), p.max(initial=-1)) + 1))
    out: dict[str, object] = {
        "n": int(t.size),
        "accuracy": float((t == p).mean()) if t.size else float("nan"),
        "balanced_accuracy": balanced_accuracy(t, p),
        "macro_f1": macro_f1(t, p),
        "per_class_f1": {str(k): v for k, v in per_class_f1(t, p, range(n)).items()},
        "confusion_matrix": confusion_matrix(t, p, n).tolist(),
    }
    if proba is not None:
        out["auroc"] = auroc_ovr(t, proba)
        out["ece"] = expected_calibration_error(t, proba)
    return out
