"""Tile classification metrics: hand-computed cases and naive loops (scikit-learn is not a
dependency; where it is installed the results are compared with it too)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from pathssl.eval import classification as C

Y_TRUE = np.array([0, 0, 0, 1, 1, 2])
Y_PRED = np.array([0, 0, 1, 1, 2, 2])


def test_confusion_and_balanced_accuracy_hand_case() -> None:
    cm = C.confusion_matrix(Y_TRUE, Y_PRED, 3)
    assert cm.tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    # recalls 2/3, 1/2, 1
    assert C.balanced_accuracy(Y_TRUE, Y_PRED) == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    # a class only predicted (3) does not enter balanced accuracy
    assert C.balanced_accuracy([0, 0], [0, 3]) == pytest.approx(0.5)


def test_macro_f1_hand_case() -> None:
    # class 0: P 1, R 2/3 -> 0.8; class 1: P 1/2, R 1/2 -> 0.5; class 2: P 1/2, R 1 -> 2/3
    assert C.per_class_f1(Y_TRUE, Y_PRED) == pytest.approx({0: 0.8, 1: 0.5, 2: 2 / 3})
    assert C.macro_f1(Y_TRUE, Y_PRED) == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    # a class never hit scores 0
    assert C.macro_f1([0, 1], [0, 0]) == pytest.approx((2 / 3 + 0) / 2)


def _naive_auc(pos: np.ndarray, score: np.ndarray) -> float:
    wins = 0.0
    pairs = 0
    for i, j in itertools.product(np.flatnonzero(pos), np.flatnonzero(~pos)):
        pairs += 1
        wins += 1.0 if score[i] > score[j] else 0.5 if score[i] == score[j] else 0.0
    return wins / pairs


def test_auroc_hand_case_and_ties() -> None:
    # binary: positives 0.8, 0.4; negatives 0.4, 0.1 -> pairs: 1, 1, 0.5, 1 -> 0.875
    proba = np.array([[0.2, 0.8], [0.6, 0.4], [0.6, 0.4], [0.9, 0.1]])
    y = np.array([1, 1, 0, 0])
    assert C.auroc_ovr(y, proba) == pytest.approx(0.875)
    assert C.auroc_ovr([0, 0], proba[:2]) != C.auroc_ovr([0, 0], proba[:2])  # nan


def test_auroc_against_pairwise_loops() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 200)
    logits = rng.normal(size=(200, 4)) + np.eye(4)[y] * 1.5
    logits = np.round(logits, 1)  # ties
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    want = np.mean([_naive_auc(y == c, proba[:, c]) for c in range(4)])
    assert C.auroc_ovr(y, proba) == pytest.approx(want)


def test_ece_hand_case() -> None:
    # confidences 0.9 (right), 0.9 (wrong), 0.6 (right), 0.55 (right)
    proba = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.55, 0.45]])
    y = np.array([0, 1, 1, 0])
    # bins of width 1/15: 0.9 -> bin 13, 0.6 -> bin 8 ((8/15, 9/15]), 0.55 -> bin 8
    # bin 13: acc 0.5 conf 0.9 -> 2/4 * 0.4; bin 8: acc 1, conf 0.575 -> 2/4 * 0.425
    assert C.expected_calibration_error(y, proba) == pytest.approx(0.5 * 0.4 + 0.5 * 0.425)
    perfect = np.eye(3)[[0, 1, 2]]
    assert C.expected_calibration_error([0, 1, 2], perfect) == 0.0


def test_ece_against_naive_loop() -> None:
    rng = np.random.default_rng(1)
    proba = rng.dirichlet(np.ones(3), 300)
    y = rng.integers(0, 3, 300)
    conf, pred = proba.max(1), proba.argmax(1)
    total = 0.0
    for b in range(15):
        lo, hi = b / 15, (b + 1) / 15
        sel = (conf > lo) & (conf <= hi)
        if sel.any():
            total += sel.mean() * abs((pred[sel] == y[sel]).mean() - conf[sel].mean())
    assert C.expected_calibration_error(y, proba) == pytest.approx(total)


def test_metrics_dict_is_complete() -> None:
    proba = np.eye(3)[Y_PRED] * 0.7 + 0.1
    m = C.classification_metrics(Y_TRUE, Y_PRED, proba, num_classes=4)
    assert set(m) >= {"accuracy", "balanced_accuracy", "macro_f1", "auroc", "ece"}
    assert np.asarray(m["confusion_matrix"]).shape == (4, 4)
    assert m["per_class_f1"]["3"] == 0.0  # type: ignore[index]
    assert not math.isnan(float(m["auroc"]))  # type: ignore[arg-type]


def test_against_sklearn_when_installed() -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 100)
    proba = rng.dirichlet(np.ones(3), 100)
    pred = proba.argmax(1)
    assert C.balanced_accuracy(y, pred) == pytest.approx(metrics.balanced_accuracy_score(y, pred))
    assert C.macro_f1(y, pred) == pytest.approx(metrics.f1_score(y, pred, average="macro"))
    assert C.auroc_ovr(y, proba) == pytest.approx(
        metrics.roc_auc_score(y, proba, multi_class="ovr", average="macro")
    )


def test_bad_inputs() -> None:
    with pytest.raises(ValueError):
        C.confusion_matrix([0, 1], [0])
    with pytest.raises(ValueError):
        C.balanced_accuracy([0.5], [0])
    with pytest.raises(ValueError):
        C.auroc_ovr([0, 1], np.ones(2))


def test_metric_modules_do_not_import_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys, pathssl.eval.metrics, pathssl.eval.classification, pathssl.eval.report;"
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
