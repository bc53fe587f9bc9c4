"""The jigsaw permutation set: greedy maximal minimum Hamming distance (Noroozi & Favaro 2016,
Algorithm 1), deterministic from a seed.

Greedy rule: start from one permutation of ``n_items``; repeatedly add the candidate (among all
``n_items!`` permutations) whose minimum Hamming distance to the chosen ones is largest; ties go
to the candidate that comes first in a seeded random order of all permutations (the seed also
picks the first permutation: the first of that order).

Vectorised (same result as recomputing every distance after each pick, checked in the tests
against that naive form): every candidate's minimum distance is kept exact, and a pick at level
``L`` (the current maximum) can only lower the candidates within distance ``< L`` of it. Those
are enumerated directly, ``p[sigma]`` for every ``sigma`` moving fewer than ``L`` items, and
found by their lexicographic key: a pick costs the size of that neighbourhood (37 permutations
of 9 items within distance 2, 6,883 within 5), not a pass over all ``n_items!``.
"""

from __future__ import annotations

import functools
import itertools

import numpy as np


def all_permutations(n_items: int, seed: int) -> np.ndarray:
    """Every permutation of ``range(n_items)`` ``(n_items!, n_items)`` uint8, in a random order
    drawn from ``seed``."""
    perms = _natural(n_items).astype(np.uint8)
    order = np.random.default_rng(seed).permutation(len(perms))
    return perms[order]


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamming distances ``(len(a), len(b))`` between rows of ``a`` ``(n, k)`` and ``b`` ``(m, k)``
    (in chunks of ``a``: memory stays ~64 MB)."""
    out = np.empty((len(a), len(b)), dtype=np.int16)
    step = max(1, (1 << 26) // max(1, len(b) * a.shape[1]))
    for i in range(0, len(a), step):
        out[i : i + step] = (a[i : i + step, None, :] != b[None, :, :]).sum(-1)
    return out


def maxmin_hamming_permutations(n_perms: int, n_items: int = 9, seed: int = 0) -> np.ndarray:
    """``n_perms`` permutations ``(n_perms, n_items)`` int64 chosen by greedy maximal minimum
    Hamming distance (see the module docstring), deterministic from ``seed`` (a fresh copy of a
    cached result)."""
    return _maxmin(n_perms, n_items, seed).copy()


@functools.lru_cache(maxsize=1)
def _natural(n_items: int) -> np.ndarray:
    """Every permutation of ``range(n_items)`` in lexicographic order ``(n_items!, n_items)``."""
    return np.array(list(itertools.permutations(range(n_items))), dtype=np.int64)


@functools.lru_cache(maxsize=8)
def _maxmin(n_perms: int, n_items: int, seed: int) -> np.ndarray:
    natural = _natural(n_items)
    total = len(natural)
    if not 1 <= n_perms <= total:
        raise ValueError(f"num_permutations must lie in [1, {total}], got {n_perms}")
    order = np.random.default_rng(seed).permutation(total)  # position -> natural rank
    where = np.empty(total, dtype=np.int64)  # natural rank -> position in the seeded order
    where[order] = np.arange(total)
    weights = n_items ** np.arange(n_items - 1, -1, -1, dtype=np.int64)
    keys = natural @ weights  # increasing: itertools yields lexicographic order
    moved = (natural != np.arange(n_items)).sum(1)
    # sigma with exactly k moved points: q = p[sigma] is at Hamming distance k from p
    sigmas = [natural[moved == k] for k in range(n_items + 1)]
    d = np.full(total, n_items + 1, dtype=np.int64)  # exact min distance to the chosen ones

    def take(pos: int, below: int) -> None:
        p = natural[order[pos]]
        for k in range(min(below, n_items + 1)):
            if len(sigmas[k]):
                near = where[np.searchsorted(keys, p[sigmas[k]] @ weights)]
                d[near] = np.minimum(d[near], k)
        d[pos] = -1

    chosen = [0]
    take(0, n_items + 1)
    while len(chosen) < n_perms:
        level = int(d.max())
        for pos in np.flatnonzero(d == level):  # seeded order: ties go to the first
            if len(chosen) == n_perms:
                break
            if d[pos] == level:  # still at the level after the picks before it
                chosen.append(int(pos))
                take(int(pos), level)
    return natural[order[np.array(chosen)]]


def naive_maxmin_hamming(n_perms: int, n_items: int = 9, seed: int = 0) -> np.ndarray:
    """Reference for the tests: the same greedy rule, every distance recomputed after each pick."""
    perms = all_permutations(n_items, seed)
    chosen = [0]
    d = (perms != perms[0]).sum(1)
    d[0] = -1
    while len(chosen) < n_perms:
        pick = int(np.argmax(d))  # first index of the maximum: the seeded tie-break
        chosen.append(pick)
        d = np.minimum(d, (perms != perms[pick]).sum(1))
        d[np.array(chosen)] = -1
    return perms[np.array(chosen)].astype(np.int64)
