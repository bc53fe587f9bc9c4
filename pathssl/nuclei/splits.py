"""Which labelled images train and which are held apart: loading a nuclei config's data, splits
that never share an image (or pixels of one image) between training and validation, and nested
label-fraction subsets for label-efficiency runs."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from pathssl.nuclei.config import DataConfig
from pathssl.nuclei.data import (
    LabelledImage,
    PanNukeFold,
    load_mat_folder,
    load_mat_image,
    load_npz_pair,
    resample,
)
from tiling.slide import mpp_differs

Images = Sequence[LabelledImage]


def load_data(
    cfg: DataConfig, target_mpp: float | None = None, log: Callable[[str], None] | None = print
) -> tuple[Images, Images]:
    """(training images, held-apart validation images) as the config describes (see
    :class:`~pathssl.nuclei.config.DataConfig`); no pixel is in both. PanNuke folds stay lazy
    (:class:`~pathssl.nuclei.data.PanNukeFold`).

    Images carry ``data.mpp``. With ``target_mpp`` (the model's), images whose mpp differs from
    it by more than 10 % are resampled to it (:func:`~pathssl.nuclei.data.resample`; regions are
    cut first, in the file's pixels) and one note naming both values goes to ``log``; images
    without an mpp are then an error naming the file and ``data.mpp``."""
    train, val = _load(cfg)
    if target_mpp is None:
        return train, val
    name = cfg.folder or cfg.image or cfg.format
    notes: list[str] = []
    train = _at_mpp(train, target_mpp, name, notes)
    val = _at_mpp(val, target_mpp, name, notes)
    if notes and log is not None:
        log(
            f"note: {name}: images at {', '.join(sorted(set(notes)))} um/px (data.mpp) differ "
            f"from the model's {target_mpp:g} um/px by more than 10 %; resampled to "
            f"{target_mpp:g} um/px"
        )
    return train, val


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
