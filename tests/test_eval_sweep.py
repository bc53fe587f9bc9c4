"""The one label-fraction sweep (``pathssl.data.sweep``): exact per-stratum counts against a hand
count, nested and reproducible subsets, uniform draws, the (fraction, seed) cells, mean +- sd
against ``statistics``; and the nuclei label-efficiency subsets drawn through it."""

from __future__ import annotations

import dataclasses
import math
import statistics
from pathlib import Path

import numpy as np
import pytest

from pathssl.data.sweep import (
    check_fractions,
    fraction_subset,
    mean_sd,
    per_stratum_count,
    sweep_cells,
)

# class sizes of the demo's hgsc_nest training crops (connective, inflammatory, neoplastic)
SIZES = (128, 431, 158)
# by hand: ceil(1.28)=2, ceil(4.31)=5, ceil(1.58)=2; ceil(12.8)=13, ceil(43.1)=44, ceil(15.8)=16
HAND = {0.01: (2, 5, 2), 0.1: (13, 44, 16), 1.0: SIZES}


def _labels(seed: int = 7) -> np.ndarray:
    labels = np.repeat(np.arange(3), SIZES)
    return np.random.default_rng(seed).permutation(labels)


def test_per_class_counts_equal_a_hand_count() -> None:
    y = _labels()
    for fraction, expected in HAND.items():
        for seed in (0, 1, 5):
            idx = fraction_subset(y, fraction, seed)
            assert tuple(int((y[idx] == c).sum()) for c in range(3)) == expected
            assert np.all(np.diff(idx) > 0)  # sorted, no repeats


def test_counts_round_up_but_not_float_noise() -> None:
    assert per_stratum_count(30, 0.1) == 3  # 0.1 * 30 = 3.0000000000000004 in floating point
    assert per_stratum_count(5, 0.01) == 1  # never an empty class
    assert per_stratum_count(0, 0.5) == 0
    assert per_stratum_count(7, 1.0) == 7
    y = np.array(["b"] * 30 + ["a"] * 3)  # any labels, not only class indices
    idx = fraction_subset(y, 0.1, 0)
    assert sorted(y[idx].tolist()) == ["a"] + ["b"] * 3


def test_subsets_are_nested_and_reproducible() -> None:
    y = _labels()
    for seed in range(4):
        small, mid, full = (set(fraction_subset(y, f, seed).tolist()) for f in (0.01, 0.1, 1.0))
        assert small < mid < full == set(range(y.size))
        np.testing.assert_array_equal(fraction_subset(y, 0.1, seed), fraction_subset(y, 0.1, seed))
    assert not np.array_equal(fraction_subset(y, 0.1, 0), fraction_subset(y, 0.1, 1))


def test_draws_are_uniform_within_a_class() -> None:
    """Over 3,000 seeds each of 10 items is kept with probability 3/10 (not the first 3):
    counts within 5 binomial standard deviations of 900."""
    y = np.zeros(10, dtype=np.int64)
    hits = np.zeros(10)
    for seed in range(3000):
        hits[fraction_subset(y, 0.3, seed)] += 1
    sd = math.sqrt(3000 * 0.3 * 0.7)
    assert np.all(np.abs(hits - 900) < 5 * sd), hits


def test_sweep_cells() -> None:
    assert sweep_cells([1.0, 0.1], [0, 1]) == [(0.1, 0), (0.1, 1), (1.0, 0)]
    assert sweep_cells([0.1, 1.0], [3, 4], repeat_full=True) == [
        (0.1, 3),
        (0.1, 4),
        (1.0, 3),
        (1.0, 4),
    ]
    with pytest.raises(ValueError, match="repeat"):
        sweep_cells([0.1], [0, 0])
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        check_fractions([0.0, 0.5])
    with pytest.raises(ValueError, match="repeat"):
        check_fractions([0.5, 0.5])
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        fraction_subset([0, 1], 1.5, 0)


def test_mean_sd_against_statistics() -> None:
    values = [0.61, 0.58, 0.66]
    got = mean_sd(values)
    assert got["n"] == 3
    assert got["mean"] == pytest.approx(statistics.mean(values))
    assert got["sd"] == pytest.approx(statistics.stdev(values))
    assert mean_sd([0.5, None, float("nan")]) == {"mean": 0.5, "sd": None, "n": 1}
    assert mean_sd([]) == {"mean": None, "sd": None, "n": 0}


def test_nuclei_label_tiles_are_drawn_by_the_sweep(data_dir: Path) -> None:
    """``label_efficiency.sweep_subset`` on real labels: hgsc_nest's top 768 x 1,280 px as
    source "a" and the 512 x 512 px below as source "b", 256 px tiles: a has 3 x 5 = 15 tiles,
    b 2 x 2 = 4 (counted by hand); each source keeps ceil(fraction * n) of them, nested."""
    from pathssl.nuclei.data import load_npz_pair
    from pathssl.nuclei.label_efficiency import sweep_subset

    nuc = data_dir / "nuclei"
    li = load_npz_pair(
        nuc / "hgsc_nest.jpg", nuc / "hgsc_nest_inst_mask.npz", nuc / "hgsc_nest_type_mask.npz"
    )
    a = dataclasses.replace(li.region(0, 0, 1280, 768), name="a", source="a")
    b = dataclasses.replace(li.region(0, 768, 512, 512), name="b", source="b")
    for f, (na, nb) in {0.1: (2, 1), 0.3: (5, 2), 0.5: (8, 2), 1.0: (15, 4)}.items():
        tiles = sweep_subset([a, b], f, 256, seed=3)
        assert [t.source for t in tiles].count("a") == na
        assert [t.source for t in tiles].count("b") == nb
        assert all(t.image.shape[:2] == (256, 256) for t in tiles)
    small = {(t.source, t.origin) for t in sweep_subset([a, b], 0.3, 256, seed=3)}
    large = {(t.source, t.origin) for t in sweep_subset([a, b], 0.5, 256, seed=3)}
    assert small < large
    other = {(t.source, t.origin) for t in sweep_subset([a, b], 0.3, 256, seed=4)}
    assert other != small
