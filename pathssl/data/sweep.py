"""The package's one label-fraction sweep: stratified, seeded, nested subsets of the training
labels, several seeds per fraction, summarised as mean +- sd.

Label-efficiency studies (Kang et al. 2023, "Benchmarking self-supervised learning on diverse
pathology datasets", 1 % / 10 % / 100 % of the labels; Ericsson et al. 2021) train on a fraction
of the labelled set and report the mean and spread over several draws. Here:

* :func:`fraction_subset` keeps, of each stratum (a class for tiles, a source for nuclei label
  tiles), ``ceil(fraction * n)`` items, at least one; the items are the first of a permutation
  seeded by ``(seed, rank of the stratum)``, so for one seed 1 % is inside 10 % is inside
  100 %, and a stratum's draw depends only on the seed, its rank and its size;
* :func:`sweep_cells` lists the (fraction, seed) runs: every seed of each fraction below 1, and
  at fraction 1 (the same subset for every seed) one run unless ``repeat_full`` (training that
  is itself seeded, e.g. fine-tuning or the nuclei head);
* :func:`mean_sd` summarises one metric over seeds (sample standard deviation, ``ddof=1``).

``pathssl eval``'s benchmark (:mod:`pathssl.eval.benchmark`) and ``pathssl nuclei
label-efficiency`` (:mod:`pathssl.nuclei.label_efficiency`) both draw their subsets here.
Numpy only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["check_fractions", "fraction_subset", "mean_sd", "per_stratum_count", "sweep_cells"]


def check_fractions(fractions: Sequence[float]) -> list[float]:
    """``fractions`` sorted, each in (0, 1], no repeats; ``ValueError`` otherwise."""
    values = sorted(float(f) for f in fractions)
    if not values:
        raise ValueError("give at least one label fraction")
    bad = [f for f in values if not 0.0 < f <= 1.0]
    if bad:
        raise ValueError(f"label fractions must be in (0, 1], got {bad}")
    if len(set(values)) != len(values):
        raise ValueError(f"label fractions repeat: {values}")
    return values


def per_stratum_count(n: int, fraction: float) -> int:
    """Items kept of a stratum of ``n``: ``ceil(fraction * n)``, at least 1 (0 when ``n`` is
    0). The product is rounded to 9 decimals first, so 0.1 * 30 keeps 3, not 4."""
    if n <= 0:
        return 0
    return min(n, max(1, math.ceil(round(fraction * n, 9))))


def fraction_subset(strata: ArrayLike, fraction: float, seed: int = 0) -> NDArray[np.int64]:
    """Sorted indices into ``strata`` ``(N,)`` (class indices or any hashable labels) keeping
    :func:`per_stratum_count` items of each stratum, drawn by a permutation seeded by
    ``(seed, stratum rank)``: nested in ``fraction`` for a fixed seed, reproducible."""
    (frac,) = check_fractions([fraction])
    keys = np.asarray(strata)
    if keys.ndim != 1:
        raise ValueError(f"strata must be (N,), got shape {keys.shape}")
    keep: list[NDArray[np.int64]] = []
    for rank, value in enumerate(np.unique(keys)):
        idx = np.flatnonzero(keys == value)
        order = np.random.default_rng([seed, rank]).permutation(idx.size)
        keep.append(idx[order[: per_stratum_count(idx.size, frac)]])
    if not keep:
        return np.zeros(0, dtype=np.int64)
    return np.sort(np.concatenate(keep)).astype(np.int64)


def sweep_cells(
    fractions: Sequence[float], seeds: Sequence[int], repeat_full: bool = False
) -> list[tuple[float, int]]:
    """The ``(fraction, seed)`` runs of a sweep, fractions ascending: each seed for fractions
    below 1; at 1 only the first seed unless ``repeat_full`` (the subset is then the whole set
    for every seed, so only seeded training makes the runs differ)."""
    if not seeds:
        raise ValueError("give at least one seed")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds repeat: {list(seeds)}")
    cells = []
    for f in check_fractions(fractions):
        for s in seeds if (f < 1.0 or repeat_full) else seeds[:1]:
            cells.append((f, int(s)))
    return cells


def mean_sd(values: Sequence[float | None]) -> dict[str, Any]:
    """``{"mean", "sd", "n"}`` of the finite ``values`` (``sd``: sample standard deviation,
    None with fewer than two values; ``mean`` None with none)."""
    arr = np.array([v for v in values if v is not None], dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    return {
        "mean": float(arr.mean()) if arr.size else None,
        "sd": float(arr.std(ddof=1)) if arr.size > 1 else None,
        "n": int(arr.size),
    }
