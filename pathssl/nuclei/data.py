"""Nuclei datasets: labelled images in memory and random training crops with targets.

A :class:`LabelledImage` is an RGB image ``(H, W, 3)`` uint8 with an instance map ``(H, W)``
(0 = background, one id per nucleus) and a type map ``(H, W)`` (0 = background, 1..T). Loaders:

* PanNuke (Gamper et al. 2020): ``images.npy`` ``(N, 256, 256, 3)``, ``masks.npy``
  ``(N, 256, 256, 6)`` with one instance channel per class (neoplastic, inflammatory,
  connective, dead, epithelial) and background last, ``types.npy`` ``(N,)`` tissue names;
* CoNSeP (Graham et al. 2019) / Lizard (Graham et al. 2021) ``.mat`` labels: ``inst_map`` and
  either ``type_map`` (CoNSeP) or per-nucleus ``id`` + ``class`` (Lizard), with the image file;
* an image file + instance/type ``.npz`` pair (``hgsc_nest*``; key ``nuc_raster``).

Every image carries its resolution (``mpp``, micrometres per pixel: from the file where it records
one, else the caller's config value, else None); :func:`resample` takes an image and its maps to
another mpp (the model's).

:class:`NucleiCropDataset` draws a random crop and one dihedral transform, applies that ONE draw
to the image and both maps together (``pathssl.augment.Dihedral``, an albumentations
``DualTransform``), then computes HV targets on the crop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray

from pathssl.nuclei.targets import make_targets

PANNUKE_TYPES = ("neoplastic", "inflammatory", "connective", "dead", "epithelial")
HGSC_TYPES = ("connective", "inflammatory", "neoplastic")


@dataclass
class LabelledImage:
    """One labelled image; ``name`` for reports, ``tissue`` for PanNuke's per-tissue scores."""

    image: NDArray[np.uint8]
    inst: NDArray[np.int32]
    types: NDArray[np.int32]
    name: str = ""
    tissue: str = ""
    origin: tuple[int, int] = (0, 0)  # (x, y) of a region in the image it was cut from
    mpp: float | None = None  # micrometres per pixel (None: not recorded)

    def __post_init__(self) -> None:
        h, w = self.image.shape[:2]
        if self.image.ndim != 3 or self.image.shape[2] != 3 or self.image.dtype != np.uint8:
            raise ValueError(f"{self.name}: image must be (H, W, 3) uint8, got {self.image.shape}")
        if self.inst.shape != (h, w) or self.types.shape != (h, w):
            raise ValueError(f"{self.name}: maps {self.inst.shape}/{self.types.shape} != {(h, w)}")

    def region(self, x: int, y: int, w: int, h: int) -> LabelledImage:
        """The sub-image ``[y:y+h, x:x+w]`` (views, no copy)."""
        sl = np.s_[y : y + h, x : x + w]
        origin = (self.origin[0] + x, self.origin[1] + y)
        return LabelledImage(
            self.image[sl], self.inst[sl], self.types[sl], self.name, self.tissue, origin, self.mpp
        )

    def with_types(self, types: NDArray[np.int32]) -> LabelledImage:
        """The same image and instances with another type map."""
        return LabelledImage(
            self.image, self.inst, types, self.name, self.tissue, self.origin, self.mpp
        )


def resize_labels(labels: NDArray[np.int32], width: int, height: int) -> NDArray[np.int32]:
    """An instance or type map ``(H, W)`` -> ``(height, width)`` by nearest neighbour, pixel
    centres aligned (``INTER_NEAREST_EXACT``, the grid the image's area/linear resize uses)."""
    import cv2

    if labels.shape == (height, width):
        return labels
    out = cv2.resize(
        np.ascontiguousarray(labels, np.int32),
        (width, height),
        interpolation=cv2.INTER_NEAREST_EXACT,
    )
    return np.asarray(out, np.int32)


def resample(im: LabelledImage, mpp: float, shape: tuple[int, int] | None = None) -> LabelledImage:
    """``im`` taken to ``mpp`` micrometres per pixel: size ``round((W, H) * im.mpp / mpp)`` (or
    ``shape`` ``(H, W)``, e.g. an image's own size when mapping back), the image by area
    interpolation when shrinking and linear when enlarging (:func:`tiling.slide.resize_rgb`),
    instance and type maps by nearest neighbour with pixel centres aligned (nuclei smaller than a
    pixel may vanish when shrinking; ids are kept). ``origin`` is scaled too."""
    from tiling.slide import resize_rgb

    if im.mpp is None:
        raise ValueError(f"{im.name}: no mpp recorded; set data.mpp to resample it")
    f = im.mpp / mpp  # new px per old px
    h, w = im.image.shape[:2]
    nw, nh = max(1, int(round(w * f))), max(1, int(round(h * f)))
    if shape is not None:
        nh, nw = shape
    origin = (int(round(im.origin[0] * f)), int(round(im.origin[1] * f)))
    return LabelledImage(
        resize_rgb(im.image, nw, nh),
        resize_labels(im.inst, nw, nh),
        resize_labels(im.types, nw, nh),
        im.name,
        im.tissue,
        origin,
        float(mpp),
    )


def read_rgb(path: str | Path) -> NDArray[np.uint8]:
    """An image file as ``(H, W, 3)`` RGB uint8."""
    import cv2

    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FileNotFoundError(f"cannot read image {path}")
    return np.ascontiguousarray(bgr[..., ::-1])


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
    """CoNSeP/Lizard ``.mat`` labels -> (instance map, type map)."""
    from scipy.io import loadmat

    mat = loadmat(str(path))
    inst = np.asarray(mat["inst_map"]).astype(np.int32)
    if "type_map" in mat:  # CoNSeP
        types = np.asarray(mat["type_map"]).astype(np.int32)
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
        im = LabelledImage(img, inst, types, name, self.tissue(i), mpp=self.mpp)
        return im if self.resample_to is None else resample(im, self.resample_to)


def load_pannuke(
    folder: str | Path, limit: int | None = None, mpp: float | None = None
) -> list[LabelledImage]:
    """Every image of a PanNuke fold folder, in memory (:class:`PanNukeFold` is the lazy way)."""
    return list(PanNukeFold(folder, limit, mpp=mpp))


class NucleiCropDataset(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    """Random ``crop`` px crops of ``images`` (weighted by area), ``length`` per epoch.

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
    ) -> None:
        if not len(images):
            raise ValueError("no labelled images")
        if isinstance(images, PanNukeFold):  # lazy: shapes without reading an image
            shapes = [images.image_shape] * len(images)
            self.images: Sequence[LabelledImage] = images
        else:
            shapes = [im.image.shape[:2] for im in images]
            self.images = list(images)
        small = [i for i, hw in enumerate(shapes) if min(hw) < crop]
        if small:
            raise ValueError(f"{len(small)} images are smaller than the {crop} px crop")
        self.crop = crop
        self.length = length
        self.augment = augment
        self.stain_jitter = float(stain_jitter)
        self.seed = seed
        self.epoch = 0
        areas = np.array([h * w for h, w in shapes], np.float64)
        self.weights = areas / areas.sum()

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
