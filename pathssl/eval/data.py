"""Labelled tiles for evaluation: three input layouts, a stratified split, a torch dataset.

Layouts (each gives a :class:`LabelledTiles`):

* :func:`image_folder` -- ImageFolder: ``root/<class name>/<image>``, classes sorted by name;
* :func:`csv_images` -- a CSV with a header, one row per image: a path column (relative to the
  CSV's folder unless ``root`` is given) and a label column;
* :func:`store_tiles` -- a ``pathssl tile`` store plus a CSV of ``index,label`` rows.

Class names are sorted strings unless ``class_names`` fixes the order; rows with an empty label
are skipped. Images are read as RGB by the package's one reader
(:func:`pathssl.data.images.read_rgb`) and resized to ``size x size``.

Resolution: a :class:`LabelledTiles` carries its ``mpp`` (a tile store records it; folders and
CSVs take it as an argument, e.g. from a config). :class:`TileImages` given the encoder's
``target_mpp`` resamples tiles whose mpp differs from it by more than 10 % (then centre-crops, or
reflect-pads, to ``size``) and says so; tiles with no mpp are taken at the encoder's.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor
from torch.utils.data import Dataset

from pathssl.data.images import read_rgb

if TYPE_CHECKING:
    from pathssl.eval.config import DataConfig, SourceConfig

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")


@dataclass(frozen=True)
class LabelledTiles:
    """``sources`` (image paths, or tile indices of ``store``), ``labels (N,)`` int64 indices
    into ``class_names``."""

    sources: Sequence[Path | int]
    labels: NDArray[np.int64]
    class_names: list[str]
    store: Path | None = None
    mpp: float | None = None  # micrometres per pixel of the images (None: not known)
    groups: tuple[str, ...] | None = None  # the patient or slide of each tile (None: not known)

    def __len__(self) -> int:
        return len(self.sources)

    def subset(self, index: Sequence[int] | NDArray[np.int64]) -> LabelledTiles:
        src = [self.sources[int(i)] for i in index]
        labels = self.labels[np.asarray(index, dtype=np.int64)]
        groups = None if self.groups is None else tuple(self.groups[int(i)] for i in index)
        return LabelledTiles(src, labels, self.class_names, self.store, self.mpp, groups)


def _encode(
    names: list[str], class_names: Sequence[str] | None
) -> tuple[NDArray[np.int64], list[str]]:
    classes = list(class_names) if class_names is not None else sorted(set(names))
    lookup = {c: k for k, c in enumerate(classes)}
    unknown = sorted(set(names) - set(lookup))
    if unknown:
        raise ValueError(f"labels {unknown} are not in class_names {classes}")
    return np.array([lookup[n] for n in names], dtype=np.int64), classes


def image_folder(
    root: str | Path, class_names: Sequence[str] | None = None, mpp: float | None = None
) -> LabelledTiles:
    """ImageFolder layout: one sub-folder per class; images at ``mpp`` (None: not known)."""
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
    return LabelledTiles(paths, labels, classes, mpp=mpp)


def _read_rows(
    path: Path, key_column: str, label_column: str, group_column: str = ""
) -> list[tuple[str, str, str]]:
    """``(key, label, group)`` of every row with a key and a label (group "" without
    ``group_column``; a row without a group is an error)."""
    if not path.is_file():
        raise FileNotFoundError(f"label CSV {path} not found")
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        fields = reader.fieldnames or []
        for col in (key_column, label_column, group_column):
            if col and col not in fields:
                raise ValueError(f"{path}: no column {col!r} (columns: {fields})")
        rows = [
            (
                r[key_column].strip(),
                (r[label_column] or "").strip(),
                (r[group_column] or "").strip() if group_column else "",
            )
            for r in reader
        ]
    rows = [r for r in rows if r[0] and r[1]]
    if group_column and (empty := [r[0] for r in rows if not r[2]]):
        raise ValueError(f"{path}: {len(empty)} rows have no {group_column!r}, e.g. {empty[0]}")
    return rows


def _groups(rows: list[tuple[str, str, str]], group_column: str) -> tuple[str, ...] | None:
    return tuple(r[2] for r in rows) if group_column else None


def csv_images(
    csv_path: str | Path,
    path_column: str = "path",
    label_column: str = "label",
    root: str | Path | None = None,
    class_names: Sequence[str] | None = None,
    mpp: float | None = None,
    group_column: str = "",
) -> LabelledTiles:
    """A CSV of ``path,label`` rows (column names configurable); images at ``mpp``;
    ``group_column``: the patient or slide of each image (splits keep groups whole)."""
    csv_path = Path(csv_path)
    base = Path(root) if root is not None else csv_path.parent
    rows = _read_rows(csv_path, path_column, label_column, group_column)
    paths = [base / p for p in (r[0] for r in rows)]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} images listed in {csv_path} not found, e.g. {missing[0]}"
        )
    labels, classes = _encode([r[1] for r in rows], class_names)
    return LabelledTiles(paths, labels, classes, mpp=mpp, groups=_groups(rows, group_column))


def store_tiles(
    store: str | Path,
    labels_csv: str | Path,
    index_column: str = "index",
    label_column: str = "label",
    class_names: Sequence[str] | None = None,
    group_column: str = "",
) -> LabelledTiles:
    """Tiles of a tile store selected and labelled by a CSV of ``index,label`` rows, at the
    store's tile mpp; ``group_column``: the patient or slide of each tile."""
    from tiling.store import open_store

    store = Path(store)
    opened = open_store(store)
    n, mpp = len(opened), float(opened.mpp)
    rows = _read_rows(Path(labels_csv), index_column, label_column, group_column)
    index = [int(r[0]) for r in rows]
    bad = [i for i in index if not 0 <= i < n]
    if bad:
        raise ValueError(f"tile indices {bad[:5]} out of range for {store} ({n} tiles)")
    labels, classes = _encode([r[1] for r in rows], class_names)
    return LabelledTiles(index, labels, classes, store, mpp, _groups(rows, group_column))


def check_classes(
    labels: NDArray[np.int64],
    class_names: Sequence[str] | None = None,
    min_per_class: int = 2,
    where: str = "data.source: the labelled tiles",
) -> None:
    """Raise ``tiling.errors.UsageError`` unless ``labels`` hold at least two classes and every
    class present has at least ``min_per_class`` items (a split needs one on each side)."""
    from tiling.errors import UsageError

    values, counts = np.unique(np.asarray(labels), return_counts=True)

    def name(c: int) -> str:
        return repr(class_names[c]) if class_names is not None and c < len(class_names) else str(c)

    if values.size < 2:
        only = f"only class {name(int(values[0]))}" if values.size else "no labelled tile"
        raise UsageError(
            f"{where} have {only} ({int(counts.sum())} tiles); classification needs at least 2 "
            "classes: label tiles of two or more classes"
        )
    few = [f"{name(int(c))}: {int(n)}" for c, n in zip(values, counts, strict=True)]
    few = [f for f, n in zip(few, counts, strict=True) if n < min_per_class]
    if few:
        raise UsageError(
            f"{where}: classes with fewer than {min_per_class} tiles ({', '.join(few)}); a "
            "train/test split needs one tile of each class on each side: add tiles or drop "
            "those classes"
        )


def _resize(img: NDArray[np.uint8], size: int) -> NDArray[np.uint8]:
    if img.shape[0] == size and img.shape[1] == size:
        return img
    shrink = img.shape[0] > size or img.shape[1] > size
    interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return np.asarray(cv2.resize(img, (size, size), interpolation=interp), dtype=np.uint8)


def _at_mpp(img: NDArray[np.uint8], factor: float, size: int) -> NDArray[np.uint8]:
    """``img`` resampled by ``factor`` (new px per old px), then centre-cropped where it is
    larger than ``size`` and reflect-padded where it is smaller -> ``(size, size, 3)``."""
    from tiling.slide import resize_rgb

    h, w = img.shape[:2]
    img = resize_rgb(img, max(1, round(w * factor)), max(1, round(h * factor)))
    h, w = img.shape[:2]
    y, x = max(0, (h - size) // 2), max(0, (w - size) // 2)
    img = img[y : y + size, x : x + size]
    h, w = img.shape[:2]
    if (h, w) != (size, size):
        top, left = (size - h) // 2, (size - w) // 2
        pad = (top, size - h - top, left, size - w - left)
        img = np.asarray(cv2.copyMakeBorder(img, *pad, borderType=cv2.BORDER_REFLECT_101))
        if img.shape[:2] != (size, size):  # reflection needs 2+ px; tiny images are repeated
            img = np.asarray(cv2.resize(img, (size, size), interpolation=cv2.INTER_NEAREST))
    return np.ascontiguousarray(img, dtype=np.uint8)


def mpp_note(data_mpp: float | None, target_mpp: float, what: str = "tiles") -> tuple[float, str]:
    """(resample factor, one line for the user) for images at ``data_mpp`` read for a model at
    ``target_mpp``: factor 1 when the mpp is unknown or within 10 % of the target."""
    from tiling.slide import mpp_differs

    if data_mpp is None:
        return 1.0, f"{what}: no mpp recorded; taken at the encoder's {target_mpp:g} um/px"
    if mpp_differs(data_mpp, target_mpp):
        return data_mpp / target_mpp, (
            f"note: {what} at {data_mpp:g} um/px differ from the encoder's {target_mpp:g} um/px "
            f"by more than 10 %; resampled to {target_mpp:g} um/px"
        )
    return 1.0, f"{what}: read at {data_mpp:g} um/px (encoder {target_mpp:g} um/px)"


class TileImages(Dataset[tuple[Tensor, int]]):
    """Items ``((3, size, size) uint8 RGB tensor, label)`` of a :class:`LabelledTiles`.

    ``target_mpp``: the encoder's tile mpp. When the tiles' mpp is known and differs from it by
    more than 10 %, each tile is resampled to it (area when shrinking, linear when enlarging),
    then centre-cropped or reflect-padded to ``size``; otherwise tiles are resized to ``size`` as
    they are. ``log`` gets one line saying which (:func:`mpp_note`)."""

    def __init__(
        self,
        tiles: LabelledTiles,
        size: int = 224,
        target_mpp: float | None = None,
        log: Callable[[str], None] | None = print,
    ) -> None:
        self.tiles = tiles
        self.size = size
        self.factor = 1.0  # px at target_mpp per tile px
        if target_mpp is not None:
            self.factor, note = mpp_note(tiles.mpp, target_mpp)
            if log is not None:
                log(note)
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
        assert not isinstance(src, int)
        return read_rgb(src)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        img = self.image(i)
        img = (
            _resize(img, self.size) if self.factor == 1.0 else _at_mpp(img, self.factor, self.size)
        )
        return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))), int(
            self.tiles.labels[i]
        )


def source_tiles(spec: SourceConfig, class_names: list[str] | None) -> LabelledTiles:
    """The labelled tiles one ``data.source``/``data.test`` entry of an eval config names."""
    if spec.format == "folder":
        return image_folder(str(spec.root), class_names, mpp=spec.mpp)
    if spec.format == "csv":
        return csv_images(
            spec.csv,
            path_column=spec.path_column,
            label_column=spec.label_column,
            root=spec.root,
            class_names=class_names,
            mpp=spec.mpp,
            group_column=spec.group_column,
        )
    if spec.group_column and spec.format == "folder":
        raise ValueError("group_column needs a csv or store source (a folder has no columns)")
    return store_tiles(
        spec.store,
        spec.labels,
        index_column=spec.index_column,
        label_column=spec.label_column,
        class_names=class_names,
        group_column=spec.group_column,
    )


def labelled_splits(cfg: DataConfig) -> tuple[LabelledTiles, LabelledTiles]:
    """(train, test) labelled tiles of an eval config's ``data`` section: ``data.test`` when
    given (no group, i.e. patient or slide, on both sides), else a ``test_fraction`` split
    seeded by ``data.seed``: of whole groups when the source names them (``group_column``),
    stratified by class otherwise."""
    names = cfg.class_names
    if cfg.source is None:
        raise ValueError("data.source is required")
    train = source_tiles(cfg.source, names)
    if cfg.test is not None:
        test = source_tiles(cfg.test, names or train.class_names)
        if test.class_names != train.class_names:
            raise ValueError(
                f"train classes {train.class_names} differ from test classes "
                f"{test.class_names}; set data.class_names"
            )
        check_classes(train.labels, train.class_names)
        check_classes(test.labels, test.class_names, 1, where="data.test: the test tiles")
        if train.groups is not None and test.groups is not None:
            both = sorted(set(train.groups) & set(test.groups))
            if both:
                raise ValueError(
                    f"{len(both)} groups (patients/slides) are in both data.source and "
                    f"data.test, e.g. {both[0]!r}: hold whole groups apart"
                )
        return train, test
    from pathssl.eval.splits import group_split, stratified_split

    if train.groups is not None:
        tr, te = group_split(
            train.labels, train.groups, cfg.test_fraction, cfg.seed, train.class_names
        )
        return train.subset(tr), train.subset(te)
    tr, te = stratified_split(train.labels, cfg.test_fraction, cfg.seed, train.class_names)
    return train.subset(tr), train.subset(te)
