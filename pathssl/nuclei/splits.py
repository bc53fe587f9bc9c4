"""Which labelled images train and which are held apart: loading a nuclei config's data, splits
that never share an image (or pixels of one image) between training and validation, and nested
label-fraction subsets for label-efficiency runs.

With ``data.sources`` (:mod:`pathssl.nuclei.sources`) each source holds WHOLE images apart, by
image name, organ or patient (:func:`held_apart`); :func:`check_held_apart` verifies that no image
(by source and name, or by its pixels) is on both sides."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from pathssl.nuclei.config import DataConfig
from pathssl.nuclei.data import (
    ImageSet,
    LabelledImage,
    PanNukeFold,
    image_keys,
    joined,
    load_mat_folder,
    load_mat_image,
    load_npz_pair,
    resample,
)
from pathssl.nuclei.sources import NOT_STATED, read_source, source_record
from tiling.slide import mpp_differs

Images = Sequence[LabelledImage]
Log = Callable[[str], None] | None


@dataclass
class TrainingData:
    """Training and held-apart images (at the model's mpp when one was asked for) and the
    record of each source (:func:`pathssl.nuclei.sources.source_record`)."""

    train: Images
    val: Images
    sources: list[dict[str, Any]] = field(default_factory=list)


def load_data(
    cfg: DataConfig, target_mpp: float | None = None, log: Log = print
) -> tuple[Images, Images]:
    """(training images, held-apart validation images) as the config describes (see
    :class:`~pathssl.nuclei.config.DataConfig`); no pixel is in both. PanNuke folds stay lazy
    (:class:`~pathssl.nuclei.data.PanNukeFold`).

    Images carry their mpp (the file's or the config's). With ``target_mpp`` (the model's),
    images whose mpp differs from it by more than 10 % are resampled to it
    (:func:`~pathssl.nuclei.data.resample`; regions are cut first, in the file's pixels) and one
    note naming both values goes to ``log``; images without an mpp are then an error naming the
    file and ``data.mpp``."""
    data = load_training_data(cfg, target_mpp, log)
    return data.train, data.val


def load_training_data(
    cfg: DataConfig, target_mpp: float | None = None, log: Log = print
) -> TrainingData:
    """:func:`load_data` with the record of each source (what ``nuclei.pt`` stores)."""
    if cfg.sources:
        return _load_sources(cfg, target_mpp, log)
    train, val = _load(cfg)
    record = {
        "name": cfg.format,
        "format": cfg.format,
        "path": cfg.folder or cfg.image,
        "licence": NOT_STATED,
        "mpp": [] if cfg.mpp is None else [cfg.mpp],
        "mpp_config": cfg.mpp,
        "train_images": [n for _, n in image_keys(train)],
        "held_apart_images": [n for _, n in image_keys(val)],
        "regions": {"train": cfg.train_region, "val": cfg.val_region},
    }
    if target_mpp is None:
        return TrainingData(train, val, [record])
    name = cfg.folder or cfg.image or cfg.format
    notes: list[str] = []
    train = _at_mpp(train, target_mpp, name, notes)
    val = _at_mpp(val, target_mpp, name, notes)
    _note(notes, name, "data.mpp", target_mpp, log)
    return TrainingData(train, val, [record])


def _note(notes: list[str], name: str, option: str, target_mpp: float, log: Log) -> None:
    if notes and log is not None:
        log(
            f"note: {name}: images at {', '.join(sorted(set(notes)))} um/px ({option}) differ "
            f"from the model's {target_mpp:g} um/px by more than 10 %; resampled to "
            f"{target_mpp:g} um/px"
        )


def _load_sources(cfg: DataConfig, target_mpp: float | None, log: Log) -> TrainingData:
    """Each source read, split by whole images, checked, then resampled to ``target_mpp``."""
    trains, vals, records = [], [], []
    for name, src in cfg.sources.items():
        where = f"data.sources.{name}"
        images = read_source(name, src, log)
        n_types = images.num_types if isinstance(images, PanNukeFold) else _max_type(images)
        if n_types > len(cfg.type_names):
            raise ValueError(
                f"{where}: labels hold type ids up to {n_types} but data.type_names has "
                f"{len(cfg.type_names)} names (set {where}.type_map to map them)"
            )
        groups = image_groups(images, src.split, where)
        held = held_apart(groups, src.val, src.val_fraction, cfg.seed, f"{where}.val")
        train, val = _take(images, ~held), _take(images, held)
        check_held_apart(train, val)
        records.append(source_record(name, src, train, val))
        if log is not None:
            log(
                f"{where}: {len(train)} training / {len(val)} held-apart images (whole "
                f"images, by {src.split}); licence: {records[-1]['licence']}"
            )
        if target_mpp is not None:
            notes: list[str] = []
            train = _at_mpp(train, target_mpp, where, notes)
            val = _at_mpp(val, target_mpp, where, notes)
            _note(notes, where, "from the files or the source's mpp", target_mpp, log)
        trains.append(train)
        vals.append(val)
    train_all, val_all = joined(trains), joined(vals)
    if not len(train_all):
        raise ValueError("data.sources: every image is held apart; nothing left to train on")
    check_held_apart(train_all, val_all)
    return TrainingData(train_all, val_all, records)


def _max_type(images: Images) -> int:
    return max((int(im.types.max()) for im in images), default=0)


def image_groups(images: Images, by: str, where: str) -> list[str]:
    """The group of each image that a split keeps together: its name, organ or patient."""
    if isinstance(images, PanNukeFold):
        if by == "image":
            return [n for _, n in images.source_names()]
        if by == "organ":
            return [images.tissue(i) for i in range(len(images))]
        raise ValueError(
            f"{where}.split: a PanNuke fold records no patients; split by image or organ"
        )
    attr = {"image": "name", "organ": "tissue", "patient": "patient"}[by]
    groups = [str(getattr(im, attr)) for im in images]
    if not all(groups):
        fix = f"set {where}.organ or split by image" if by == "organ" else "split by image"
        raise ValueError(f"{where}: some images have no {by}; {fix}")
    return groups


def held_apart(
    groups: Sequence[str], val: Sequence[str], fraction: float, seed: int, where: str
) -> NDArray[np.bool_]:
    """Which images are held apart: those whose group is listed in ``val`` (each listed group
    must exist), else a seeded ``fraction`` of the groups (at least one when ``fraction`` > 0)."""
    names = sorted(set(groups))
    if val:
        unknown = [v for v in val if v not in names]
        if unknown:
            raise ValueError(f"{where}: {unknown} not found; the groups are: {', '.join(names)}")
        chosen = set(val)
    elif fraction > 0:
        k = min(len(names), max(1, round(fraction * len(names))))
        chosen = {names[i] for i in np.random.default_rng(seed).permutation(len(names))[:k]}
    else:
        chosen = set()
    return np.array([g in chosen for g in groups], bool)


def _take(images: Images, keep: NDArray[np.bool_]) -> Images:
    positions = np.flatnonzero(keep).tolist()
    if isinstance(images, PanNukeFold):
        return images.subset(positions)
    return [images[i] for i in positions]


def check_held_apart(train: Images, val: Images) -> None:
    """Raise if an image is on both sides: the same (source, name), or (images in memory) the
    same pixels, e.g. one file listed by two sources. Splits by whole images keep every crop
    of an image on its image's side."""
    both = sorted(set(image_keys(train)) & set(image_keys(val)))
    if both:
        raise ValueError(f"held-apart images also train: {[f'{s}/{n}' for s, n in both][:5]}")
    seen = {_digest(im): im for im in _in_memory(train)}
    for im in _in_memory(val):
        if (other := seen.get(_digest(im))) is not None:
            raise ValueError(
                f"held-apart image {im.source}/{im.name} has the pixels of training image "
                f"{other.source}/{other.name}"
            )


def _in_memory(images: Images) -> list[LabelledImage]:
    """The images held in memory (lazy folds are not read; their keys are checked)."""
    if isinstance(images, PanNukeFold):
        return []
    if isinstance(images, ImageSet):
        return [im for part in images.parts for im in _in_memory(part)]
    return list(images)


def _digest(im: LabelledImage) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(im.image).tobytes(), digest_size=16).digest()


def _at_mpp(images: Images, target_mpp: float, name: str, notes: list[str]) -> Images:
    """``images`` at ``target_mpp`` (see :func:`load_data`); appends each resampled mpp."""
    if isinstance(images, PanNukeFold):
        if images.mpp is None:
            raise ValueError(_no_mpp(name))
        if not mpp_differs(images.mpp, target_mpp):
            return images
        notes.append(f"{images.mpp:g}")
        return images.at_mpp(target_mpp)
    out = []
    for im in images:
        if im.mpp is None:
            raise ValueError(_no_mpp(name))
        if mpp_differs(im.mpp, target_mpp):
            notes.append(f"{im.mpp:g}")
            im = resample(im, target_mpp)
        out.append(im)
    return out


def _no_mpp(name: str) -> str:
    return (
        f"training data {name}: no pixel size (mpp) recorded; set data.mpp to its micrometres "
        "per pixel (e.g. data.mpp=0.25 for 40x, 0.5 for 20x)"
    )


def _load(cfg: DataConfig) -> tuple[Images, Images]:
    """The images and held-apart images of a config, at their own mpp (``data.mpp``)."""
    mpp: float | None = cfg.mpp
    if cfg.format not in ("pannuke", "npz", "mat"):
        raise ValueError(f"data.format must be npz, pannuke or mat, got {cfg.format!r}")
    if cfg.format == "pannuke":
        fold = PanNukeFold(cfg.folder, cfg.limit, type_lut=cfg.type_lut, mpp=mpp)
        _check_n_types(fold.num_types, cfg)
        if cfg.val_folder:
            val_fold = PanNukeFold(cfg.val_folder, cfg.limit, type_lut=cfg.type_lut, mpp=mpp)
            _check_n_types(val_fold.num_types, cfg)
            return fold, val_fold
        tissues = [fold.tissue(i) for i in range(len(fold))]
        tr, va = split_indices(tissues, cfg.val_fraction, cfg.seed)
        return fold.subset(tr), fold.subset(va)
    if cfg.format == "mat" and cfg.folder:
        folder = load_mat_folder(cfg.folder, cfg.limit, mpp)
        images = [_map_types(im, cfg.type_lut) for im in folder]
        _check_types(images, cfg)
        if cfg.val_folder:
            val_folder = load_mat_folder(cfg.val_folder, cfg.limit, mpp)
            val = [_map_types(im, cfg.type_lut) for im in val_folder]
            _check_types(val, cfg)
            return images, val
        return split_images(images, cfg.val_fraction, cfg.seed)
    if cfg.format == "npz":
        full = load_npz_pair(cfg.image, cfg.inst, cfg.types or None, mpp=mpp)
    else:
        full = load_mat_image(cfg.image, cfg.labels, mpp)
    full = _map_types(full, cfg.type_lut)
    _check_types([full], cfg)
    if cfg.val_region and not cfg.train_region:
        raise ValueError(
            "data.val_region needs data.train_region too: without it the whole image, "
            "validation region included, would be trained on"
        )
    if cfg.train_region and cfg.val_region and _overlap(cfg.train_region, cfg.val_region):
        raise ValueError(
            f"data.train_region {cfg.train_region} overlaps data.val_region {cfg.val_region}"
        )
    train = full.region(*cfg.train_region) if cfg.train_region else full
    val = [full.region(*cfg.val_region)] if cfg.val_region else []
    return [train], val


def _overlap(a: list[int], b: list[int]) -> bool:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    return ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah


def _check_types(images: Sequence[LabelledImage], cfg: DataConfig) -> None:
    _check_n_types(max(int(im.types.max()) for im in images), cfg)


def _check_n_types(n_types: int, cfg: DataConfig) -> None:
    if n_types > len(cfg.type_names):
        raise ValueError(
            f"labels hold type ids up to {n_types} but data.type_names has "
            f"{len(cfg.type_names)} names (set data.type_lut to merge types)"
        )


def split_indices(
    tissues: Sequence[str], fraction: float, seed: int = 0
) -> tuple[list[int], list[int]]:
    """(train, validation) positions: ``fraction`` of the images of each tissue (one group when
    the names are empty) held apart, drawn with a seeded shuffle; order kept within each part."""
    if not 0 <= fraction < 1:
        raise ValueError(f"data.val_fraction must be in [0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    val: set[int] = set()
    for tissue in sorted(set(tissues)):
        idx = [i for i, t in enumerate(tissues) if t == tissue]
        val.update(rng.permutation(idx)[: int(round(fraction * len(idx)))].tolist())
    return [i for i in range(len(tissues)) if i not in val], sorted(val)


def split_images(
    images: list[LabelledImage], fraction: float, seed: int = 0
) -> tuple[list[LabelledImage], list[LabelledImage]]:
    """:func:`split_indices` by ``LabelledImage.tissue``, applied to a list of images."""
    tr, va = split_indices([im.tissue for im in images], fraction, seed)
    return [images[i] for i in tr], [images[i] for i in va]


def _map_types(im: LabelledImage, lut: list[int] | None) -> LabelledImage:
    if lut is None:
        return im
    return im.with_types(np.asarray(lut, np.int32)[im.types])


def subset_labels(
    images: Sequence[LabelledImage], fraction: float, tile: int, seed: int = 0
) -> Sequence[LabelledImage]:
    """Keep ``fraction`` of the labelled area: images cut into ``tile`` px tiles (the last row and
    column moved back to end at the border, so the whole image is covered; an image smaller than
    two tiles is one tile), a seeded shuffle, the first ``ceil(fraction * n)``. Subsets are
    nested: 10% is inside 30% is inside 100% for one seed."""
    if not 0 < fraction <= 1:
        raise ValueError(f"label fraction must be in (0, 1], got {fraction}")
    if isinstance(images, PanNukeFold):
        h, w = images.image_shape
        if (h < 2 * tile and w < 2 * tile) or min(h, w) < tile:  # one tile per image: stay lazy
            order = np.random.default_rng(seed).permutation(len(images))
            keep = max(1, math.ceil(fraction * len(images)))
            return images.subset(sorted(order[:keep].tolist()))
    tiles: list[LabelledImage] = []
    for im in images:
        h, w = im.image.shape[:2]
        if (h < 2 * tile and w < 2 * tile) or min(h, w) < tile:
            tiles.append(im)
            continue
        for y in _starts(h, tile):
            for x in _starts(w, tile):
                tiles.append(im.region(x, y, tile, tile))
    order = np.random.default_rng(seed).permutation(len(tiles))
    keep = max(1, math.ceil(fraction * len(tiles)))
    return [tiles[i] for i in sorted(order[:keep].tolist())]


def _starts(length: int, tile: int) -> list[int]:
    starts = list(range(0, length - tile + 1, tile))
    return starts if starts[-1] + tile == length else [*starts, length - tile]
