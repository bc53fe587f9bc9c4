"""ORL's stages on a real store (CMU-1 at 1 um/px, 12 tiles): proposals against independent
references (skimage, scipy), the proposal cache resumed after SIGKILL without duplicates, stage 2
reading stage 1's checkpoint (embeddings, kNN and pairs against brute force), stage 2 resumed
after SIGKILL, and its picture."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch

from pathssl.orl.cache import COLOURS, cache_dir, compute_proposals, load_proposals
from pathssl.orl.proposals import (
    ProposalParams,
    cluster_boxes,
    instance_boxes,
    selective_search,
    single_linkage,
)

#: few proposals per tile: small stage-2 runs on the CPU
PARAMS = ProposalParams(max_nuclei=6, max_clusters=2, max_regions=4)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


@pytest.fixture(scope="module")
def store(cmu_slide: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiling import tile_slides

    out = tmp_path_factory.mktemp("tiles")
    tile_slides([cmu_slide], out, mpp=1.0, size=224, progress=False, report=False)
    return out / "CMU-1-Small-Region.zarr"


@pytest.fixture(scope="module")
def stage1(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Stage 1: two steps of image-level BYOL through the training loop."""
    from test_train_methods import tiny_overrides

    from pathssl.train import build_trainer, load_config

    out = tmp_path_factory.mktemp("stage1")
    trainer = build_trainer(load_config(None, tiny_overrides("byol", store, out)))
    trainer.fit()
    return out / "last.pt"


def _pairs_call(store: Path, ckpt: Path, out: Path) -> str:
    return (
        "from pathssl.orl.pairs import build_pairs, PairParams\n"
        "from pathssl.orl.proposals import ProposalParams\n"
        f"build_pairs([{str(store)!r}], {str(ckpt)!r}, {str(out)!r}, "
        f"params=PairParams(knn=3, roi_size=32, batch_size=16), proposal_params={PARAMS!r}, "
        "chunk_tiles=2)\n"
    )


@pytest.fixture(scope="module")
def pairs(store: Path, stage1: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pairs") / "run"
    exec(_pairs_call(store, stage1, out), {})  # the same call the resume test runs
    return out / "pairs.npz"


def _kill_after(code: str, marker: Path, pattern: str) -> None:
    """Run ``code`` in a new interpreter and SIGKILL it once ``marker`` holds ``pattern``."""
    proc = subprocess.Popen([sys.executable, "-c", code], env=ENV, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline:
        if marker.is_dir() and any(marker.glob(pattern)):
            break
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL, "the run ended before it could be killed"


def test_nucleus_and_cluster_boxes_against_skimage_and_scipy(store: Path) -> None:
    from scipy.cluster.hierarchy import fcluster, linkage
    from skimage.measure import regionprops

    from pathssl.nuclei.classical import classical_instances
    from tiling import open_store

    s = open_store(store)
    nuclei = classical_instances(s[5], s.mpp)
    assert len(nuclei) > 10
    boxes = instance_boxes(nuclei.inst)
    ref = {r.label: r.bbox for r in regionprops(nuclei.inst)}  # (row0, col0, row1, col1)
    for i, b in enumerate(boxes):
        r0, c0, r1, c1 = ref[i + 1]
        assert tuple(b) == (c0, r0, c1, r1)
    link = 10.0 / s.mpp
    labels = single_linkage(nuclei.centroid, link)
    ref_labels = fcluster(linkage(nuclei.centroid, "single"), link, "distance")
    same = labels[:, None] == labels[None]  # the same partition, whatever the numbering
    np.testing.assert_array_equal(same, ref_labels[:, None] == ref_labels[None])
    got = cluster_boxes(boxes, nuclei.centroid, link, 3, 2.0)
    want = []
    for k in np.unique(ref_labels):
        m = boxes[ref_labels == k]
        if len(m) >= 3:
            want.append([*(m[:, :2].min(0) - 2), *(m[:, 2:].max(0) + 2)])
    assert sorted(map(tuple, got)) == sorted(map(tuple, np.asarray(want)))


def _sim(feats: dict[int, Any], p: tuple[int, int], n: int) -> float:
    """Selective search's colour + size + fill similarity, from per-region pixel features."""
    (ha, sa, ba), (hb, sb, bb) = feats[p[0]], feats[p[1]]
    u = (min(ba[0], bb[0]), min(ba[1], bb[1]), max(ba[2], bb[2]), max(ba[3], bb[3]))
    area = (u[2] - u[0]) * (u[3] - u[1])
    return float(np.minimum(ha, hb).sum()) + (1 - (sa + sb) / n) + (1 - (area - sa - sb) / n)


def test_selective_search_against_pixel_level_recomputation(store: Path) -> None:
    """Every merge's box and choice equal a naive grouping that recomputes each region's
    histogram, size and box from the pixels of the label map after every merge."""
    from skimage.segmentation import felzenszwalb

    from tiling import open_store

    image = open_store(store)[7][:96, :96]
    got = selective_search(image, 100.0, 0.8, 25)
    labels = felzenszwalb(image, scale=100.0, sigma=0.8, min_size=25).astype(np.int64)
    q = np.minimum(image.astype(np.int64) * 25 // 256, 24)
    ids = list(range(int(labels.max()) + 1))
    next_id, ref = len(ids), []
    while len(ids) > 1:
        feats = {}
        for r in ids:
            m = labels == r
            ys, xs = np.nonzero(m)
            h = np.concatenate([np.bincount(q[..., c][m], minlength=25) for c in range(3)])
            feats[r] = (h / h.sum(), m.sum(), (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1))
        adj = set()
        for a, b in ((labels[:, :-1], labels[:, 1:]), (labels[:-1], labels[1:])):
            d = a != b
            adj |= {
                (min(x, y), max(x, y)) for x, y in zip(a[d].tolist(), b[d].tolist(), strict=True)
            }
        if not adj:
            break

        a, b = max(sorted(adj), key=lambda p: (round(_sim(feats, p, labels.size), 9), -p[0], -p[1]))
        labels[(labels == a) | (labels == b)] = next_id
        ys, xs = np.nonzero(labels == next_id)
        ref.append((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1))
        ids = [r for r in ids if r not in (a, b)] + [next_id]
        next_id += 1
    np.testing.assert_array_equal(got, np.asarray(ref, np.float64))
    assert tuple(got[-1]) == (0, 0, 96, 96)


def _mtimes(paths: list[Path]) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in paths}


def test_proposal_cache_completes_a_partial_cache(store: Path, tmp_path: Path) -> None:
    """What a kill leaves (whole chunks, some missing): the rerun computes only the missing
    chunks and ends equal to the uninterrupted cache (the SIGKILL test below is slow)."""
    compute_proposals(store, PARAMS, chunk_tiles=3)
    copy = tmp_path / store.name
    shutil.copytree(store, copy)
    shutil.copytree(cache_dir(store), cache_dir(copy))
    chunks = sorted(cache_dir(copy).glob("chunk-*.npz"))
    assert len(chunks) == 4
    for path in chunks[1::2]:
        path.unlink()
    kept = _mtimes(chunks[0::2])
    compute_proposals(copy, PARAMS, chunk_tiles=64)  # resumes, keeping the cache's chunking
    assert _mtimes(chunks[0::2]) == kept  # not recomputed
    a, b = load_proposals(copy), load_proposals(store)
    for x, y in ((a.start, b.start), (a.boxes, b.boxes), (a.kinds, b.kinds)):
        np.testing.assert_array_equal(x, y)
    with pytest.raises(ValueError, match="--force"):
        compute_proposals(copy, ProposalParams(max_nuclei=5))


@pytest.mark.slow
def test_proposal_cache_resumes_after_kill_without_duplicates(store: Path, tmp_path: Path) -> None:
    copy = tmp_path / "killed" / store.name
    shutil.copytree(store, copy)
    code = (
        "from pathssl.orl.cache import compute_proposals\n"
        "from pathssl.orl.proposals import ProposalParams\n"
        f"compute_proposals({str(copy)!r}, {PARAMS!r}, chunk_tiles=2)\n"
    )
    _kill_after(code, cache_dir(copy), "chunk-*.npz")
    done = sorted(cache_dir(copy).glob("chunk-*.npz"))
    assert 0 < len(done) < 6, "killed before the end"
    compute_proposals(copy, PARAMS, chunk_tiles=64)  # resumes, keeping the cache's chunking
    compute_proposals(store, PARAMS, chunk_tiles=3)  # uninterrupted reference
    a, b = load_proposals(copy), load_proposals(store)
    np.testing.assert_array_equal(a.start, b.start)
    np.testing.assert_array_equal(a.boxes, b.boxes)
    np.testing.assert_array_equal(a.kinds, b.kinds)
    for c, path in enumerate(sorted(cache_dir(copy).glob("chunk-*.npz"))):
        tiles = np.load(path)["tile"]
        assert set(tiles.tolist()) == {2 * c, 2 * c + 1}  # each tile in its own chunk, once
    assert len(a.start) == 13 and np.all(np.diff(a.start) >= 1)
    assert {0, 1, 2} <= set(a.kinds.tolist())  # nuclei, clusters and regions were found


def test_proposals_picture(store: Path, tmp_path: Path) -> None:
    from pathssl.orl.cache import proposals_picture

    compute_proposals(store, PARAMS)
    out = proposals_picture(store, tmp_path / "p.png", zoom=2)
    img = cv2.imread(str(out))
    assert img is not None
    assert img.shape == (448 + 28, 448, 3)
    for name in ("nucleus", "cluster", "region"):
        assert np.any(np.all(img == np.asarray(COLOURS[name], np.uint8), axis=-1)), name


def test_stage2_reads_stage1_checkpoint_against_brute_force(
    store: Path, stage1: Path, pairs: Path
) -> None:
    from pathssl.models.pretrained import load_pretrained
    from tiling import open_store

    z = np.load(pairs)
    parts = sorted((pairs.parent / "parts").glob("emb-*.npz"))
    image = np.concatenate([np.load(p)["image"] for p in parts])
    backbone, meta = load_pretrained(stage1)  # independent of build_pairs' loading
    s = open_store(store)
    x = torch.from_numpy(np.stack([s[i] for i in range(len(s))])).permute(0, 3, 1, 2).float()
    m, sd = torch.tensor(meta["mean"]).view(1, 3, 1, 1), torch.tensor(meta["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        ref = backbone((x / 255 - m) / sd).numpy()
    np.testing.assert_allclose(image, ref, rtol=1e-4, atol=1e-4)
    f = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    for i in range(len(f)):
        sims = [(float(f[i] @ f[j]), j) for j in range(len(f)) if j != i]
        want = [j for _, j in sorted(sims, key=lambda t: -t[0])[:3]]
        assert z["knn"][i].tolist() == want
    roi = np.concatenate([np.load(p)["roi"] for p in parts])
    roi = roi / np.linalg.norm(roi, axis=1, keepdims=True)
    start = z["box_start"]
    for i in (0, 5, 11):  # the top-ranked RoI pairs of each neighbour, by brute force
        rows = []
        for j in z["knn"][i].tolist():
            scores = [
                (float(roi[a] @ roi[b]), a - start[i], b - start[j])
                for a in range(start[i], start[i + 1])
                for b in range(start[j], start[j + 1])
            ]
            keep = max(1, int(0.1 * (start[i + 1] - start[i])))
            rows += [(j, a, b) for _, a, b in sorted(scores, key=lambda t: -t[0])[:keep]]
        lo, hi = z["pair_start"][i], z["pair_start"][i + 1]
        assert z["pair_knn"][lo:hi].tolist() == [r[0] for r in rows]
        np.testing.assert_array_equal(
            z["pair_box"][lo:hi], z["boxes"][start[i] + np.array([r[1] for r in rows])]
        )
        knn_rows = [start[r[0]] + r[2] for r in rows]
        np.testing.assert_array_equal(z["pair_knn_box"][lo:hi], z["boxes"][knn_rows])
    assert str(stage1.resolve()) in str(z["info"])


def test_stage2_completes_a_partial_run(
    store: Path, stage1: Path, pairs: Path, tmp_path: Path
) -> None:
    """What a kill leaves (some embedding chunks, no pairs.npz): the rerun embeds only the
    missing chunks and writes the same pairs (the SIGKILL test below is slow)."""
    out = tmp_path / "run"
    shutil.copytree(pairs.parent, out)
    (out / "pairs.npz").unlink()
    parts = sorted((out / "parts").glob("emb-*.npz"))
    for path in parts[2:]:
        path.unlink()
    kept = _mtimes(parts[:2])
    exec(_pairs_call(store, stage1, out), {})
    assert _mtimes(parts[:2]) == kept
    a, b = np.load(pairs), np.load(out / "pairs.npz")
    for key in a.files:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.slow
def test_stage2_resumes_after_kill(store: Path, stage1: Path, pairs: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    _kill_after(_pairs_call(store, stage1, out), out / "parts", "emb-*.npz")
    assert not (out / "pairs.npz").exists()
    exec(_pairs_call(store, stage1, out), {})
    a, b = np.load(pairs), np.load(out / "pairs.npz")
    for key in a.files:
        if key != "info":
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
