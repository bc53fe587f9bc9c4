"""ORL stage 3's building blocks against naive references: the symmetrised BYOL pair loss, the
intra-RoI box jitter (ORL's sequential ``aug_bbox``), RoIAlign crops on a real tile, and the
proposal filter (ORL's ``box_filter``)."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from pathssl.orl.proposals import filter_boxes
from pathssl.ssl.orl import crop_rois, jitter_boxes, pair_loss


@pytest.fixture(scope="module")
def tile(data_dir: Path) -> np.ndarray:
    img = cv2.imread(str(data_dir / "nuclei" / "hgsc_nest.jpg"), cv2.IMREAD_COLOR)
    assert img is not None
    return np.ascontiguousarray(cv2.cvtColor(img, cv2.COLOR_BGR2RGB)[200:424, 300:524])


def test_pair_loss_against_naive_reference() -> None:
    g = torch.Generator().manual_seed(0)
    p, z = torch.randn(10, 7, generator=g), torch.randn(10, 7, generator=g)
    got = pair_loss(p, z)
    ref = 0.0
    for i in range(5):  # view 1 of sample i predicts view 2's target, and the reverse
        for a, b in ((p[i], z[5 + i]), (p[5 + i], z[i])):
            cos = float(a @ b) / math.sqrt(float(a @ a) * float(b @ b))
            ref += (2 - 2 * cos) / 5
    assert float(got) == pytest.approx(ref, rel=1e-5)


def _iou(a: list[float], b: list[float]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_jitter_boxes_against_sequential_reference() -> None:
    """The vectorised jitter takes, per box, the first valid of its attempts: ORL's loop of
    attempts, drawn here one by one from the same uniforms."""
    boxes = torch.tensor(
        [[10.0, 20, 60, 50], [0, 0, 224, 224], [200, 200, 224, 224], [90, 30, 150, 110]]
    )
    torch.manual_seed(3)
    got = jitter_boxes(boxes, 224, 224, attempts=20)
    torch.manual_seed(3)
    u = torch.rand(4, 20, 4, dtype=torch.float64).tolist()
    for b, out, draws in zip(boxes.tolist(), got.tolist(), u, strict=True):
        w, h = b[2] - b[0], b[3] - b[1]
        expected = b
        for d in draws:
            area = w * h * (0.5 + 1.5 * d[0])
            r = math.exp(math.log(0.5) + d[1] * (math.log(2.0) - math.log(0.5)))
            nw, nh = math.sqrt(area * r), math.sqrt(area / r)
            cx, cy = (b[0] + b[2]) / 2 + (d[2] - 0.5) * w, (b[1] + b[3]) / 2 + (d[3] - 0.5) * h
            cand = [cx - nw / 2, cy - nh / 2, cx + nw / 2, cy + nh / 2]
            inside = cand[0] >= 0 and cand[1] >= 0 and cand[2] <= 224 and cand[3] <= 224
            if inside and _iou(cand, b) > 0.5:
                expected = cand
                break
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-4)
    assert got[1].tolist() == boxes[1].tolist()  # the whole tile: no other box fits inside
    assert not torch.equal(got[0], boxes[0]) and not torch.equal(got[3], boxes[3])


def test_roi_align_crops_against_numpy(tile: np.ndarray) -> None:
    """A box of the output's size is the slice of the tile; a box twice the size is the mean of
    2 x 2 pixel blocks (adaptive sampling averages instead of aliasing)."""
    t = torch.from_numpy(tile).permute(2, 0, 1)[None].contiguous()
    boxes = torch.tensor([[17.0, 40, 49, 72], [100, 8, 164, 72]])
    crops = crop_rois(t, torch.tensor([0, 0]), boxes, 32)
    assert crops.shape == (2, 3, 32, 32) and crops.dtype == torch.uint8
    np.testing.assert_array_equal(crops[0].permute(1, 2, 0).numpy(), tile[40:72, 17:49])
    block = tile[8:72, 100:164].astype(np.float64).reshape(32, 2, 32, 2, 3).mean((1, 3))
    diff = np.abs(crops[1].permute(1, 2, 0).numpy().astype(np.float64) - block)
    assert diff.max() <= 0.5 + 1e-6  # rounding to uint8 only


def test_filter_boxes_against_orl_box_filter() -> None:
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 200, (60, 2))
    wh = rng.uniform(2, 80, (60, 2))
    boxes = np.concatenate([xy, xy + wh], 1)
    kept_before = [np.array([0.0, 0.0, 50.0, 50.0])]
    got = filter_boxes(boxes, kept_before, 10.0, 3.0, 0.5, 12)
    ref: list[list[float]] = []
    for b in boxes.tolist():  # ORL's box_filter: size, ratio, then IoU against what is kept
        w, h = b[2] - b[0], b[3] - b[1]
        if w < 10 or h < 10 or max(w / h, h / w) > 3:
            continue
        if any(_iou(b, k) > 0.5 for k in [kept_before[0].tolist(), *ref]):
            continue
        ref.append(b)
    assert [list(g) for g in got] == ref[:12]
    assert 3 <= len(got) <= 12
