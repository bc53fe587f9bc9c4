"""Context prediction (Doersch et al. 2015): the centre/neighbour pair is cut with a gap and a
jitter (shown on a view whose pixels are their own coordinates), labels are uniform over the 8
neighbours, and the loss matches a per-sample reference."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pathssl.models import build_backbone
from pathssl.ssl import METHODS
from pathssl.ssl.context import NEIGHBOURS, context_pairs


def coordinate_views(batch: int, side: int) -> torch.Tensor:
    """``(B, 3, side, side)`` float64: channel 0 the row, channel 1 the column of each pixel."""
    r = torch.arange(side, dtype=torch.float64).view(side, 1).expand(side, side)
    c = torch.arange(side, dtype=torch.float64).view(1, side).expand(side, side)
    return torch.stack([r, c, r + c]).unsqueeze(0).repeat(batch, 1, 1, 1)


def test_pairs_have_a_gap_and_a_jitter() -> None:
    torch.manual_seed(0)
    cell, p = 144, 96  # Doersch et al.: 96 px patches, 48 px gap, 7 px jitter
    pairs, labels, corners = context_pairs(coordinate_views(512, 3 * cell), 2 / 3, 0.05)
    assert pairs.shape == (512, 2, 3, p, p)
    # the patches are where the corners say (the pixel values are coordinates)
    assert torch.equal(pairs[:, :, 0, 0, 0].long(), corners[..., 0])
    assert torch.equal(pairs[:, :, 1, 0, 0].long(), corners[..., 1])
    assert torch.bincount(labels, minlength=8).min() > 30  # every neighbour drawn
    centre, other = corners[:, 0], corners[:, 1]
    offset = torch.tensor(NEIGHBOURS)[labels] - 1  # (B, 2) in {-1, 0, 1}
    jit = round(0.05 * cell)  # 7 px
    for axis in (0, 1):
        along = offset[:, axis] != 0
        # gap between the facing edges along each axis where the cells differ: 48 +- 2 x 7
        gap = (other[:, axis] - centre[:, axis]).abs()[along] - p
        assert gap.min() >= 48 - 2 * jit and gap.max() <= 48 + 2 * jit
        assert gap.min() < 48 - jit and gap.max() > 48 + jit  # jitter: the gap varies
        # patches stay inside their cells; each one is moved by up to 7 px from centred
        for k in (0, 1):
            cell_idx = (1 if k == 0 else 1 + offset[:, axis]) * cell
            shift = corners[:, k, axis] - cell_idx - (cell - p) // 2
            assert shift.abs().max() == jit and len(torch.unique(shift)) == 2 * jit + 1


def test_loss_matches_a_per_sample_reference() -> None:
    torch.manual_seed(0)
    method = METHODS.build(
        "context", backbone=build_backbone("resnet18"), pair_dim=16, hidden_dim=32
    ).eval()
    x = torch.randn(4, 3, 60, 60)
    torch.manual_seed(3)
    with torch.no_grad():
        got = method([x])["loss"]
    torch.manual_seed(3)  # the same draws in the same order: labels, then the jitter (B, 2, 2)
    cell = 20
    p = round(2 / 3 * cell)
    j = min(round(0.05 * cell), (cell - p) // 2)
    labels = torch.randint(8, (4,))
    shift = torch.randint(-j, j + 1, (4, 2, 2))
    logits = []
    with torch.no_grad():
        for b in range(4):
            feats = []
            for k, (cr, cc) in enumerate([(1, 1), NEIGHBOURS[int(labels[b])]]):
                r = cr * cell + (cell - p) // 2 + int(shift[b, k, 0])
                c = cc * cell + (cell - p) // 2 + int(shift[b, k, 1])
                t = x[b, :, r : r + p, c : c + p]
                t = (t - t.mean((1, 2), keepdim=True)) / (t.std((1, 2), keepdim=True) + 1e-5)
                feats.append(method.patch_fc(method.backbone(t[None]))[0])
            logits.append(method.classifier(torch.cat(feats)[None])[0])
    ref = F.cross_entropy(torch.stack(logits), labels)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
