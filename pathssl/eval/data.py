"""Labelled tiles for evaluation: three input layouts, a stratified split, a torch dataset.

Layouts (each gives a :class:`LabelledTiles`):

* :func:`image_folder` -- ImageFolder: ``root/<class name>/<image>``, classes sorted by name;
* :func:`csv_images` -- a CSV with a header, one row per image: a path column (relative to the
  CSV's folder unless ``root`` is given) and a label column;
* :func:`store_tiles` -- a ``pathssl tile`` store plus a CSV of ``index,label`` rows.

Class names are sorted strings unless ``class_names`` fixes the order; rows with an empty label
are skipped. Images are read with OpenCV, converted to RGB and resized to ``size x size``.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor
from torch.utils.data import Dataset

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")


@dataclass(frozen=True)
class LabelledTiles:
    """``sources`` (image paths, or tile indices of ``store``), ``labels (N,)`` int64 indices
    into ``class_names``."""

    sources: Sequence[Path | int]
    labels: NDArray[np.int64]
    class_names: list[str]
    store: Path | None = None

    def __len__(self) -> int:
        return len(self.sources)

    def subset(self, index: Sequence[int] | NDArray[np.int64]) -> LabelledTiles:
        src = [self.sources[int(i)] for i in index]
        return LabelledTiles(
            src, self.labels[np.asarray(index, dtype=np.int64)], self.class_names, self.store
        )


def _encode(
    names: list[str], class_names: Sequence[str] | None
) -> tuple[NDArray[np.int64], list[str]]:
    classes = list(class_names) if class_names is not None else sorted(set(names))
    lookup = {c: k for k, c in enumerate(classes)}
    unknown = sorted(set(names) - set(lookup))
    if unknown:
        raise ValueError(f"labels {unknown} are not in class_names {classes}")
    return np.array([lookup[n] for n in names], dtype=np.int64), classes


def image_folder(root: str | Path, class_names: Sequence[str] | None = None) -> LabelledTiles:
    """ImageFolder layout: one sub-folder per class."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} not found")
    paths: list[Path] = []
    names: list[str] = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        for f in sorted(sub.iterdir()):
            if f.suffix.lower() in IMAGE_SUFFIXES:
                paths.append(f)
                names.append(sub.name)
    if not paths:
        raise ValueError(f"no images in class folders under {root}")
    labels, classes = _encode(names, class_names)
    return LabelledTiles(paths, labels, classes)


def _read_rows(path: Path, key_column: str, label_column: str) -> list[tuple[str, str]]:
    if not path.is_file():
        raise FileNotFoundError(f"label CSV {path} not found")
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        fields = reader.fieldnames or []
        for col in (key_column, label_column):
            if col not in fields:
                raise ValueError(f"{path}: no column {col!r} (columns: {fields})")
        rows = [(r[key_column].strip(), (r[label_column] or "").strip()) for r in reader]
    return [(k, v) for k, v in rows if k and v]


def csv_images(
    csv_path: str | Path,
    path_column: str = "path",
    label_column: str = "label",
    root: str | Path | None = None,
    class_names: Sequence[str] | None = None,
) -> LabelledTiles:
    """A CSV of ``path,label`` rows (column names configurable)."""
    csv_path = Path(csv_path)
    base = Path(root) if root is not None else csv_path.parent
    rows = _read_rows(csv_path, path_column, label_column)
    paths = [base / p for p in (r[0] for r in rows)]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} images listed in {csv_path} not found, e.g. {missing[0]}"
        )
    labels, classes = _encode([r[1] for r in rows], class_names)
    return LabelledTiles(paths, labels, classes)


def store_tiles(
    store: str | Path,
    labels_csv: str | Path,
    index_column: str = "index",
    label_column: str = "label",
    class_names: Sequence[str] | None = None,
) -> LabelledTiles:
    """Tiles of a tile store selected and labelled by a CSV of ``index,label`` rows."""
    from tiling.store import open_store

    store = Path(store)
    n = len(open_store(store))
    rows = _read_rows(Path(labels_csv), index_column, label_column)
    index = [int(r[0]) for r in rows]
    bad = [i for i in index if not 0 <= i < n]
    if bad:
        raise ValueError(f"tile indices {bad[:5]} out of range for {store} ({n} tiles)")
    labels, classes = _encode([r[1] for r in rows], class_names)
    return LabelledTiles(index, labels, classes, store)


def stratified_split(
    labels: NDArray[np.int64], test_fraction: float, seed: int = 0
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """``(train, test)`` indices with about ``test_fraction`` of each class in test (at least one
    test and one train item for every class with two or more items)."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = 0 if idx.size < 2 else min(idx.size - 1, max(1, round(idx.size * test_fraction)))
        test.extend(idx[:n_test].tolist())
        train.extend(idx[n_test:].tolist())
    return np.sort(np.array(train, dtype=np.int64)), np.sort(np.array(test, dtype=np.int64))


def _resize(img: NDArray[np.uint8], size: int) -> NDArray[np.uint8]:
    if img.shape[0] == size and img.shape[1] == size:
        return img
    shrink = img.shape[0] > size or img.shape[1] > size
    interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return np.asarray(cv2.resize(img, (size, size), interpolation=interp), dtype=np.uint8)


class TileImages(Dataset[tuple[Tensor, int]]):
    """Items ``((3, size, size) uint8 RGB tensor, label)`` of a :class:`LabelledTiles`."""

    def __init__(self, tiles: LabelledTiles, size: int = 224) -> None:
        self.tiles = tiles
        self.size = size
        self._store = None
        if tiles.store is not None:
            from tiling.store import open_store

            self._store = open_store(tiles.store)

    def __len__(self) -> int:
        return len(self.tiles)

    def image(self, i: int) -> NDArray[np.uint8]:
        """Tile ``i`` as ``(H, W, 3)`` uint8 RGB at its stored size."""
        src = self.tiles.sources[i]
        if self._store is not None:
            assert isinstance(src, int)
            return np.asarray(self._store[src], dtype=np.uint8)
        bgr = cv2.imread(str(src), cv2.IMREAD_COLOR)
        if bgr is None:
            raise OSError(f"cannot read image {src}")
        return np.asarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), dtype=np.uint8)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        img = _resize(self.image(i), self.size)
        return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))), int(
            self.tiles.labels[i]
        )
