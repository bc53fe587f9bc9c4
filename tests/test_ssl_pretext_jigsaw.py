"""Jigsaw (Noroozi & Favaro 2016): the permutation set by greedy maximal minimum Hamming
distance against the naive greedy (every distance recomputed after each pick) at P = 100, its
properties at 1,000 and 10,000 (time, uniqueness, determinism), the tile geometry (gaps and
jitter) and the loss against a per-sample reference."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pathssl.models import build_backbone
from pathssl.ssl import METHODS
from pathssl.ssl.permutations import (
    hamming,
    maxmin_hamming_permutations,
    naive_maxmin_hamming,
)


def test_permutation_set_equals_the_naive_greedy_at_100() -> None:
    fast = maxmin_hamming_permutations(100, 9, seed=3)
    np.testing.assert_array_equal(fast, naive_maxmin_hamming(100, 9, seed=3))


@pytest.mark.parametrize("n_items", [4, 5])
def test_permutation_set_equals_the_naive_greedy_over_all_sizes(n_items: int) -> None:
    total = int(np.prod(range(1, n_items + 1)))
    for seed in (0, 1):
        np.testing.assert_array_equal(
            maxmin_hamming_permutations(total, n_items, seed),
            naive_maxmin_hamming(total, n_items, seed),
        )


def greedy_levels(perms: np.ndarray) -> np.ndarray:
    """Min distance of each pick to the picks before it (the greedy's levels)."""
    d = hamming(perms, perms)
    return np.array([d[i, :i].min() for i in range(1, len(perms))])


@pytest.mark.parametrize(("n", "seconds"), [(1000, 10.0), (10000, 20.0)])
def test_permutation_sets_at_1000_and_10000(n: int, seconds: float) -> None:
    t = time.perf_counter()
    perms = maxmin_hamming_permutations(n, 9, seed=0)
    took = time.perf_counter() - t
    assert took < seconds, f"{n} permutations took {took:.1f} s"
    assert perms.shape == (n, 9) and perms.dtype == np.int64
    assert (np.sort(perms, axis=1) == np.arange(9)).all()  # every row a permutation
    assert len({tuple(p) for p in perms}) == n  # no repeats
    np.testing.assert_array_equal(perms, maxmin_hamming_permutations(n, 9, seed=0))
    assert not np.array_equal(perms, maxmin_hamming_permutations(n, 9, seed=1))
    if n == 1000:  # the greedy's levels never rise, and the set reaches the known level 5
        levels = greedy_levels(perms)
        assert (np.diff(levels) <= 0).all() and levels[0] == 9 and levels[-1] == 5


def test_small_permutation_sets_are_prefixes_and_spread_out() -> None:
    big = maxmin_hamming_permutations(100, 9, seed=0)
    np.testing.assert_array_equal(maxmin_hamming_permutations(10, 9, seed=0), big[:10])
    d = hamming(big, big) + 99 * np.eye(100, dtype=np.int16)
    assert d.min() == 6  # 100 permutations of 9 at pairwise Hamming distance >= 6


def test_tiles_have_gaps_jitter_and_per_tile_normalisation() -> None:
    """A view whose pixel value is its own coordinate: each tile's corner tells where it was cut.
    Tiles lie inside their cells, jitter varies between draws, and every tile is standardised."""
    s = 225
    rows = torch.arange(s, dtype=torch.float64).view(s, 1).expand(s, s)
    cols = torch.arange(s, dtype=torch.float64).view(1, s).expand(s, s)
    x = torch.stack([rows, cols, rows * s + cols]).unsqueeze(0).repeat(64, 1, 1, 1)
    torch.manual_seed(0)
    from pathssl.ssl.patches import grid_tiles

    raw = grid_tiles(x, 3, 64 / 75, 0.07)  # normalised, so recover corners from a raw cut
    assert raw.shape == (64, 9, 3, 64, 64)
    torch.testing.assert_close(raw.mean((-2, -1)), torch.zeros(64, 9, 3, dtype=torch.float64))
    std = raw.std((-2, -1))
    torch.testing.assert_close(std, torch.ones_like(std), atol=1e-5, rtol=0)
    from pathssl.ssl.patches import gather_patches, grid_cells, patch_corners

    torch.manual_seed(0)
    corners = patch_corners(64, grid_cells(3), 75, 64, 5)
    cut = gather_patches(x, corners, 64)
    r0, c0 = cut[:, :, 0, 0, 0], cut[:, :, 1, 0, 0]
    cell_r, cell_c = grid_cells(3)[:, 0] * 75, grid_cells(3)[:, 1] * 75
    assert ((r0 >= cell_r) & (r0 + 64 <= cell_r + 75)).all()  # inside its cell: gap >= 0
    assert ((c0 >= cell_c) & (c0 + 64 <= cell_c + 75)).all()
    assert len(torch.unique(r0 - cell_r)) == 11  # jitter -5..5 around the centred offset 5
    assert len(torch.unique(c0 - cell_c)) == 11
    assert torch.equal(cut[:, :, 0, :, 0] - r0[..., None], torch.arange(64.0).expand(64, 9, 64))


def test_loss_matches_a_per_sample_reference() -> None:
    torch.manual_seed(0)
    method = METHODS.build(
        "jigsaw",
        backbone=build_backbone("resnet18"),
        num_permutations=30,
        tile_dim=16,
        hidden_dim=32,
    ).eval()
    x = torch.randn(3, 3, 72, 72)
    torch.manual_seed(5)
    with torch.no_grad():
        got = method([x])["loss"]
    # the reference draws the same numbers in the same order: jitter (B, 9, 2), then labels
    torch.manual_seed(5)
    cell, p = 24, round(64 / 75 * 24)
    j = min(round(0.07 * cell), (cell - p) // 2)
    shift = torch.randint(-j, j + 1, (3, 9, 2))
    y = torch.randint(30, (3,))
    logits = []
    with torch.no_grad():
        for b in range(3):
            tiles = []
            for k in range(9):
                r = (k // 3) * cell + (cell - p) // 2 + int(shift[b, k, 0])
                c = (k % 3) * cell + (cell - p) // 2 + int(shift[b, k, 1])
                t = x[b, :, r : r + p, c : c + p]
                m = t.mean(dim=(1, 2), keepdim=True)
                sd = t.std(dim=(1, 2), keepdim=True)
                tiles.append((t - m) / (sd + 1e-5))
            perm = [int(i) for i in method.tiles.permutations[y[b]]]
            feats = [method.tile_fc(method.backbone(tiles[i][None]))[0] for i in perm]
            logits.append(method.classifier(torch.cat(feats)[None])[0])
    ref = F.cross_entropy(torch.stack(logits), y)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)


def test_permutation_set_is_a_checkpointed_buffer() -> None:
    a = METHODS.build("jigsaw", backbone=build_backbone("resnet18"), num_permutations=50)
    sd = a.state_dict()
    assert torch.equal(sd["tiles.permutations"], torch.from_numpy(naive_maxmin_hamming(50)))
    b = METHODS.build(
        "jigsaw", backbone=build_backbone("resnet18"), num_permutations=50, permutation_seed=9
    )
    assert not torch.equal(b.tiles.permutations, a.tiles.permutations)
    b.load_state_dict(sd)  # the checkpoint's set wins over the one built from the config
    assert torch.equal(b.tiles.permutations, a.tiles.permutations)
