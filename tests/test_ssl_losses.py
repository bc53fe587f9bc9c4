"""Each SSL loss against a naive reference written with explicit loops / plain formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.feature import hog as skimage_hog

from pathssl.ssl.hog import hog_patch_features
from pathssl.ssl.losses import (
    barlow_twins_loss,
    byol_loss,
    dino_loss,
    info_nce_queue,
    masked_patch_loss,
    moco_v3_contrastive,
    nt_xent,
    patchify,
    sinkhorn_knopp,
)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / math.sqrt(float((v * v).sum()))


def test_nt_xent_matches_loops() -> None:
    z1, z2 = torch.randn(5, 7, dtype=torch.float64), torch.randn(5, 7, dtype=torch.float64)
    t = 0.3
    z = [_unit(v) for v in torch.cat([z1, z2])]
    n = len(z)
    total = 0.0
    for i in range(n):
        pos = (i + 5) % n
        denom = sum(math.exp(float(z[i] @ z[j]) / t) for j in range(n) if j != i)
        total += -math.log(math.exp(float(z[i] @ z[pos]) / t) / denom)
    assert float(nt_xent(z1, z2, t)) == pytest.approx(total / n, rel=1e-10)


def test_info_nce_queue_matches_loops() -> None:
    q = torch.nn.functional.normalize(torch.randn(4, 6, dtype=torch.float64), dim=1)
    k = torch.nn.functional.normalize(torch.randn(4, 6, dtype=torch.float64), dim=1)
    queue = torch.nn.functional.normalize(torch.randn(10, 6, dtype=torch.float64), dim=1)
    t = 0.2
    total = 0.0
    for i in range(4):
        pos = math.exp(float(q[i] @ k[i]) / t)
        neg = sum(math.exp(float(q[i] @ queue[j]) / t) for j in range(10))
        total += -math.log(pos / (pos + neg))
    assert float(info_nce_queue(q, k, queue, t)) == pytest.approx(total / 4, rel=1e-10)


def test_moco_v3_contrastive_matches_loops() -> None:
    q, k = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64)
    t = 0.2
    qs, ks = [_unit(v) for v in q], [_unit(v) for v in k]
    total = 0.0
    for i in range(4):
        logits = [float(qs[i] @ ks[j]) / t for j in range(4)]
        total += -logits[i] + math.log(sum(math.exp(v) for v in logits))
    expected = total / 4 * 2 * t
    assert float(moco_v3_contrastive(q, k, t)) == pytest.approx(expected, rel=1e-10)


def test_byol_loss_matches_formula() -> None:
    p, z = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    expected = sum(float(((_unit(p[i]) - _unit(z[i])) ** 2).sum()) for i in range(3)) / 3
    assert float(byol_loss(p, z)) == pytest.approx(expected, rel=1e-10)


def test_barlow_twins_matches_loops() -> None:
    n, d, lambd = 6, 4, 0.05
    z1, z2 = torch.randn(n, d, dtype=torch.float64), torch.randn(n, d, dtype=torch.float64)

    def standardise(z: torch.Tensor) -> list[list[float]]:
        cols = []
        for j in range(d):
            col = [float(z[b, j]) for b in range(n)]
            mean = sum(col) / n
            var = sum((c - mean) ** 2 for c in col) / n
            cols.append([(c - mean) / math.sqrt(var + 1e-5) for c in col])
        return cols

    a, b = standardise(z1), standardise(z2)
    total = 0.0
    for i in range(d):
        for j in range(d):
            c = sum(a[i][s] * b[j][s] for s in range(n)) / n
            total += (1 - c) ** 2 if i == j else lambd * c**2
    assert float(barlow_twins_loss(z1, z2, lambd)) == pytest.approx(total, rel=1e-10)


def test_sinkhorn_matches_loops_and_marginals() -> None:
    b, k, eps, iters = 6, 4, 0.5, 3
    scores = torch.randn(b, k, dtype=torch.float64)
    q = sinkhorn_knopp(scores, eps, iters)
    # naive: Q[k][b] = exp(s/eps); alternate prototype rows (1/K) and sample columns (1/B)
    m = [[math.exp(float(scores[j, i]) / eps) for j in range(b)] for i in range(k)]
    total = sum(map(sum, m))
    m = [[v / total for v in row] for row in m]
    for _ in range(iters):
        for i in range(k):
            row = sum(m[i])
            m[i] = [v / row / k for v in m[i]]
        for j in range(b):
            col = sum(m[i][j] for i in range(k))
            for i in range(k):
                m[i][j] = m[i][j] / col / b
    expected = torch.tensor(
        [[m[i][j] * b for i in range(k)] for j in range(b)], dtype=torch.float64
    )
    torch.testing.assert_close(q, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(q.sum(1), torch.ones(b, dtype=q.dtype))  # each sample sums to 1
    # prototypes are (approximately, exactly in the limit) equipartitioned: B / K each
    q_many = sinkhorn_knopp(scores, eps, 200)
    torch.testing.assert_close(q_many.sum(0), torch.full((k,), b / k, dtype=q.dtype))


def test_dino_loss_matches_loops() -> None:
    b, k, ts, tt = 3, 5, 0.1, 0.04
    student = [torch.randn(b, k, dtype=torch.float64) for _ in range(4)]
    teacher = [torch.randn(b, k, dtype=torch.float64) for _ in range(2)]
    center = torch.randn(1, k, dtype=torch.float64)
    terms = []
    for iq in range(2):
        for v in range(4):
            if v == iq:
                continue
            ce = 0.0
            for s in range(b):
                t_exp = [
                    math.exp((float(teacher[iq][s, c]) - float(center[0, c])) / tt)
                    for c in range(k)
                ]
                s_exp = [math.exp(float(student[v][s, c]) / ts) for c in range(k)]
                ce += -sum(
                    t_exp[c] / sum(t_exp) * math.log(s_exp[c] / sum(s_exp)) for c in range(k)
                )
            terms.append(ce / b)
    got = float(dino_loss(student, teacher, center, ts, tt))
    assert got == pytest.approx(sum(terms) / len(terms), rel=1e-9)


def test_masked_patch_loss_matches_loops() -> None:
    b, c, p = 2, 3, 4
    img = torch.randn(b, c, 8, 8, dtype=torch.float64)
    pred = torch.randn(b, 4, p * p * c, dtype=torch.float64)
    mask = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 1]])
    total, count = 0.0, 0
    for s in range(b):
        for n in range(4):
            if not mask[s, n]:
                continue
            r, col = divmod(n, 2)
            patch = img[s, :, r * p : (r + 1) * p, col * p : (col + 1) * p].permute(1, 2, 0)
            vals = [float(v) for v in patch.reshape(-1)]
            mean = sum(vals) / len(vals)
            var = sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)  # unbiased, as MAE
            target = [(v - mean) / math.sqrt(var + 1e-6) for v in vals]
            err = [(float(pred[s, n, i]) - target[i]) ** 2 for i in range(len(vals))]
            total += sum(err) / len(err)
            count += 1
    got = masked_patch_loss(pred, patchify(img, p), mask, norm_target=True)
    assert float(got) == pytest.approx(total / count, rel=1e-10)
    # unmasked patches do not matter
    pred2 = pred.clone()
    pred2[0, 1] += 100.0
    assert float(masked_patch_loss(pred2, patchify(img, p), mask, True)) == pytest.approx(
        float(got), rel=1e-12
    )


def test_hog_matches_skimage_on_grayscale() -> None:
    """Same definition as ``skimage.feature.hog(..., cells_per_block=(2, 2), block_norm='L2')``
    on blocks aligned with the 16x16 patches (skimage's blocks overlap with a 1-cell stride, so
    every second block is a patch). Difference: for colour images skimage keeps, per pixel, the
    channel with the largest gradient; we (like MaskFeat) histogram every channel separately,
    so colour is compared channel by channel."""
    rng = np.random.default_rng(0)
    img = rng.random((32, 48))
    ours = hog_patch_features(torch.from_numpy(img)[None, None], 16, 8, 9, norm="patch")[0].numpy()
    ref = skimage_hog(
        img,
        orientations=9,
        pixels_per_cell=(8, 8),
        cells_per_block=(2, 2),
        block_norm="L2",
        feature_vector=False,
    )  # (3, 5, 2, 2, 9)
    ref = ref[::2, ::2].reshape(6, 36)
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-9)  # skimage sums in float32
    rgb = rng.random((3, 16, 32))
    ours_rgb = hog_patch_features(torch.from_numpy(rgb)[None], 16, 8, 9, norm="patch")[0].numpy()
    for ch in range(3):
        ref_ch = skimage_hog(
            rgb[ch],
            orientations=9,
            pixels_per_cell=(8, 8),
            cells_per_block=(2, 2),
            block_norm="L2",
            feature_vector=False,
        )
        np.testing.assert_allclose(
            ours_rgb[:, ch * 36 : (ch + 1) * 36], ref_ch[0, ::2].reshape(2, 36), rtol=1e-6
        )


def test_hog_cell_norm_matches_a_naive_per_cell_histogram() -> None:
    """MaskFeat's reference normalises each cell's 9-bin histogram per channel: a pixel loop
    (central differences, unsigned angle hard-binned, mean over the 8x8 cell, L2 over the bins)
    gives the same targets; each cell's 9 values have unit norm (the old per-patch norm: not)."""
    rng = np.random.default_rng(1)
    img = rng.random((2, 16, 32))  # 2 channels, 2 x 4 cells, 2 patches
    ours = hog_patch_features(torch.from_numpy(img)[None], 16, 8, 9)[0].numpy()  # (2, 72)
    c, h, w = img.shape
    ref = np.zeros((c, h // 8, w // 8, 9))
    for ch in range(c):
        for y in range(h):
            for x in range(w):
                gy = img[ch, y + 1, x] - img[ch, y - 1, x] if 0 < y < h - 1 else 0.0
                gx = img[ch, y, x + 1] - img[ch, y, x - 1] if 0 < x < w - 1 else 0.0
                angle = np.rad2deg(np.arctan2(gy, gx)) % 180.0
                b = min(int(angle // 20.0), 8)
                ref[ch, y // 8, x // 8, b] += np.hypot(gy, gx) / 64.0
    ref /= np.sqrt((ref**2).sum(-1, keepdims=True) + 1e-10)
    for p in range(2):  # patch p covers cell columns 2p, 2p + 1; rows (C, k, k, nbins)
        expect = ref[:, :, 2 * p : 2 * p + 2, :].reshape(-1)
        np.testing.assert_allclose(ours[p], expect, rtol=1e-6, atol=1e-9)
    cells = ours.reshape(2, c, 2, 2, 9)
    np.testing.assert_allclose(np.linalg.norm(cells, axis=-1), 1.0, rtol=1e-5)
