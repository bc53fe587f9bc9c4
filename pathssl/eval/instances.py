"""Sparse bookkeeping over integer instance maps, shared by the nuclei metrics (torch-free).

An instance map is an ``(H, W)`` array of non-negative integers, ``0`` = background, one id per
nucleus (ids need not be contiguous). Everything here works on the *sparse* table of
overlapping (true, pred) pairs, built in one pass over the pixels, so a 1,500 x 1,500 map with
~1,300 nuclei costs a few tens of milliseconds instead of a dense ``n_true x n_pred`` IoU sweep
over full-image masks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

IntArray = NDArray[np.int64]
FloatArray = NDArray[np.float64]
# per-instance classes: an (H, W) type map (majority vote inside each instance) or {id: class}
Types = NDArray[np.integer] | Mapping[int, int]

_DENSE_BINCOUNT_LIMIT = 1 << 25


def check_instance_map(inst: NDArray[np.integer], name: str = "instance map") -> None:
    """Raise ``ValueError`` unless ``inst`` is a 2-D array of non-negative integers."""
    if inst.ndim != 2:
        raise ValueError(f"{name} must be (H, W), got shape {inst.shape}")
    if not np.issubdtype(inst.dtype, np.integer):
        raise ValueError(f"{name} must have an integer dtype, got {inst.dtype}")
    if inst.size and int(inst.min()) < 0:
        raise ValueError(f"{name} has negative ids")


def relabel(inst: NDArray[np.integer]) -> tuple[IntArray, IntArray, IntArray]:
    """Contiguous relabelling: ``(labels (H, W) in 0..n, ids (n,) original ids in increasing
    order, areas (n,) pixel counts)``; ``labels == k`` is the instance ``ids[k - 1]``."""
    check_instance_map(inst)
    flat = inst.ravel().astype(np.int64, copy=False)
    top = int(flat.max()) if flat.size else 0
    if top <= 4 * flat.size + 1024:
        counts = np.bincount(flat, minlength=top + 1)
        ids = np.flatnonzero(counts[1:]) + 1
        areas = counts[ids].astype(np.int64)
        lut = np.zeros(top + 1, dtype=np.int64)
        lut[ids] = np.arange(1, ids.size + 1)
        labels = lut[flat]
    else:  # huge sparse ids: sort instead of a lookup table
        ids_all, inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)
        keep = ids_all != 0
        ids = ids_all[keep].astype(np.int64)
        areas = counts[keep].astype(np.int64)
        shift = 0 if keep.all() else 1  # background occupies index 0 when present
        labels = np.where(flat == 0, 0, inverse.astype(np.int64) + 1 - shift)
    return labels.reshape(inst.shape), ids, areas


@dataclass(frozen=True)
class InstanceOverlap:
    """Sparse overlap table of two instance maps.

    ``true_ids (nT,)``, ``pred_ids (nP,)`` original ids; ``true_area``, ``pred_area`` pixel
    counts; ``true_index (K,)``, ``pred_index (K,)``, ``inter (K,)``: the K pairs with a
    non-empty intersection, as 0-based indices into the id arrays, with their intersection.
    """

    true_ids: IntArray
    pred_ids: IntArray
    true_area: IntArray
    pred_area: IntArray
    true_index: IntArray
    pred_index: IntArray
    inter: IntArray

    @property
    def union(self) -> IntArray:
        """``(K,)`` union area of each overlapping pair."""
        return self.true_area[self.true_index] + self.pred_area[self.pred_index] - self.inter

    @property
    def iou(self) -> FloatArray:
        """``(K,)`` intersection over union of each overlapping pair."""
        return self.inter / self.union


def instance_overlap(
    true: NDArray[np.integer], pred: NDArray[np.integer]
) -> tuple[InstanceOverlap, IntArray, IntArray]:
    """Overlap table of ``true`` and ``pred`` ``(H, W)`` maps, plus both relabelled maps."""
    if true.shape != pred.shape:
        raise ValueError(f"true {true.shape} and pred {pred.shape} differ in shape")
    t_lab, t_ids, t_area = relabel(true)
    p_lab, p_ids, p_area = relabel(pred)
    both = (t_lab > 0) & (p_lab > 0)
    width = p_ids.size + 1
    code = t_lab[both] * width + p_lab[both]
    if (t_ids.size + 1) * width <= _DENSE_BINCOUNT_LIMIT:
        counts = np.bincount(code, minlength=(t_ids.size + 1) * width)
        pair_code = np.flatnonzero(counts)
        inter = counts[pair_code].astype(np.int64)
    else:
        pair_code, inter = np.unique(code, return_counts=True)
        inter = inter.astype(np.int64)
    table = InstanceOverlap(
        true_ids=t_ids,
        pred_ids=p_ids,
        true_area=t_area,
        pred_area=p_area,
        true_index=(pair_code // width - 1).astype(np.int64),
        pred_index=(pair_code % width - 1).astype(np.int64),
        inter=inter,
    )
    return table, t_lab, p_lab


def instance_classes(labels: IntArray, ids: IntArray, types: Types | None) -> IntArray:
    """``(n,)`` class of each instance ``ids`` (0 = unclassified).

    ``types`` is either an ``(H, W)`` type map, in which case each instance takes the most
    frequent non-zero type under its pixels (ties: the smaller type id; HoVer-Net convention), or
    a mapping ``{instance id: class}`` (missing ids get 0). ``labels`` is the relabelled map of
    :func:`relabel` matching ``ids``.
    """
    n = ids.size
    if types is None:
        return np.ones(n, dtype=np.int64)
    if isinstance(types, Mapping):
        return np.array([int(types.get(int(i), 0)) for i in ids], dtype=np.int64)
    type_map = np.asarray(types)
    if type_map.shape != labels.shape:
        raise ValueError(f"type map {type_map.shape} and instance map {labels.shape} differ")
    check_instance_map(type_map, "type map")
    n_types = int(type_map.max()) + 1 if type_map.size else 1
    fg = labels > 0
    code = labels[fg] * n_types + type_map[fg].astype(np.int64)
    counts = np.bincount(code, minlength=(n + 1) * n_types).reshape(n + 1, n_types)[1:]
    counts[:, 0] = 0
    cls = counts.argmax(axis=1).astype(np.int64)
    cls[counts.max(axis=1) == 0] = 0
    return cls


def instance_centroids(labels: IntArray, n: int) -> FloatArray:
    """``(n, 2)`` centroid ``(y, x)`` of instances ``1..n`` of a relabelled map, in pixels."""
    flat = labels.ravel()
    h, w = labels.shape
    area = np.bincount(flat, minlength=n + 1)[1:].astype(np.float64)
    rows = np.repeat(np.arange(h, dtype=np.float64), w)
    cols = np.tile(np.arange(w, dtype=np.float64), h)
    y = np.bincount(flat, weights=rows, minlength=n + 1)[1:]
    x = np.bincount(flat, weights=cols, minlength=n + 1)[1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.stack([y / area, x / area], axis=1)


def max_weight_matching(
    true_index: IntArray, pred_index: IntArray, weight: FloatArray
) -> NDArray[np.bool_]:
    """Unique (one-to-one) pairing maximising the summed ``weight`` over the given sparse pairs
    (Hungarian algorithm, ``scipy.optimize.linear_sum_assignment``), solved independently on each
    connected component of the bipartite overlap graph. Returns a ``(K,)`` mask of chosen pairs;
    pairs of weight <= 0 are never chosen."""
    k = true_index.size
    chosen = np.zeros(k, dtype=bool)
    if k == 0:
        return chosen
    t_u, t_inv = np.unique(true_index, return_inverse=True)
    p_u, p_inv = np.unique(pred_index, return_inverse=True)
    nt = t_u.size
    graph = coo_matrix(
        (np.ones(k), (t_inv, nt + p_inv)), shape=(nt + p_u.size, nt + p_u.size)
    ).tocsr()
    _, comp = connected_components(graph, directed=False)
    pair_comp = comp[t_inv]
    sizes = np.bincount(pair_comp)
    chosen[sizes[pair_comp] == 1] = True
    for c in np.flatnonzero(sizes > 1):
        members = np.flatnonzero(pair_comp == c)
        rows, r_inv = np.unique(t_inv[members], return_inverse=True)
        cols, c_inv = np.unique(p_inv[members], return_inverse=True)
        mat = np.zeros((rows.size, cols.size))
        slot = np.full((rows.size, cols.size), -1, dtype=np.int64)
        mat[r_inv, c_inv] = weight[members]
        slot[r_inv, c_inv] = members
        r, cidx = linear_sum_assignment(mat, maximize=True)
        picked = slot[r, cidx]
        chosen[picked[picked >= 0]] = True
    return chosen & (weight > 0)
