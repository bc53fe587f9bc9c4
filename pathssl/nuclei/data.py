"""Nuclei datasets: labelled images in memory and random training crops with targets.

A :class:`~pathssl.nuclei.labelled.LabelledImage` (an RGB image with its instance and type maps
and its mpp; :func:`~pathssl.nuclei.labelled.resample`, :func:`~pathssl.data.images.read_rgb`:
re-exported here) is what every loader gives. Loaders:

* PanNuke (Gamper et al. 2020): ``images.npy`` ``(N, 256, 256, 3)``, ``masks.npy``
  ``(N, 256, 256, 6)`` with one instance channel per class (neoplastic, inflammatory,
  connective, dead, epithelial) and background last, ``types.npy`` ``(N,)`` tissue names;
* CoNSeP (Graham et al. 2019) / Lizard (Graham et al. 2021) ``.mat`` labels: ``inst_map`` and
  either ``type_map`` (CoNSeP) or per-nucleus ``id`` + ``class`` (Lizard), with the image file;
* an image file + instance/type ``.npz`` pair (``hgsc_nest*``; key ``nuc_raster``).

Polygon annotations (Aperio ImageScope XML, QuPath GeoJSON) and binary masks are read by
:mod:`pathssl.nuclei.readers`; many datasets become one training set in
:mod:`pathssl.nuclei.sources`.

:class:`NucleiCropDataset` draws a random crop and one dihedral transform, applies that ONE draw
to the image and both maps together (``pathssl.augment.Dihedral``, an albumentations
``DualTransform``), then computes HV targets on the crop.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray

from pathssl.data.images import read_rgb
from pathssl.nuclei.labelled import LabelledImage, resample, resize_labels
from pathssl.nuclei.targets import make_targets

__all__ = [
    "ImageSet",
    "LabelledImage",
    "NucleiCropDataset",
    "PanNukeFold",
    "image_keys",
    "image_shapes",
    "joined",
    "load_mat_folder",
    "load_mat_image",
    "load_mat_labels",
    "load_npz_pair",
    "load_pannuke",
    "pannuke_maps",
    "read_rgb",
    "resample",
    "resize_labels",
]

PANNUKE_TYPES = ("neoplastic", "inflammatory", "connective", "dead", "epithelial")
HGSC_TYPES = ("connective", "inflammatory", "neoplastic")


def load_npz_pair(
    image: str | Path,
    inst_npz: str | Path,
    type_npz: str | Path | None = None,
    key: str = "nuc_raster",
    mpp: float | None = None,
) -> LabelledImage:
    """An image + instance (+ type) ``.npz`` pair at ``mpp`` (the files record none); without a
    type map all nuclei are type 1."""
    inst = np.load(inst_npz)[key].astype(np.int32)
    types = np.load(type_npz)[key].astype(np.int32) if type_npz else (inst > 0).astype(np.int32)
    types = np.where(inst > 0, types, 0)
    return LabelledImage(read_rgb(image), inst, types, Path(image).stem, mpp=mpp)


def load_mat_labels(path: str | Path) -> tuple[NDArray[np.int32], NDArray[np.int32]]:
    """CoNSeP/Lizard/HoVer-Net ``.mat`` labels -> (instance map, type map): ``type_map``
    (CoNSeP), else per-nucleus ``id`` + ``class`` (Lizard), else ``inst_type`` (HoVer-Net's
    output: one type per instance, for ``inst_uid`` or the instance ids in increasing order),
    else every nucleus type 1."""
    from scipy.io import loadmat

    mat = loadmat(str(path))
    if "inst_map" not in mat:
        raise ValueError(f"{path}: no inst_map (keys: {sorted(k for k in mat if k[0] != '_')})")
    inst = np.asarray(mat["inst_map"]).astype(np.int32)
    if "type_map" in mat:  # CoNSeP
        types = np.asarray(mat["type_map"]).astype(np.int32)
    elif "inst_type" in mat:  # HoVer-Net output
        per = np.asarray(mat["inst_type"]).ravel().astype(np.int32)
        uid = mat.get("inst_uid")
        ids = np.asarray(uid).ravel() if uid is not None else np.unique(inst[inst > 0])
        if len(ids) != len(per):
            raise ValueError(f"{path}: {len(per)} inst_type values for {len(ids)} instances")
        lut = np.zeros(int(inst.max()) + 1, np.int32)
        keep = ids <= inst.max()
        lut[ids[keep].astype(np.int64)] = per[keep]
        types = lut[inst]
    elif "class" in mat and "id" in mat:  # Lizard: class of each listed instance id
        lut = np.zeros(int(inst.max()) + 1, np.int32)
        ids = np.asarray(mat["id"]).ravel().astype(np.int64)
        lut[ids[ids <= inst.max()]] = np.asarray(mat["class"]).ravel()[ids <= inst.max()]
        types = lut[inst]
    else:
        types = (inst > 0).astype(np.int32)
    return inst, np.where(inst > 0, types, 0).astype(np.int32)


def load_mat_image(image: str | Path, mat: str | Path, mpp: float | None = None) -> LabelledImage:
    """An image with its ``.mat`` labels, at ``mpp`` (the files record none)."""
    inst, types = load_mat_labels(mat)
    return LabelledImage(read_rgb(image), inst, types, Path(image).stem, mpp=mpp)


def load_mat_folder(
    folder: str | Path, limit: int | None = None, mpp: float | None = None
) -> list[LabelledImage]:
    """A CoNSeP-style folder: ``Images/<name>.png`` with ``Labels/<name>.mat`` (Lizard images
    and labels arranged the same way work too), in name order, all at ``mpp``."""
    folder = Path(folder)
    images = sorted(
        p for p in (folder / "Images").glob("*") if p.suffix.lower() in (".png", ".jpg", ".tif")
    )
    if not images:
        raise FileNotFoundError(f"no images in {folder / 'Images'}")
    out = []
    for path in images[:limit]:
        labels = folder / "Labels" / f"{path.stem}.mat"
        if not labels.is_file():
            raise FileNotFoundError(f"{path.name} has no labels {labels}")
        out.append(load_mat_image(path, labels, mpp))
    return out


def pannuke_maps(masks: NDArray[np.generic]) -> tuple[NDArray[np.int32], NDArray[np.int32]]:
    """One PanNuke ``(H, W, 6)`` mask -> (instance map, type map 1..5); instance ids are made
    unique across the class channels (PanNuke reuses ids between channels)."""
    inst = np.zeros(masks.shape[:2], np.int32)
    types = np.zeros(masks.shape[:2], np.int32)
    next_id = 1
    for c in range(masks.shape[2] - 1):  # the last channel is background
        ch = masks[..., c].astype(np.int64)
        for i in np.unique(ch[ch > 0]):
            m = ch == i
            inst[m] = next_id
            types[m] = c + 1
            next_id += 1
    return inst, types


class PanNukeFold(Sequence[LabelledImage]):
    """A PanNuke fold folder (``images.npy``, ``masks.npy``, ``types.npy``) as a lazy sequence:
    the arrays stay memory-mapped and each :class:`LabelledImage` (instance + type maps) is made
    when it is indexed, so a fold (~2,600 images, ~2 GB as maps) never sits in memory at once.
    ``index`` selects and orders images (a split); ``tissues`` come without reading images.
    ``mpp``: the fold's resolution (PanNuke: 0.25 um/px at 40x, not stored in the files);
    :meth:`at_mpp` gives the fold resampled to another one as each image is read."""

    def __init__(
        self,
        folder: str | Path,
        limit: int | None = None,
        index: Sequence[int] | None = None,
        type_lut: Sequence[int] | None = None,
        mpp: float | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.mpp = mpp
        self.source = ""  # the data.sources key, stamped on each image
        self.resample_to: float | None = None
        self.type_lut = None if type_lut is None else np.asarray(type_lut, np.int32)
        for name in ("images.npy", "masks.npy"):
            if not (self.folder / name).is_file():
                raise FileNotFoundError(f"PanNuke fold {self.folder} has no {name}")
        self.images = np.load(self.folder / "images.npy", mmap_mode="r")
        self.masks = np.load(self.folder / "masks.npy", mmap_mode="r")
        types = self.folder / "types.npy"
        self.all_tissues = [str(t) for t in np.load(types)] if types.exists() else None
        n = len(self.images) if limit is None else min(limit, len(self.images))
        self.rows = list(range(n)) if index is None else [int(i) for i in index]

    def __len__(self) -> int:
        return len(self.rows)

    def __getstate__(self) -> dict[str, object]:
        # DataLoader workers started by spawn get the file names, not copies of the arrays
        return {k: v for k, v in self.__dict__.items() if k not in ("images", "masks")}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self.images = np.load(self.folder / "images.npy", mmap_mode="r")
        self.masks = np.load(self.folder / "masks.npy", mmap_mode="r")

    @property
    def num_types(self) -> int:
        """Largest type id (the class channels of ``masks.npy``, after ``type_lut``)."""
        n = int(self.masks.shape[-1]) - 1
        return n if self.type_lut is None else int(self.type_lut[: n + 1].max())

    @property
    def image_shape(self) -> tuple[int, int]:
        """(H, W) of the images as indexed (after any resampling)."""
        h, w = int(self.images.shape[1]), int(self.images.shape[2])
        if self.resample_to is None or self.mpp is None:
            return h, w
        f = self.mpp / self.resample_to
        return max(1, int(round(h * f))), max(1, int(round(w * f)))

    def at_mpp(self, mpp: float) -> PanNukeFold:
        """The same images, each resampled to ``mpp`` when it is read (:func:`resample`)."""
        if self.mpp is None:
            raise ValueError(f"PanNuke fold {self.folder}: no mpp; set data.mpp to resample it")
        out = self.subset(range(len(self)))
        out.resample_to = float(mpp)
        return out

    def tissue(self, i: int) -> str:
        return self.all_tissues[self.rows[i]] if self.all_tissues is not None else ""

    def source_names(self) -> list[tuple[str, str]]:
        """``(source, name)`` of every image, without reading one."""
        return [(self.source, f"{self.folder.name}/{j}") for j in self.rows]

    def subset(self, positions: Sequence[int]) -> PanNukeFold:
        out = PanNukeFold.__new__(PanNukeFold)
        out.__dict__.update(self.__dict__)
        out.rows = [self.rows[int(p)] for p in positions]
        return out

    def __getitem__(self, i: int) -> LabelledImage:  # type: ignore[override]
        j = self.rows[i]
        inst, types = pannuke_maps(np.asarray(self.masks[j]))
        if self.type_lut is not None:
            types = self.type_lut[types]
        img = np.clip(np.asarray(self.images[j]), 0, 255).astype(np.uint8)
        name = f"{self.folder.name}/{j}"
        im = LabelledImage(img, inst, types, name, self.tissue(i), mpp=self.mpp, source=self.source)
        return im if self.resample_to is None else resample(im, self.resample_to)


def load_pannuke(
    folder: str | Path, limit: int | None = None, mpp: float | None = None
) -> list[LabelledImage]:
    """Every image of a PanNuke fold folder, in memory (:class:`PanNukeFold` is the lazy way)."""
    return list(PanNukeFold(folder, limit, mpp=mpp))


class ImageSet(Sequence[LabelledImage]):
    """Several image sequences (lists, lazy :class:`PanNukeFold` s) as one, still lazy: what
    many ``data.sources`` train on together."""

    def __init__(self, parts: Sequence[Sequence[LabelledImage]]) -> None:
        self.parts = [p for p in parts if len(p)]
        self.starts = np.cumsum([0] + [len(p) for p in self.parts]).tolist()

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, i: int) -> LabelledImage:  # type: ignore[override]
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i %= len(self)
        k = bisect.bisect_right(self.starts, i) - 1
        return self.parts[k][i - self.starts[k]]


def joined(parts: Sequence[Sequence[LabelledImage]]) -> Sequence[LabelledImage]:
    """``parts`` as one sequence: a list when every part is one, else an :class:`ImageSet`."""
    if all(isinstance(p, list) for p in parts):
        return [im for p in parts for im in p]
    return ImageSet(parts)


def image_shapes(images: Sequence[LabelledImage]) -> list[tuple[int, int]]:
    """``(H, W)`` of each image; lazy sequences answer without reading pixels."""
    if isinstance(images, PanNukeFold):
        return [images.image_shape] * len(images)
    if isinstance(images, ImageSet):
        return [hw for p in images.parts for hw in image_shapes(p)]
    return [(int(im.image.shape[0]), int(im.image.shape[1])) for im in images]


def image_keys(images: Sequence[LabelledImage]) -> list[tuple[str, str]]:
    """``(source, name)`` of each image (what a held-apart split must keep on one side);
    lazy sequences answer without reading pixels."""
    if isinstance(images, PanNukeFold):
        return images.source_names()
    if isinstance(images, ImageSet):
        return [k for p in images.parts for k in image_keys(p)]
    return [(im.source, im.name) for im in images]


class NucleiCropDataset(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    """Random ``crop`` px crops of ``images``, ``length`` per epoch. Each crop's image is drawn
    with probability ``weights`` (one per image, normalised; default: by area, so every pixel is
    equally likely; :func:`pathssl.nuclei.sources.sampling_weights` gives per-source shares).

    Item: ``{"image": (3, S, S) uint8, "np": (S, S) int64, "hv": (2, S, S) float32,
    "tp": (S, S) int64}``. ``augment``: one random dihedral element per crop, shared by the image
    and its maps; ``stain_jitter`` > 0 adds HED jitter (Tellez et al. 2019; alpha = beta =
    ``stain_jitter``, p 0.8) to the image only, for heads meant to run on other labs' slides.
    Item ``i`` of epoch ``e`` is a pure function of ``(seed, e, i)``.
    """

    def __init__(
        self,
        images: Sequence[LabelledImage],
        crop: int = 256,
        length: int = 1000,
        augment: bool = True,
        seed: int = 0,
        stain_jitter: float = 0.0,
        weights: Sequence[float] | None = None,
    ) -> None:
        if not len(images):
            raise ValueError("no labelled images")
        shapes = image_shapes(images)  # lazy sequences: without reading an image
        lazy = isinstance(images, PanNukeFold | ImageSet)
        self.images: Sequence[LabelledImage] = images if lazy else list(images)
        small = [i for i, hw in enumerate(shapes) if min(hw) < crop]
        if small:
            raise ValueError(f"{len(small)} images are smaller than the {crop} px crop")
        self.crop = crop
        self.length = length
        self.augment = augment
        self.stain_jitter = float(stain_jitter)
        self.seed = seed
        self.epoch = 0
        p = np.array([h * w for h, w in shapes] if weights is None else weights, np.float64)
        if p.shape != (len(shapes),) or not np.all(p >= 0) or not p.sum() > 0:
            raise ValueError(f"need {len(shapes)} non-negative sampling weights, got {p.shape}")
        self.weights = p / p.sum()

    def __len__(self) -> int:
        return self.length

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng((self.seed, self.epoch, index))
        im = self.images[int(rng.choice(len(self.images), p=self.weights))]
        h, w = im.image.shape[:2]
        y, x = int(rng.integers(0, h - self.crop + 1)), int(rng.integers(0, w - self.crop + 1))
        sub = im.region(x, y, self.crop, self.crop)
        image, inst, types = sub.image, sub.inst, sub.types
        if self.augment:
            import albumentations as A

            from pathssl.augment import Dihedral, HEDJitter

            ops: list[A.BasicTransform] = [Dihedral(p=1.0)]
            if self.stain_jitter > 0:
                ops.append(HEDJitter(self.stain_jitter, self.stain_jitter, p=0.8))
            t = A.Compose(ops, seed=int(rng.integers(2**31)))
            res = t(image=np.ascontiguousarray(image), masks=[inst, types])
            image, (inst, types) = res["image"], res["masks"]
        tg = make_targets(np.ascontiguousarray(inst), np.ascontiguousarray(types))
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "np": torch.from_numpy(tg["np"]),
            "hv": torch.from_numpy(tg["hv"]),
            "tp": torch.from_numpy(tg["tp"]),
        }
