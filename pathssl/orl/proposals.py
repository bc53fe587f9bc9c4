"""Object proposals on H&E tiles without labels, for ORL's stage 2 (Xie et al. 2021 use selective
search on scene images; here the objects are pathology's own).

Four kinds (:data:`KINDS`), every length in micrometres (converted with the tile's mpp):

- ``nucleus``: each nucleus of the package's classical model
  (:func:`pathssl.nuclei.classical.classical_instances`: haematoxylin threshold + watershed), its
  bounding box grown to at least ``nucleus_box_um`` around its centre (some context);
- ``cluster``: groups of at least ``cluster_min_nuclei`` nuclei linked by single linkage on
  centroid distance <= ``cluster_link_um`` (nests, glands' epithelium, inflammatory foci), the
  box of their nuclei plus ``margin_um``;
- ``region``: selective-search-like grouping (Uijlings et al., IJCV 2013) for glands and
  stroma: Felzenszwalb-Huttenlocher superpixels (``skimage.segmentation.felzenszwalb``) merged
  hierarchically, the most similar adjacent pair first (colour-histogram intersection + size +
  fill, the paper's measures without texture); every merged region's box, in merge order;
- ``tile``: the whole tile, only when nothing else passes the filters (as ORL keeps one box per
  image).

Filtering follows ORL's ``box_filter``: sides >= ``min_box_um`` (regions and clusters), aspect
<= ``max_ratio``, a box overlapping a kept one by IoU > ``max_iou`` dropped, at most
``max_clusters`` / ``max_regions`` / ``max_nuclei`` per tile, in that order of kinds.
"""

from __future__ import annotations

import heapq
from dataclasses import asdict, dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi

from pathssl.nuclei.classical import classical_instances

KINDS = ("nucleus", "cluster", "region", "tile")
Boxes = NDArray[np.float64]  # (K, 4) x0, y0, x1, y1 in pixels


@dataclass(frozen=True)
class ProposalParams:
    """Proposal settings (module docstring); lengths in um, areas in um^2."""

    nucleus_box_um: float = 12.0
    cluster_link_um: float = 10.0
    cluster_min_nuclei: int = 3
    margin_um: float = 2.0
    superpixel_scale: float = 100.0
    superpixel_sigma: float = 0.8
    superpixel_min_um2: float = 25.0
    min_box_um: float = 16.0
    max_ratio: float = 3.0
    max_iou: float = 0.5
    max_nuclei: int = 48
    max_clusters: int = 16
    max_regions: int = 36

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def clip_boxes(boxes: Boxes, height: int, width: int) -> Boxes:
    out = np.asarray(boxes, np.float64).reshape(-1, 4).copy()
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, width)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, height)
    return out


def instance_boxes(inst: NDArray[np.integer]) -> Boxes:
    """``(H, W)`` ids 1..N -> ``(N, 4)`` tight boxes (row ``i``: id ``i + 1``; pixel edges)."""
    n = int(inst.max()) if inst.size else 0
    out = np.zeros((n, 4))
    for i, sl in enumerate(ndi.find_objects(inst, max_label=n)):
        if sl is not None:
            out[i] = (sl[1].start, sl[0].start, sl[1].stop, sl[0].stop)
    return out


def grow_boxes(boxes: Boxes, min_side: float, height: int, width: int) -> Boxes:
    """Each box widened/heightened to at least ``min_side`` px about its centre, then clipped."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    c = (b[:, :2] + b[:, 2:]) / 2
    half = np.maximum(b[:, 2:] - b[:, :2], min_side) / 2
    return clip_boxes(np.concatenate([c - half, c + half], 1), height, width)


def single_linkage(points: NDArray[np.floating], link: float) -> NDArray[np.int64]:
    """Cluster label per point ``(N, 2)``: connected components of the graph joining points at
    distance <= ``link`` (single linkage cut at ``link``)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    n = len(points)
    if n == 0:
        return np.zeros(0, np.int64)
    pairs = cKDTree(points).query_pairs(link, output_type="ndarray")
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    return np.asarray(connected_components(graph, directed=False)[1], np.int64)


def cluster_boxes(
    boxes: Boxes, centroids: NDArray[np.floating], link: float, min_members: int, margin: float
) -> Boxes:
    """Boxes of the single-linkage clusters of ``centroids`` with >= ``min_members`` members:
    the union of their ``boxes`` plus ``margin`` px (not clipped)."""
    labels = single_linkage(centroids, link)
    out = []
    for k in np.unique(labels):
        members = boxes[labels == k]
        if len(members) >= min_members:
            lo, hi = members[:, :2].min(0) - margin, members[:, 2:].max(0) + margin
            out.append(np.concatenate([lo, hi]))
    return np.asarray(out, np.float64).reshape(-1, 4)


def _union(a: NDArray[np.float64], b: NDArray[np.float64]) -> NDArray[np.float64]:
    return np.concatenate([np.minimum(a[:2], b[:2]), np.maximum(a[2:], b[2:])])


def selective_search(
    image: NDArray[np.uint8], scale: float, sigma: float, min_size: int, bins: int = 25
) -> Boxes:
    """Hierarchical grouping of Felzenszwalb superpixels (Uijlings et al. 2013): repeatedly
    merge the most similar adjacent pair, similarity = colour-histogram intersection (``bins``
    per channel, L1-normalised) + size (``1 - (a + b) / image``) + fill (``1 - (box(a u b) - a
    - b) / image``). Returns the box of every merged region, in merge order ``(M, 4)``."""
    from skimage.segmentation import felzenszwalb

    labels = felzenszwalb(image, scale=scale, sigma=sigma, min_size=min_size)
    n, (h, w) = int(labels.max()) + 1, labels.shape
    total = float(h * w)
    size = np.bincount(labels.ravel(), minlength=n).astype(np.float64)
    box = np.zeros((n, 4))
    for i, sl in enumerate(ndi.find_objects(labels + 1)):
        box[i] = (sl[1].start, sl[0].start, sl[1].stop, sl[0].stop)
    q = np.minimum((image.astype(np.int64) * bins) // 256, bins - 1)
    hist = np.concatenate(
        [
            np.bincount(labels.ravel() * bins + q[..., c].ravel(), minlength=n * bins)
            for c in range(3)
        ]
    )
    hist = hist.reshape(3, n, bins).transpose(1, 0, 2).reshape(n, 3 * bins).astype(np.float64)
    hist /= np.maximum(hist.sum(1, keepdims=True), 1)
    pairs = np.concatenate(
        [
            np.stack([labels[:, :-1].ravel(), labels[:, 1:].ravel()], 1),
            np.stack([labels[:-1].ravel(), labels[1:].ravel()], 1),
        ]
    )
    pairs = np.unique(np.sort(pairs[pairs[:, 0] != pairs[:, 1]], 1), axis=0)
    hists, sizes, boxes = list(hist), list(size), list(box)
    neighbours: list[set[int]] = [set() for _ in range(n)]
    for a, b in pairs:
        neighbours[a].add(int(b))
        neighbours[b].add(int(a))

    def similarity(a: int, b: int) -> float:
        union = _union(boxes[a], boxes[b])
        bbox = (union[2] - union[0]) * (union[3] - union[1])
        colour = float(np.minimum(hists[a], hists[b]).sum())
        return (
            colour
            + (1 - (sizes[a] + sizes[b]) / total)
            + (1 - (bbox - sizes[a] - sizes[b]) / total)
        )

    heap = [(-similarity(int(a), int(b)), int(a), int(b)) for a, b in pairs]
    heapq.heapify(heap)
    alive = [True] * n
    merged = []
    while heap:
        _, a, b = heapq.heappop(heap)  # most similar first; ties: lowest ids
        if not (alive[a] and alive[b]):
            continue  # a pair whose region was merged already
        t = len(sizes)
        alive[a] = alive[b] = False
        alive.append(True)
        sizes.append(sizes[a] + sizes[b])
        hists.append((sizes[a] * hists[a] + sizes[b] * hists[b]) / sizes[t])
        boxes.append(_union(boxes[a], boxes[b]))
        merged.append(boxes[t])
        nb = (neighbours[a] | neighbours[b]) - {a, b}
        neighbours.append(nb)
        for m in nb:
            neighbours[m] -= {a, b}
            neighbours[m].add(t)
            heapq.heappush(heap, (-similarity(m, t), m, t))
    return np.asarray(merged, np.float64).reshape(-1, 4)


def filter_boxes(
    boxes: Boxes,
    kept: list[NDArray[np.float64]],
    min_side: float,
    max_ratio: float,
    max_iou: float,
    top_n: int,
) -> list[NDArray[np.float64]]:
    """ORL's ``box_filter`` over ``boxes`` in order: sides >= ``min_side``, aspect <=
    ``max_ratio``, IoU <= ``max_iou`` with every box in ``kept`` (earlier kinds) and every box
    taken before it; at most ``top_n``. Returns the boxes taken (``kept`` is not changed)."""
    taken: list[NDArray[np.float64]] = []
    for b in boxes:
        w, h = b[2] - b[0], b[3] - b[1]
        if len(taken) >= top_n or w < min_side or h < min_side:
            continue
        if max(w / h, h / w) > max_ratio:
            continue
        others = np.asarray(kept + taken).reshape(-1, 4)
        if len(others):
            iw = (np.minimum(others[:, 2], b[2]) - np.maximum(others[:, 0], b[0])).clip(0)
            ih = (np.minimum(others[:, 3], b[3]) - np.maximum(others[:, 1], b[1])).clip(0)
            inter = iw * ih
            areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
            if np.any(inter / (areas + w * h - inter) > max_iou):
                continue
        taken.append(b)
    return taken


def tile_proposals(
    image: NDArray[np.uint8], mpp: float, params: ProposalParams | None = None
) -> tuple[NDArray[np.float32], NDArray[np.int8]]:
    """Proposals of one ``(H, W, 3)`` uint8 tile at ``mpp`` um/px: ``(boxes (K, 4) float32
    x0, y0, x1, y1 in pixels, kinds (K,) int8 index into KINDS)``; K >= 1."""
    p = params or ProposalParams()
    h, w = image.shape[:2]
    nuclei = classical_instances(image, mpp)
    tight = instance_boxes(nuclei.inst)
    clusters = clip_boxes(
        cluster_boxes(
            tight, nuclei.centroid, p.cluster_link_um / mpp, p.cluster_min_nuclei, p.margin_um / mpp
        ),
        h,
        w,
    )
    min_px = max(1, round(p.superpixel_min_um2 / mpp**2))
    regions = selective_search(image, p.superpixel_scale, p.superpixel_sigma, min_px)
    order = np.argsort(-nuclei.area, kind="stable")  # larger nuclei first
    nucleus = grow_boxes(tight[order], p.nucleus_box_um / mpp, h, w)
    kept: list[NDArray[np.float64]] = []
    kinds: list[int] = []
    min_side = p.min_box_um / mpp
    for kind, boxes, side, top in (
        (1, clusters, min_side, p.max_clusters),
        (2, regions, min_side, p.max_regions),
        (0, nucleus, 1.0, p.max_nuclei),
    ):
        taken = filter_boxes(boxes, kept, side, p.max_ratio, p.max_iou, top)
        kept += taken
        kinds += [kind] * len(taken)
    if not kept:
        kept, kinds = [np.array([0.0, 0.0, w, h])], [KINDS.index("tile")]
    return np.asarray(kept, np.float32), np.asarray(kinds, np.int8)
