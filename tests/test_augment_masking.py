"""The one patch-mask sampler against naive references: count per row, the documented rule,
determinism under a seed, uniform coverage; the index form MAE uses; both recipe backends."""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from pathssl.augment import build_recipe
from pathssl.augment.masking import random_patch_mask, split_by_mask


def naive_mask(noise: torch.Tensor, k: int) -> torch.Tensor:
    """Row by row: mask the k patches with the smallest noise (ties impossible in practice)."""
    out = torch.zeros(noise.shape, dtype=torch.bool)
    for r, row in enumerate(noise.tolist()):
        for j in sorted(range(len(row)), key=row.__getitem__)[:k]:
            out[r, j] = True
    return out


@pytest.mark.parametrize(
    ("n", "ratio"), [(196, 0.75), (196, 0.4), (16, 0.75), (6, 0.25), (10, 0.25), (7, 0.5), (9, 0)]
)
def test_exactly_round_ratio_n_masked_per_row(n: int, ratio: float) -> None:
    mask = random_patch_mask(50, n, ratio, torch.Generator().manual_seed(0))
    assert mask.shape == (50, n) and mask.dtype == torch.bool
    expected = {(196, 0.75): 147, (196, 0.4): 78, (16, 0.75): 12, (6, 0.25): 2, (10, 0.25): 2}
    k = expected.get((n, ratio), round(ratio * n))
    assert mask.sum(dim=1).tolist() == [k] * 50


def test_matches_the_naive_rule_for_the_same_noise() -> None:
    mask = random_patch_mask(8, 49, 0.6, torch.Generator().manual_seed(3))
    noise = torch.rand(8, 49, generator=torch.Generator().manual_seed(3))
    assert torch.equal(mask, naive_mask(noise, round(0.6 * 49)))


def test_deterministic_under_a_seed_and_follows_the_generator() -> None:
    a = random_patch_mask(4, 64, 0.75, torch.Generator().manual_seed(11))
    b = random_patch_mask(4, 64, 0.75, torch.Generator().manual_seed(11))
    c = random_patch_mask(4, 64, 0.75, torch.Generator().manual_seed(12))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a[0], a[1])  # per-sample draws
    torch.manual_seed(5)
    d = random_patch_mask(4, 64, 0.75)
    torch.manual_seed(5)
    assert torch.equal(d, random_patch_mask(4, 64, 0.75))  # global generator when none given


def test_uniform_over_patches_and_subsets() -> None:
    """Every patch is masked with probability k / N, and every k-subset is equally likely."""
    g = torch.Generator().manual_seed(0)
    rows = 12000
    mask = random_patch_mask(rows, 16, 0.25, g)
    freq = mask.float().mean(dim=0)
    sd = (0.25 * 0.75 / rows) ** 0.5
    assert float((freq - 0.25).abs().max()) < 5 * sd, freq
    small = random_patch_mask(rows, 4, 0.5, g)  # 6 subsets of 2 of 4 patches
    counts = Counter(tuple(np.flatnonzero(r)) for r in small.numpy())
    assert set(counts) == set(itertools.combinations(range(4), 2))
    sd = (rows / 6 * 5 / 6) ** 0.5
    assert max(abs(c - rows / 6) for c in counts.values()) < 5 * sd, counts


def test_ratio_outside_unit_interval_is_rejected() -> None:
    with pytest.raises(ValueError, match="mask_ratio"):
        random_patch_mask(2, 16, 1.5)


def test_split_by_mask_against_loops() -> None:
    mask = random_patch_mask(5, 12, 0.5, torch.Generator().manual_seed(1))
    ids_keep, ids_restore = split_by_mask(mask)
    assert ids_keep.shape == (5, 6) and ids_restore.shape == (5, 12)
    for r in range(5):
        visible = [j for j in range(12) if not mask[r, j]]
        hidden = [j for j in range(12) if mask[r, j]]
        assert ids_keep[r].tolist() == visible
        order = visible + hidden  # the sequence MAE's decoder un-shuffles
        assert [order[i] for i in ids_restore[r].tolist()] == list(range(12))
    uneven = torch.tensor([[True, False, False], [True, True, False]])
    with pytest.raises(ValueError, match="different numbers"):
        split_by_mask(uneven)


@pytest.fixture(scope="module")
def tile(data_dir: Path) -> np.ndarray:
    img = cv2.cvtColor(cv2.imread(str(data_dir / "nuclei/hgsc_nest.jpg")), cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(img[200:456, 300:556])


@pytest.mark.parametrize("name", ["mae", "maskfeat"])
def test_recipes_draw_their_mask_from_the_sampler(name: str, tile: np.ndarray) -> None:
    from pathssl.augment.masking import patch_mask

    recipe = build_recipe(name, size=64, patch_size=8)
    grid, ratio, mode = recipe.grid, recipe.mask_ratio, recipe.mask_mode
    got = recipe.cpu(seed=4)(tile)["patch_mask"]
    expected = patch_mask(1, grid, ratio, mode, torch.Generator().manual_seed(4))[0].numpy()
    assert got.dtype == bool and np.array_equal(got, expected)
    x = torch.from_numpy(np.stack([tile] * 3)).permute(0, 3, 1, 2)
    g = torch.Generator().manual_seed(9)
    out = recipe.torch()(x, g)
    # the views draw first, then the mask, from the same generator
    g2 = torch.Generator().manual_seed(9)
    for op in recipe.torch().ops:
        op(x, g2)
    assert torch.equal(out["patch_mask"], patch_mask(3, grid, ratio, mode, g2))


def _neighbour_rate(mask: torch.Tensor, h: int, w: int) -> float:
    """Fraction of masked patches with a masked right or lower neighbour (a blockiness score)."""
    m = mask.view(-1, h, w)
    right = torch.zeros_like(m)
    right[:, :, :-1] = m[:, :, 1:]
    down = torch.zeros_like(m)
    down[:, :-1] = m[:, 1:]
    return float(((right | down) & m).sum() / m.sum())


def test_block_mask_exact_count_blocks_and_seed() -> None:
    """MaskFeat's block-wise masking: exactly round(ratio * N) per sample like the random
    sampler, reproducible under a seed, and made of blocks (masked patches have masked
    neighbours far more often than under uniform masking)."""
    from pathssl.augment.masking import block_patch_mask, patch_mask

    for grid, ratio in (((14, 14), 0.4), ((14, 14), 0.75), ((4, 4), 0.5), ((7, 9), 0.33)):
        g = torch.Generator().manual_seed(5)
        m = block_patch_mask(6, grid, ratio, g)
        assert m.shape == (6, grid[0] * grid[1]) and m.dtype == torch.bool
        assert m.sum(1).tolist() == [round(ratio * grid[0] * grid[1])] * 6
    a = patch_mask(8, (14, 14), 0.4, "block", torch.Generator().manual_seed(1))
    b = patch_mask(8, (14, 14), 0.4, "block", torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    blocks = block_patch_mask(64, (14, 14), 0.4, torch.Generator().manual_seed(2))
    uniform = patch_mask(64, (14, 14), 0.4, "random", torch.Generator().manual_seed(2))
    assert _neighbour_rate(blocks, 14, 14) > _neighbour_rate(uniform, 14, 14) + 0.2
    with pytest.raises(ValueError, match="mask mode must be"):
        patch_mask(1, (2, 2), 0.5, "stripes")


def test_maskfeat_recipe_masks_in_blocks_mae_uniformly() -> None:
    from pathssl.augment import build_recipe

    assert build_recipe("maskfeat").mask_mode == "block"
    assert build_recipe("mae").mask_mode == "random"
    x = torch.zeros(16, 3, 224, 224, dtype=torch.uint8)
    g = torch.Generator().manual_seed(0)
    feat = build_recipe("maskfeat").torch()(x, g)["patch_mask"]
    assert feat.sum(1).tolist() == [round(0.4 * 196)] * 16
    assert _neighbour_rate(feat, 14, 14) > 0.8
