"""A map-style dataset over the tiles of many stores, filtered by the stores' QC arrays.

Items are uint8 tiles (or their encoded bytes, for decoding on the GPU); batching keeps them
uint8 so that augmentation runs batched on the training device (``pathssl.augment`` recipes).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from tiling.store import TileStore, find_stores, open_store


class EmptyDatasetError(ValueError):
    """No tile stores were found, or the QC filters removed every tile."""


#: QC filter name -> (QC array in the store, "min" or "max")
QC_FILTERS: dict[str, tuple[str, str]] = {
    "min_tissue": ("tissue", "min"),
    "max_pen": ("pen", "max"),
    "max_white": ("white", "max"),
    "min_blur": ("blur", "min"),
}


def resolve_stores(paths: Sequence[str | Path]) -> list[Path]:
    """Store folders from ``paths`` (stores or folders of ``*.zarr`` stores), with clear errors
    for a missing path or no store at all."""
    if isinstance(paths, str | Path):
        paths = [paths]
    if not paths:
        raise EmptyDatasetError("no tile stores given (data.stores is empty)")
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"tile store path {p} does not exist")
    try:
        found = find_stores(paths)
    except FileNotFoundError as exc:
        raise FileNotFoundError(
            f"{exc} (expected a *.zarr tile store or a folder of them)"
        ) from None
    if not found:
        shown = ", ".join(str(p) for p in paths)
        raise EmptyDatasetError(
            f"no tile stores (*.zarr with zarr.json) found in {shown}; run `pathssl tile` first"
        )
    return found


class TileDataset(torch.utils.data.Dataset[dict[str, Any]]):
    """Tiles of every store under ``stores`` that pass the QC filters.

    ``min_tissue``/``max_pen``/``max_white``/``min_blur`` compare against the store's
    ``qc`` arrays (``None`` = no filter). ``encoded=True`` makes items carry the encoded tile
    bytes (``"jpeg"``) instead of decoded pixels. All stores must share one tile size.

    Item ``i``: ``{"image": (S, S, 3) uint8 ndarray, "index": i}`` (or ``"jpeg": bytes``).
    Attributes: ``slide_index`` ``(N,)`` int64 store number of each kept tile, ``slide_ids``.
    """

    def __init__(
        self,
        stores: Sequence[str | Path],
        min_tissue: float | None = None,
        max_pen: float | None = None,
        max_white: float | None = None,
        min_blur: float | None = None,
        encoded: bool = False,
    ) -> None:
        self.paths = resolve_stores(stores)
        self.encoded = encoded
        limits = {
            "min_tissue": min_tissue,
            "max_pen": max_pen,
            "max_white": max_white,
            "min_blur": min_blur,
        }
        opened = [open_store(p) for p in self.paths]
        sizes = {s.tile_size for s in opened}
        if len(sizes) > 1:
            raise ValueError(f"tile stores have different tile sizes {sorted(sizes)}")
        self.tile_size = sizes.pop()
        self.mpps = [s.mpp for s in opened]
        if max(self.mpps) > 1.1 * min(self.mpps):
            warnings.warn(f"tile stores differ in mpp: {sorted(set(self.mpps))}", stacklevel=2)
        self.slide_ids = [s.slide_id for s in opened]
        slide_index, tile_index, total = [], [], 0
        for k, store in enumerate(opened):
            keep = np.ones(len(store), dtype=bool)
            for name, value in limits.items():
                if value is None:
                    continue
                key, kind = QC_FILTERS[name]
                if key not in store.qc:
                    raise KeyError(f"{store.path}: no QC array {key!r} for filter {name}")
                q = store.qc[key]
                keep &= q >= value if kind == "min" else q <= value
            idx = np.flatnonzero(keep)
            total += len(store)
            slide_index.append(np.full(len(idx), k, dtype=np.int64))
            tile_index.append(idx.astype(np.int64))
        self.slide_index = np.concatenate(slide_index)
        self.tile_index = np.concatenate(tile_index)
        if len(self.tile_index) == 0:
            active = {k: v for k, v in limits.items() if v is not None}
            raise EmptyDatasetError(
                f"no tiles left: the QC filters {active} removed all {total} tiles of "
                f"{len(self.paths)} store(s)"
            )
        self._stores: dict[int, TileStore] = {}
        self._pid = os.getpid()

    @property
    def tile_mpp(self) -> float:
        """Mean tile resolution of the stores (micrometres per pixel)."""
        return float(np.mean(self.mpps))

    def __len__(self) -> int:
        return int(len(self.tile_index))

    def store(self, k: int) -> TileStore:
        """Store ``k``, opened once per process (DataLoader workers open their own)."""
        if os.getpid() != self._pid:
            self._stores, self._pid = {}, os.getpid()
        if k not in self._stores:
            self._stores[k] = open_store(self.paths[k])
        return self._stores[k]

    def locate(self, i: int) -> tuple[int, int]:
        """``(store number, tile number in that store)`` of item ``i``."""
        return int(self.slide_index[i]), int(self.tile_index[i])

    def coords(self) -> np.ndarray:
        """``(N, 2)`` int64 level-0 x, y of every kept tile (in its own slide)."""
        out = np.empty((len(self), 2), dtype=np.int64)
        for k in range(len(self.paths)):
            sel = self.slide_index == k
            out[sel] = self.store(k).coords[self.tile_index[sel]]
        return out

    def image(self, i: int) -> np.ndarray:
        k, t = self.locate(i)
        return self.store(k)[t]

    def __getitem__(self, i: int) -> dict[str, Any]:
        k, t = self.locate(i)
        if self.encoded:
            return {"jpeg": self.store(k).read_bytes(t), "index": int(i)}
        return {"image": self.store(k)[t], "index": int(i)}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_stores"] = {}
        return state


def collate_uint8(items: list[dict[str, Any]]) -> dict[str, Tensor]:
    """Items -> ``{"image": (B, 3, S, S) uint8, "index": (B,) int64}`` (no float conversion)."""
    images = np.stack([it["image"] for it in items])  # (B, S, S, 3)
    return {
        "image": torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
        "index": torch.tensor([it["index"] for it in items], dtype=torch.long),
    }


def collate_jpeg(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Encoded items -> ``{"jpeg": [1-D uint8 tensors], "index": (B,) int64}``."""
    return {
        "jpeg": [torch.frombuffer(bytearray(it["jpeg"]), dtype=torch.uint8) for it in items],
        "index": torch.tensor([it["index"] for it in items], dtype=torch.long),
    }


def decode_jpeg_batch(data: list[Tensor], device: torch.device | str) -> Tensor:
    """Decode JPEG byte tensors to ``(B, 3, S, S)`` uint8 on ``device`` (nvJPEG on CUDA)."""
    with warnings.catch_warnings():  # torchvision 0.29 deprecates io in favour of torchcodec
        warnings.simplefilter("ignore", DeprecationWarning)
        from torchvision.io import ImageReadMode, decode_jpeg

        images = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    return torch.stack(list(images))


def tile_mean_std(
    dataset: TileDataset, n: int = 256, seed: int = 0
) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (RGB, in [0, 1]) of up to ``n`` randomly chosen tiles."""
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(dataset), size=min(n, len(dataset)), replace=False)
    s = np.zeros(3)
    s2 = np.zeros(3)
    count = 0
    for i in np.sort(idx):
        x = dataset.image(int(i)).reshape(-1, 3).astype(np.float64) / 255.0
        s += x.sum(0)
        s2 += (x * x).sum(0)
        count += x.shape[0]
    mean = s / count
    std = np.sqrt(np.maximum(s2 / count - mean * mean, 1e-12))
    return [float(v) for v in mean], [float(v) for v in std]
