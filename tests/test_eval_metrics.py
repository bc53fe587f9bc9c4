"""Nuclei metrics: hand-computed tiny cases, naive references on the real hgsc_nest map, MONAI."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

from pathssl.eval import metrics as M
from pathssl.eval.instances import instance_classes, relabel

# ------------------------------------------------------------------ hand-computed tiny cases

# true: t1 (4 px), t2 (4 px), t3 (2 px); pred: p5 == t1, p7 = half of t2 (IoU 0.5), p9 stray.
TRUE_A = np.array(
    [
        [1, 1, 0, 2, 2, 0],
        [1, 1, 0, 2, 2, 0],
        [0, 0, 0, 0, 0, 0],
        [3, 3, 0, 0, 0, 0],
    ],
    dtype=np.int32,
)
PRED_A = np.array(
    [
        [5, 5, 0, 7, 0, 0],
        [5, 5, 0, 7, 0, 0],
        [0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 9],
    ],
    dtype=np.int32,
)
# one prediction covering two true nuclei (a merge)
TRUE_B = np.array([[1, 1, 2, 2, 0]], dtype=np.int32)
PRED_B = np.array([[4, 4, 4, 4, 0]], dtype=np.int32)


def test_pq_hand_case_iou_exactly_half_does_not_match() -> None:
    r = M.panoptic_quality(TRUE_A, PRED_A)
    assert (r.binary.tp, r.binary.fp, r.binary.fn) == (1, 2, 2)
    assert r.binary.dq == pytest.approx(1 / 3)
    assert r.binary.sq == pytest.approx(1.0)
    assert r.binary.pq == pytest.approx(1 / 3)


def test_pq_hand_case_partial_iou_sq() -> None:
    pred = TRUE_A.copy()
    pred[0, 3] = 0  # t2 loses 1 of 4 px: IoU 3/4
    pred[3, 0] = 0  # t3 loses 1 of 2 px: IoU 1/2 -> unmatched
    r = M.panoptic_quality(TRUE_A, pred).binary
    assert (r.tp, r.fp, r.fn) == (2, 1, 1)
    assert r.sq == pytest.approx((1 + 0.75) / 2)
    assert r.dq == pytest.approx(2 / 3)
    assert r.pq == pytest.approx(0.875 * 2 / 3)


def test_pq_per_class_hand_case() -> None:
    true_types = {1: 1, 2: 1, 3: 2}
    pred_types = {5: 1, 7: 1, 9: 2}
    r = M.panoptic_quality(TRUE_A, PRED_A, true_types, pred_types, classes=[1, 2, 3])
    assert (r.per_class[1].tp, r.per_class[1].fp, r.per_class[1].fn) == (1, 1, 1)
    assert r.per_class[1].pq == pytest.approx(0.5)
    assert r.per_class[2].pq == 0.0 and r.per_class[2].sq == 0.0
    assert math.isnan(r.per_class[3].pq)  # absent from both
    # wrong class on the perfect match: class 1 loses its TP
    r2 = M.panoptic_quality(TRUE_A, PRED_A, true_types, {5: 2, 7: 1, 9: 2}, classes=[1, 2])
    assert (r2.per_class[1].tp, r2.per_class[1].fp, r2.per_class[1].fn) == (0, 1, 2)
    assert (r2.per_class[2].tp, r2.per_class[2].fp, r2.per_class[2].fn) == (0, 2, 1)


def test_type_map_majority_vote() -> None:
    types = np.array(
        [
            [2, 2, 0, 1, 3, 0],
            [2, 1, 0, 3, 1, 0],
            [0, 0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0, 0],
        ]
    )
    lab, ids, _ = relabel(TRUE_A)
    # t1: 2 wins; t2: 1 and 3 tie -> smaller; t3: only background type -> 0
    assert instance_classes(lab, ids, types).tolist() == [2, 1, 0]


def test_aji_dice_hand_case_a() -> None:
    assert M.aji(TRUE_A, PRED_A) == pytest.approx(6 / 11)
    assert M.aji_plus(TRUE_A, PRED_A) == pytest.approx(6 / 11)
    assert M.dice(TRUE_A, PRED_A) == pytest.approx(12 / 17)
    assert M.dice2(TRUE_A, PRED_A) == pytest.approx(12 / 14)


def test_aji_vs_aji_plus_on_a_merge() -> None:
    # AJI reuses the merged prediction for both nuclei; AJI+ pairs it once
    assert M.aji(TRUE_B, PRED_B) == pytest.approx(4 / 8)
    assert M.aji_plus(TRUE_B, PRED_B) == pytest.approx(2 / 6)
    assert M.dice(TRUE_B, PRED_B) == pytest.approx(1.0)
    assert M.dice2(TRUE_B, PRED_B) == pytest.approx(8 / 12)
    assert M.panoptic_quality(TRUE_B, PRED_B).binary.pq == 0.0


def test_empty_maps_are_nan_not_errors() -> None:
    z = np.zeros((4, 4), dtype=np.int32)
    assert math.isnan(M.panoptic_quality(z, z).binary.pq)
    assert math.isnan(M.aji(z, z)) and math.isnan(M.dice(z, z)) and math.isnan(M.dice2(z, z))
    one = z.copy()
    one[1:3, 1:3] = 7
    r = M.panoptic_quality(one, z).binary
    assert (r.tp, r.fp, r.fn, r.pq) == (0, 0, 1, 0.0)
    assert M.aji(one, z) == 0.0 and M.aji_plus(z, one) == 0.0


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError):
        M.panoptic_quality(TRUE_A, PRED_A[:2])
    with pytest.raises(ValueError):
        M.panoptic_quality(TRUE_A.astype(float), PRED_A)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        M.panoptic_quality(TRUE_A, PRED_A, true_types={1: 1})


def _counts(tp: int, fp: int, fn: int, iou: float) -> M.PQCounts:
    return M.PQCounts(tp, fp, fn, iou)


PANNUKE_RESULTS = [
    # tissue A, image 1: class 1 perfect-ish, class 2 only a false positive
    M.PanopticResult(_counts(1, 1, 0, 0.8), {1: _counts(1, 0, 0, 0.8), 2: _counts(0, 1, 0, 0)}),
    # tissue A, image 2: class 1 one hit one miss, class 2 absent
    M.PanopticResult(_counts(1, 0, 1, 0.6), {1: _counts(1, 0, 1, 0.6), 2: _counts(0, 0, 0, 0)}),
    # tissue B: only class 2
    M.PanopticResult(_counts(2, 0, 0, 1.8), {1: _counts(0, 0, 0, 0), 2: _counts(2, 0, 0, 1.8)}),
]


def test_pannuke_mpq_bpq_hand_case() -> None:
    s = M.pannuke_pq(PANNUKE_RESULTS, ["A", "A", "B"], classes=[1, 2])
    # per image mPQ: 0.8 (class 2 nan: no true nucleus), 0.4, 0.9 -> tissues 0.6, 0.9
    assert s.per_tissue["A"][0] == pytest.approx(0.6)
    assert s.per_tissue["B"][0] == pytest.approx(0.9)
    assert s.mpq == pytest.approx(0.75)
    # per image bPQ: (2/3 * 0.8), 0.4, 0.9
    assert s.per_tissue["A"][1] == pytest.approx((2 / 3 * 0.8 + 0.4) / 2)
    assert s.bpq == pytest.approx(((2 / 3 * 0.8 + 0.4) / 2 + 0.9) / 2)
    assert s.per_class == pytest.approx({1: 0.6, 2: 0.9})
    # "absent from both" variant: the stray class-2 prediction of image 1 now scores 0
    s2 = M.pannuke_pq(PANNUKE_RESULTS, ["A", "A", "B"], classes=[1, 2], nan_if_true_empty=False)
    assert s2.mpq == pytest.approx(((0.8 + 0) / 2 + 0.4) / 2 / 2 + 0.9 / 2)


def test_conic_aggregated_pq_hand_case() -> None:
    s = M.conic_pq(PANNUKE_RESULTS, classes=[1, 2])
    # class 1 totals (2, 0, 1, 1.4): DQ 0.8, SQ 0.7; class 2 (2, 1, 0, 1.8): DQ 0.8, SQ 0.9
    assert s.per_class[1].pq == pytest.approx(0.56)
    assert s.per_class[2].pq == pytest.approx(0.72)
    assert s.mpq_plus == pytest.approx(0.64)
    assert s.pq == pytest.approx((2 / 3 * 0.8 + 0.4 + 0.9) / 3)
    # CoNIC's 1e-6 guards: a class absent everywhere scores 0 in the mean, an empty image 0
    s3 = M.conic_pq([*PANNUKE_RESULTS, M.PanopticResult(M.PQCounts(), {})], classes=[1, 2, 3])
    assert s3.mpq_plus == pytest.approx((0.56 + 0.72 + 0) / 3)
    assert s3.pq == pytest.approx((2 / 3 * 0.8 + 0.4 + 0.9 + 0) / 4)


def test_centroid_matching_hand_case() -> None:
    true = np.array([[0.0, 0.0], [0.0, 20.0], [50.0, 50.0]])
    pred = np.array([[0.0, 3.0], [0.0, 30.0], [100.0, 100.0]])
    ti, pj = M.match_centroids(true, pred, radius=12)
    assert ti.tolist() == [0, 1] and pj.tolist() == [0, 1]
    ti, pj = M.match_centroids(true, pred, radius=5)
    assert ti.tolist() == [0] and pj.tolist() == [0]


def test_detection_scores_hand_case() -> None:
    counts = M.DetectionCounts(
        paired_true=np.array([1, 1, 2, 2]),
        paired_pred=np.array([1, 2, 2, 2]),
        unpaired_true=np.array([1]),
        unpaired_pred=np.array([2, 2]),
    )
    s = M.detection_scores(counts)
    assert s.f1 == pytest.approx(8 / 11)
    assert s.precision == pytest.approx(4 / 6) and s.recall == pytest.approx(4 / 5)
    assert s.type_accuracy == pytest.approx(3 / 4)
    assert s.per_class_f1[1] == pytest.approx(2 / 5)
    assert s.per_class_f1[2] == pytest.approx(4 / 8)


def test_detection_on_maps() -> None:
    d = M.detection_counts(TRUE_A, PRED_A, {1: 1, 2: 1, 3: 2}, {5: 1, 7: 2, 9: 2})
    # t1<->p5 (same centroid), t2<->p7 (0.5 px), t3 <-> p9 is 4.5 px away
    s = M.detection_scores([d, d])
    assert s.f1 == 1.0 and s.type_accuracy == pytest.approx(2 / 3)


# ------------------------------------------------------------------ real map vs naive references


@pytest.fixture(scope="module")
def hgsc(data_dir: Path) -> tuple[NDArray[np.int32], NDArray[np.int32]]:
    inst = np.load(data_dir / "nuclei" / "hgsc_nest_inst_mask.npz")["nuc_raster"]
    types = np.load(data_dir / "nuclei" / "hgsc_nest_type_mask.npz")["nuc_raster"]
    return inst, types


def _perturb(inst: NDArray[np.int32], seed: int = 0) -> NDArray[np.int32]:
    """Erode every nucleus by one pixel, drop 10 %, merge 30 touching pairs, add a blob,
    then scatter the ids (non-contiguous, large)."""
    rng = np.random.default_rng(seed)
    out = inst.copy()
    same = np.ones(inst.shape, dtype=bool)
    for axis in (0, 1):
        for shift in (1, -1):
            same &= np.roll(inst, shift, axis=axis) == inst
    out[~same] = 0
    ids = np.unique(inst)[1:]
    out[np.isin(out, rng.choice(ids, ids.size // 10, replace=False))] = 0
    a, b = inst[:, :-1], inst[:, 1:]
    touching = np.unique(np.stack([a, b], -1)[(a > 0) & (b > 0) & (a != b)], axis=0)
    used: set[int] = set()
    merged = 0
    for x, y in touching.tolist():
        if merged == 30 or x in used or y in used:
            continue
        out[inst == y] = x  # the full (uneroded) second nucleus joins the first
        used |= {x, y}
        merged += 1
    out[10:30, 10:30] = int(ids.max()) + 1
    lut = np.zeros(int(out.max()) + 1, dtype=np.int64)
    lut[1:] = rng.permutation(lut.size - 1) * 1000 + 7
    return lut[out].astype(np.int32)


def _naive_tables(
    true: NDArray[np.int32], pred: NDArray[np.int32]
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
    """Dense ``(nT, nP)`` intersections by looping over each true nucleus's bounding box, and
    the areas of every instance counted one id at a time."""
    t_ids = np.unique(true)[1:]
    p_ids = np.unique(pred)[1:]
    p_pos = {int(p): k for k, p in enumerate(p_ids)}
    t_lab = np.searchsorted(t_ids, true) + 1
    t_lab[true == 0] = 0
    inter = np.zeros((t_ids.size, p_ids.size), dtype=np.int64)
    for k, sl in enumerate(ndimage.find_objects(t_lab)):
        under = pred[sl][t_lab[sl] == k + 1]
        for p in np.unique(under):
            if p:
                inter[k, p_pos[int(p)]] = int(np.count_nonzero(under == p))
    t_area = np.array([np.count_nonzero(true == i) for i in t_ids])
    p_area = np.array([np.count_nonzero(pred == j) for j in p_ids])
    return inter, t_area, p_area


def _naive_all(true: NDArray[np.int32], pred: NDArray[np.int32]) -> dict[str, float]:
    """HoVer-Net-style dense reference of PQ, AJI, AJI+ and DICE2."""
    inter, t_area, p_area = _naive_tables(true, pred)
    union = t_area[:, None] + p_area[None, :] - inter
    iou = inter / union
    nt, n_p = iou.shape
    matched = iou > 0.5
    tp = int(matched.sum())
    dq = tp / (tp + 0.5 * (n_p - tp) + 0.5 * (nt - tp))
    sq = float(iou[matched].sum()) / tp
    # AJI: each true row takes its best-IoU column; predictions may repeat
    best = iou.argmax(axis=1)
    rows = np.flatnonzero(iou.max(axis=1) > 0)
    used = np.zeros(n_p, dtype=bool)
    used[best[rows]] = True
    paired_t = np.zeros(nt, dtype=bool)
    paired_t[rows] = True
    aji = inter[rows, best[rows]].sum() / (
        union[rows, best[rows]].sum() + t_area[~paired_t].sum() + p_area[~used].sum()
    )
    # AJI+: Hungarian on the full dense IoU matrix
    r, c = linear_sum_assignment(-iou)
    keep = iou[r, c] > 0
    r, c = r[keep], c[keep]
    used_t = np.zeros(nt, dtype=bool)
    used_p = np.zeros(n_p, dtype=bool)
    used_t[r] = True
    used_p[c] = True
    aji_plus = inter[r, c].sum() / (
        union[r, c].sum() + t_area[~used_t].sum() + p_area[~used_p].sum()
    )
    ov = inter > 0
    dice2 = 2 * inter[ov].sum() / (t_area[:, None] + p_area[None, :])[ov].sum()
    return {"pq": dq * sq, "sq": sq, "dq": dq, "aji": aji, "aji_plus": aji_plus, "dice2": dice2}


def test_real_map_against_itself(hgsc: tuple[NDArray[np.int32], NDArray[np.int32]]) -> None:
    inst, types = hgsc
    r = M.panoptic_quality(inst, inst, types, types)
    assert (r.binary.tp, r.binary.fp, r.binary.fn) == (1294, 0, 0)
    assert r.binary.pq == pytest.approx(1.0)
    assert sorted(r.per_class) == [1, 2, 3]
    assert all(c.pq == pytest.approx(1.0) for c in r.per_class.values())
    assert M.aji(inst, inst) == pytest.approx(1.0) and M.aji_plus(inst, inst) == pytest.approx(1.0)
    assert M.dice(inst, inst) == 1.0 and M.dice2(inst, inst) == pytest.approx(1.0)
    s = M.detection_scores(M.detection_counts(inst, inst, types, types))
    assert s.f1 == 1.0 and all(v == 1.0 for v in s.per_class_f1.values())


def test_real_map_perturbed_matches_naive_reference(
    hgsc: tuple[NDArray[np.int32], NDArray[np.int32]],
) -> None:
    inst, _ = hgsc
    pred = _perturb(inst)
    ref = _naive_all(inst, pred)
    r = M.panoptic_quality(inst, pred).binary
    assert 0.3 < r.pq < 0.95
    assert r.pq == pytest.approx(ref["pq"], abs=1e-12)
    assert r.sq == pytest.approx(ref["sq"], abs=1e-12)
    assert r.dq == pytest.approx(ref["dq"], abs=1e-12)
    assert M.aji(inst, pred) == pytest.approx(ref["aji"], abs=1e-12)
    assert M.aji_plus(inst, pred) == pytest.approx(ref["aji_plus"], abs=1e-12)
    assert M.dice2(inst, pred) == pytest.approx(ref["dice2"], abs=1e-12)
    fg_t, fg_p = inst > 0, pred > 0
    assert M.dice(inst, pred) == pytest.approx(2 * (fg_t & fg_p).sum() / (fg_t.sum() + fg_p.sum()))
    # the same numbers with the roles of the ids scrambled again
    again = _perturb(inst)
    assert M.panoptic_quality(inst, again).binary.pq == pytest.approx(r.pq)


def test_real_map_detection_against_naive(
    hgsc: tuple[NDArray[np.int32], NDArray[np.int32]],
) -> None:
    inst, types = hgsc
    pred = _perturb(inst, seed=1)
    d = M.detection_counts(inst, pred, types, types)
    # naive: centroids with ndimage, greedy reference is not Hungarian, so compare counts only
    t_ids = np.unique(inst)[1:]
    p_ids = np.unique(pred)[1:]
    tc = np.array(ndimage.center_of_mass(np.ones_like(inst), inst, t_ids))
    pc = np.array(ndimage.center_of_mass(np.ones_like(pred), pred, p_ids))
    dist = np.sqrt(((tc[:, None, :] - pc[None, :, :]) ** 2).sum(-1))
    r, c = linear_sum_assignment(dist)
    tp = int((dist[r, c] <= 12).sum())
    assert d.paired_true.size == tp
    assert d.unpaired_true.size == t_ids.size - tp and d.unpaired_pred.size == p_ids.size - tp
    s = M.detection_scores(d, classes=[1, 2, 3])
    assert 0.8 < s.f1 < 1.0 and s.type_accuracy > 0.9


def test_pq_matches_monai(hgsc: tuple[NDArray[np.int32], NDArray[np.int32]]) -> None:
    torch = pytest.importorskip("torch")
    from monai.metrics import PanopticQualityMetric
    from monai.metrics.panoptic_quality import compute_panoptic_quality

    inst, types = hgsc
    pred = _perturb(inst, seed=2)
    lab, ids, _ = relabel(inst)
    cls = np.concatenate([[0], instance_classes(lab, ids, types)])
    clean_types = cls[lab]  # one class per nucleus, as MONAI splits classes per pixel
    plab, pids, _ = relabel(pred)
    pred_types = np.concatenate([[0], instance_classes(plab, pids, clean_types)])[plab]
    crops = [(slice(0, 120), slice(0, 120)), (slice(700, 800), slice(800, 900))]
    metric = PanopticQualityMetric(
        num_classes=3, reduction="sum_batch", return_confusion_matrix=True
    )
    results = []
    for sl in crops:
        t, p = inst[sl], pred[sl]
        ours = M.panoptic_quality(t, p, clean_types[sl], pred_types[sl], classes=[1, 2, 3])
        results.append(ours)
        cm = compute_panoptic_quality(
            torch.from_numpy(p.astype(np.int64)),
            torch.from_numpy(t.astype(np.int64)),
            output_confusion_matrix=True,
        )
        b = ours.binary
        assert [b.tp, b.fp, b.fn] == cm[:3].int().tolist()
        assert b.iou_sum == pytest.approx(float(cm[3]), rel=1e-5)
        y = torch.from_numpy(np.stack([t, clean_types[sl]]).astype(np.int64))[None]
        y_pred = torch.from_numpy(np.stack([p, pred_types[sl]]).astype(np.int64))[None]
        metric(y_pred=y_pred, y=y)
    total = metric.aggregate()
    assert isinstance(total, torch.Tensor)
    agg = M.conic_pq(results, classes=[1, 2, 3])
    for k, c in enumerate([1, 2, 3]):
        ours_c = agg.per_class[c]
        assert [ours_c.tp, ours_c.fp, ours_c.fn] == total[k, :3].int().tolist()
        assert ours_c.iou_sum == pytest.approx(float(total[k, 3]), rel=1e-5)


def test_threshold_below_half_uses_unique_matching() -> None:
    r = M.panoptic_quality(TRUE_B, PRED_B, iou_threshold=0.3).binary
    assert (r.tp, r.fp, r.fn) == (1, 0, 1)
    assert r.sq == pytest.approx(0.5)


def test_speed_on_full_map(hgsc: tuple[NDArray[np.int32], NDArray[np.int32]]) -> None:
    import time

    inst, types = hgsc
    pred = _perturb(inst, seed=3)
    start = time.perf_counter()
    M.panoptic_quality(inst, pred, types, types)
    M.aji_plus(inst, pred)
    M.detection_counts(inst, pred, types, types)
    assert time.perf_counter() - start < 5.0
