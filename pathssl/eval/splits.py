"""Train/test splits of labelled tiles: stratified by class, or holding whole groups (patients,
slides) apart when the source names them (``data.source.group_column``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from pathssl.eval.data import check_classes


def stratified_split(
    labels: NDArray[np.int64],
    test_fraction: float,
    seed: int = 0,
    class_names: Sequence[str] | None = None,
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """``(train, test)`` indices with about ``test_fraction`` of each class in test (at least one
    test and one train item for every class). Fewer than two classes, or a class with fewer
    than two items, is a ``UsageError`` (:func:`check_classes`)."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    check_classes(labels, class_names)
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = 0 if idx.size < 2 else min(idx.size - 1, max(1, round(idx.size * test_fraction)))
        test.extend(idx[:n_test].tolist())
        train.extend(idx[n_test:].tolist())
    return np.sort(np.array(train, dtype=np.int64)), np.sort(np.array(test, dtype=np.int64))


def group_split(
    labels: NDArray[np.int64],
    groups: Sequence[str],
    test_fraction: float,
    seed: int = 0,
    class_names: Sequence[str] | None = None,
    tries: int = 200,
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """``(train, test)`` indices holding whole groups (patients, slides) apart: groups in a
    seeded random order go to test until it holds ``test_fraction`` of the tiles. An order that
    leaves a class without a training or a test tile is redrawn (up to ``tries`` times, then a
    ``ValueError`` naming the class counts)."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    check_classes(labels, class_names)
    keys = np.asarray(groups)
    names = np.unique(keys)
    if names.size < 2:
        raise ValueError(f"one group ({names[0]!r}) only: a split by group needs two or more")
    sizes = {g: int((keys == g).sum()) for g in names}
    want = test_fraction * labels.size
    classes = np.unique(labels)
    for attempt in range(tries):
        order = np.random.default_rng([seed, attempt]).permutation(names)
        test_groups: list[str] = []
        total = 0
        for g in order[:-1]:  # at least one group trains
            if total >= want:
                break
            test_groups.append(str(g))
            total += sizes[str(g)]
        is_test = np.isin(keys, test_groups)
        if all((labels[is_test] == c).any() and (labels[~is_test] == c).any() for c in classes):
            return np.flatnonzero(~is_test).astype(np.int64), np.flatnonzero(is_test)
    raise ValueError(
        f"no split of {names.size} groups gives every class a training and a test tile "
        f"({tries} tries); set data.test to a separate source"
    )
