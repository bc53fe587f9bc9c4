"""The labelled stream of the methods that train on labels (``needs_labels``: S4L, supervised).

:func:`pathssl.train.build.build_trainer` wires it for such a method: a seeded, stratified
``data.labelled.fraction`` of a labelled set (:func:`pathssl.data.sweep.fraction_subset`, the
package's one label-fraction sweep), an infinite resumable order over it (:class:`pathssl.data.ResumableSampler`, seeded by ``train.seed``) and
a loader of ``{"image": (B_l, 3, S, S) uint8, "label": (B_l,) int64}`` batches, zipped with the
tile stream (:class:`~pathssl.train.streams.PairedLoader`) or alone for a method that reads no
tiles. Exact resume: the labelled sampler restarts from the count the loop consumed
(:class:`~pathssl.train.streams.PairedSampler`), and the subset is re-derived from its seed.

Reading labelled images is ``pathssl eval``'s (a layer above this one): the caller passes a
:data:`LabelledSource`, a function of the tiles' mpp giving a :class:`LabelledSet`
(``pathssl pretrain`` builds it from ``data.labelled.config``, a ``pathssl eval`` config).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from pathssl.data import ResumableSampler
from pathssl.data.sweep import fraction_subset
from pathssl.train.config import ConfigError, LabelledConfig
from pathssl.train.distributed import DistInfo
from pathssl.train.streams import PairedLoader, PairedSampler

#: what builds a LabelledSource from ``data.labelled.config`` (named in messages)
BUILDER = "pathssl.eval.online.labelled_source(cfg.data.labelled.config)"


@dataclass
class LabelledSet:
    """``dataset`` items ``((3, S, S) uint8 RGB tensor, class index)``; ``labels`` ``(N,)``
    int64 the class index of every item (read without decoding), ``class_names`` their names,
    ``description`` one line saying where they come from."""

    dataset: Dataset[tuple[Tensor, int]]
    labels: NDArray[np.int64]
    class_names: list[str]
    description: str = ""


#: the tiles' mpp (None: unknown) -> the labelled set read at that mpp
LabelledSource = Callable[[float | None], LabelledSet]


class LabelledItems(Dataset[dict[str, Any]]):
    """Items ``index[i]`` of ``base`` as ``{"image": (3, S, S) uint8, "label": int}``."""

    def __init__(self, base: Dataset[tuple[Tensor, int]], index: NDArray[np.int64]) -> None:
        self.base = base
        self.index = index

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, Any]:
        image, label = self.base[int(self.index[i])]
        return {"image": image, "label": int(label)}


def collate_labelled(items: list[dict[str, Any]]) -> dict[str, Tensor]:
    """-> ``{"image": (B, 3, S, S) uint8, "label": (B,) int64}``."""
    return {
        "image": torch.stack([it["image"] for it in items]),
        "label": torch.tensor([it["label"] for it in items], dtype=torch.long),
    }


def labelled_stream(
    lset: LabelledSet,
    *,
    fraction: float,
    subset_seed: int,
    order_seed: int,
    batch_size: int,
    num_workers: int,
    world_size: int = 1,
    rank: int = 0,
    pin: bool = False,
) -> tuple[DataLoader[Any], ResumableSampler, dict[str, Any]]:
    """(loader, its resumable sampler, a description for the checkpoint's ``meta``) of the
    ``fraction`` of ``lset`` kept by :func:`pathssl.data.sweep.fraction_subset` with
    ``subset_seed``, in an order drawn from ``order_seed``. Fewer than 2 classes kept is a :class:`ConfigError`."""
    n_classes = len(np.unique(lset.labels))
    if len(lset.labels) == 0 or n_classes < 2:
        raise ConfigError(
            f"data.labelled: {lset.description or 'the labelled set'} has {len(lset.labels)} "
            f"images of {n_classes} class(es); training on labels needs 2 classes or more",
            "data.labelled.config",
        )
    index = fraction_subset(lset.labels, fraction, subset_seed)
    kept = lset.labels[index]
    sampler = ResumableSampler(
        np.zeros(len(index), dtype=np.int64),
        seed=order_seed,
        num_replicas=world_size,
        rank=rank,
    )
    loader: DataLoader[Any] = DataLoader(
        LabelledItems(lset.dataset, index),
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_labelled,
        pin_memory=pin,
        drop_last=True,
        persistent_workers=num_workers > 0,
        generator=torch.Generator().manual_seed(order_seed),
    )
    meta = {
        "source": lset.description,
        "class_names": list(lset.class_names),
        "images": len(lset.labels),
        "fraction": fraction,
        "seed": subset_seed,
        "kept": len(index),
        "kept_per_class": [int((kept == c).sum()) for c in range(len(lset.class_names))],
    }
    return loader, sampler, meta


def check_labelled(method: str, needs_labels: bool, given: bool) -> None:
    """Before any compute: a method that trains on labels has a labelled set, the others none."""
    if needs_labels and not given:
        raise ConfigError(
            f"method {method!r} trains on labelled images: set data.labelled.config to a "
            f"`pathssl eval` config naming them (library callers pass labelled={BUILDER})",
            "data.labelled.config",
        )
    if given and not needs_labels:
        raise ConfigError(
            f"method {method!r} uses no labels: data.labelled is for the methods that do "
            "(s4l_rotation, s4l_exemplar, supervised); set data.labelled.config to empty",
            "data.labelled.config",
        )


def with_labelled_stream(
    tiles_loader: Any,
    tiles_sampler: Any,
    lset: LabelledSet,
    cfg: LabelledConfig,
    *,
    tiles_batch: int | None,
    order_seed: int,
    dist_info: DistInfo,
    pin: bool,
) -> tuple[Any, Any, dict[str, Any]]:
    """(loader, resumable sampler, meta) of a run with the labelled stream of ``cfg``
    (``data.labelled``): the tiles' and the labelled batches in pairs, or the labelled stream
    alone when ``tiles_batch`` is None (a method that reads no tiles)."""
    loader, sampler, meta = labelled_stream(
        lset,
        fraction=cfg.fraction,
        subset_seed=cfg.seed,
        order_seed=order_seed,
        batch_size=cfg.batch_size,
        num_workers=cfg.num_workers,
        world_size=dist_info.world_size,
        rank=dist_info.rank,
        pin=pin,
    )
    if dist_info.is_main:
        kept = meta["kept"]
        print(
            f"labelled stream: {kept} of {meta['images']} images ({cfg.fraction:g} per class, "
            f"seed {cfg.seed}) of {lset.description or 'the labelled set'}, "
            f"{len(lset.class_names)} classes, {cfg.batch_size} per step",
            flush=True,
        )
        if cfg.batch_size * dist_info.world_size > kept:
            print(
                f"warning: data.labelled.batch_size {cfg.batch_size} x {dist_info.world_size} "
                f"process(es) is more than the {kept} labelled images kept: images repeat "
                "within a batch",
                flush=True,
            )
    if tiles_batch is None:
        return loader, sampler, meta
    paired = PairedSampler(
        tiles_sampler, sampler, tiles_batch, cfg.batch_size, dist_info.world_size
    )
    return PairedLoader(tiles_loader, loader), paired, meta
