"""Many labelled datasets as one training set: reading each ``data.sources`` entry
(:class:`~pathssl.nuclei.config.SourceConfig`), the organ and patient of each image, how often
each source is sampled, and the record of what trained a checkpoint (with licences).

Files are found by globs under the source's ``path`` and paired by file stem (:data:`LAYOUTS`).
Each image gets:

* ``name``: its file stem (what ``val`` lists when ``split: image``);
* ``tissue`` (organ): from :data:`TCGA_ORGANS` for TCGA names, else the source's ``organ``;
* ``patient``: the TCGA participant (``TCGA-XX-YYYY``) for TCGA names, else the image's folder
  name (TNBC: ``Slide_NN``, one folder per patient);
* ``source``: the source's name; ``mpp``: the file's, else the source's ``mpp``, else an error
  naming the file and ``data.sources.NAME.mpp``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from pathssl.nuclei.config import SourceConfig
from pathssl.nuclei.data import (
    LabelledImage,
    PanNukeFold,
    image_keys,
    image_shapes,
    load_npz_pair,
)
from pathssl.nuclei.readers import (
    MASK_NOTE,
    file_mpp,
    id_lut,
    read_mask_image,
    read_mat_image,
    read_polygon_image,
)

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")
# format -> (label glob, image glob) under the source's path; images paired with labels by stem
LAYOUTS = {
    "imagescope": ("**/*.xml", "**/*"),
    "geojson": ("**/*.geojson", "**/*"),
    "mask": ("GT_*/*.png", "Slide_*/*.png"),  # TNBC: Slide_NN/x.png + GT_NN/x.png
    "mat": ("**/*.mat", "**/*"),
}
# TCGA tissue source site (the 2 characters after "TCGA-") -> (TCGA project, organ), for the
# MoNuSeg images in ../shared/data. MoNuSeg's organ list calls the 21 and 50 images "liver";
# their TCGA projects (LUSC, LUAD) are lung cancers, and lung is what is recorded here.
TCGA_ORGANS = {
    "21": ("LUSC", "lung"),
    "50": ("LUAD", "lung"),
    "A7": ("BRCA", "breast"),
    "AR": ("BRCA", "breast"),
    "E2": ("BRCA", "breast"),
    "B0": ("KIRC", "kidney"),
    "CH": ("PRAD", "prostate"),
    "G9": ("PRAD", "prostate"),
    "NH": ("COAD", "colon"),
}
NOT_STATED = "not stated"


def organ_of(name: str, default: str = "") -> str:
    """The organ of a TCGA image name (:data:`TCGA_ORGANS`), else ``default``."""
    if name.startswith("TCGA-") and name[5:7] in TCGA_ORGANS:
        return TCGA_ORGANS[name[5:7]][1]
    return default


def patient_of(name: str, path: Path) -> str:
    """The TCGA participant barcode of a TCGA name, else the image's folder name."""
    if name.startswith("TCGA-") and len(name.split("-")) >= 3:
        return "-".join(name.split("-")[:3])
    return path.parent.name


def paired_files(src: SourceConfig, where: str) -> list[tuple[Path, Path]]:
    """``(label file, image file)`` pairs of a source, in label-name order (see
    :data:`LAYOUTS`); a label without its image is an error naming both globs."""
    root = Path(src.path)
    label_glob, image_glob = LAYOUTS[src.format]
    label_glob, image_glob = src.labels or label_glob, src.images or image_glob
    if root.is_file():
        labels, root = [root], root.parent
    elif root.is_dir():
        labels = sorted(root.glob(label_glob))
    else:
        raise FileNotFoundError(f"{where}.path: {root} not found")
    if not labels:
        raise FileNotFoundError(f"{where}: no label files {label_glob!r} under {root}")
    label_set = set(labels)
    images: dict[str, Path] = {}
    for p in sorted(root.glob(image_glob)):
        if p.suffix.lower() in IMAGE_SUFFIXES and p not in label_set:
            if p.stem in images:
                raise ValueError(f"{where}: two images named {p.stem!r}: {images[p.stem]}, {p}")
            images[p.stem] = p
    pairs = []
    for lab in labels[: src.limit]:
        if lab.stem not in images:
            raise FileNotFoundError(
                f"{where}: {lab} has no image {lab.stem}.* matching {image_glob!r} under {root}"
            )
        pairs.append((lab, images[lab.stem]))
    return pairs


def read_source(
    name: str, src: SourceConfig, log: Callable[[str], None] | None = print
) -> Sequence[LabelledImage]:
    """Every labelled image of one source at its own mpp, with organ, patient and source set
    (a PanNuke fold stays lazy)."""
    where = f"data.sources.{name}"
    option = f"{where}.mpp"
    if src.format == "pannuke":
        fold = PanNukeFold(src.path, src.limit, mpp=src.mpp)
        channels = range(1, fold.num_types + 1)
        fold.type_lut = id_lut(src.type_map, channels, src.path, f"{where}.type_map")
        fold.mpp = file_mpp(None, src.mpp, Path(src.path), option)
        fold.source = name
        return fold
    if src.format == "npz":
        im = load_npz_pair(src.path, src.labels, src.types or None, mpp=src.mpp)
        im.mpp = file_mpp(None, src.mpp, Path(src.path), option)
        lut = id_lut(src.type_map, np.unique(im.types).tolist(), src.types, f"{where}.type_map")
        images = [im if lut is None else im.with_types(lut[im.types])]
        paths = [Path(src.path)]
    else:
        images, paths = [], []
        for label, image in paired_files(src, where):
            if src.format == "mask":
                im = read_mask_image(label, image, src.mpp, option)
            elif src.format == "mat":
                im = read_mat_image(label, image, src.mpp, src.type_map, option)
            else:
                im = read_polygon_image(label, image, src.mpp, src.type_map, option, log)
            images.append(im)
            paths.append(image)
        if src.format == "mask" and log is not None:
            log(f"note: {where}: {MASK_NOTE}")
    for im, path in zip(images, paths, strict=True):
        im.tissue = organ_of(im.name, src.organ)
        im.patient = patient_of(im.name, path)
        im.source = name
    return images


def sampling_weights(
    images: Sequence[LabelledImage], weights: Mapping[str, float]
) -> NDArray[np.float64]:
    """Per-image sampling probabilities ``(N,)``: source ``s`` gets ``weights[s]`` over the sum
    of the weights of the sources present (so 2:1 means twice as many crops, whatever the
    sources' sizes), shared within it by image area (every pixel of a source equally likely)."""
    sources = [s for s, _ in image_keys(images)]
    areas = np.array([h * w for h, w in image_shapes(images)], np.float64)
    present = sorted(set(sources))
    missing = [s for s in present if s not in weights]
    if missing:
        raise ValueError(f"no sampling weight for source(s) {missing}")
    total = sum(weights[s] for s in present)
    out = np.zeros(len(sources), np.float64)
    for s in present:
        mask = np.array([x == s for x in sources])
        out[mask] = weights[s] / total * areas[mask] / areas[mask].sum()
    return out


def source_record(
    name: str, src: SourceConfig, train: Sequence[LabelledImage], val: Sequence[LabelledImage]
) -> dict[str, Any]:
    """What ``nuclei.pt`` records of one source: name, format, path, licence, weight, how its
    images were held apart, the images that trained and were held apart, their mpp (as read,
    before resampling to the model's)."""
    mpps = sorted(_mpps(train) | _mpps(val))
    return {
        "name": name,
        "format": src.format,
        "path": str(src.path),
        "licence": src.licence or NOT_STATED,
        "weight": src.weight,
        "split": {"by": src.split, "val": list(src.val), "val_fraction": src.val_fraction},
        "mpp": mpps,
        "mpp_config": src.mpp,
        "train_images": [n for _, n in image_keys(train)],
        "held_apart_images": [n for _, n in image_keys(val)],
    }


def _mpps(images: Sequence[LabelledImage]) -> set[float]:
    """The pixel sizes of ``images`` as read (a lazy fold: its one mpp, without reading)."""
    if isinstance(images, PanNukeFold):
        return {float(images.mpp)} if images.mpp is not None and len(images) else set()
    return {float(im.mpp) for im in images if im.mpp is not None}


def describe_sources(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """One line per source of a checkpoint's ``meta["sources"]``: what ``pathssl nuclei
    predict`` / ``eval`` print so a user sees the data and licences behind a model."""
    lines = []
    for r in records:
        mpp = r.get("mpp") or []
        res = f"{min(mpp):g}-{max(mpp):g}" if len(mpp) > 1 else (f"{mpp[0]:g}" if mpp else "?")
        n_train, n_val = len(r.get("train_images", [])), len(r.get("held_apart_images", []))
        lines.append(
            f"{r.get('name')}: {r.get('format')} {r.get('path')}, {n_train} training / "
            f"{n_val} held-apart images at {res} um/px, licence: {r.get('licence', NOT_STATED)}"
        )
    return lines
