"""Online evaluation while pretraining: ``pathssl eval``'s kNN probe as a
:class:`pathssl.train.online.Evaluator` (the generic hook of the training loop).

``pathssl pretrain`` builds it from ``eval.knn`` (a ``pathssl eval`` config naming the labelled
set); library callers do the same::

    from pathssl.eval.online import knn_evaluator
    from pathssl.train import load_config, pretrain

    cfg = load_config("configs/pretrain/simclr.yaml", ["eval.knn=configs/eval/x.yaml"])
    pretrain(cfg, knn_evaluator(cfg.eval.knn, backbone=cfg.model.backbone, k=cfg.eval.k))
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor

    from pathssl.eval.data import LabelledTiles
    from pathssl.train.labelled import LabelledSource


class KnnEvaluator:
    """The online kNN probe (a :class:`pathssl.train.online.Evaluator`): ``pathssl eval``'s
    kNN (:func:`pathssl.eval.probes.knn_probe`: features centred on the training mean,
    L2-normalised, cosine similarity, vote of the ``k`` nearest) of the ``test`` images
    among the ``train`` images, read as ``pathssl eval`` reads them (``image_size`` px, at the
    encoder's tile mpp). Scores: ``knn_top1`` (accuracy, the monitor), ``knn_balanced_accuracy``
    and ``knn_seconds`` (the probe's time)."""

    monitor = "knn_top1"

    def __init__(
        self,
        train: LabelledTiles,
        test: LabelledTiles,
        *,
        image_size: int,
        k: int,
        batch_size: int,
        temperature: float | None = None,
        summary: str = "",
        log: Callable[[str], None] | None = print,
    ) -> None:
        self.train, self.test = train, test
        self.image_size, self.k, self.batch_size = image_size, k, batch_size
        self.temperature = temperature
        self.num_classes = len(train.class_names)
        self.summary, self.log = summary, log
        self.images: dict[str, Tensor] = {}

    def prepare(self, tile_mpp: float | None) -> None:
        """Decode every image once, at ``tile_mpp`` (see ``pathssl.eval.data.TileImages``), into
        ``(N, 3, image_size, image_size)`` uint8 tensors held in memory."""
        import torch

        from pathssl.eval.data import TileImages

        if self.log is not None and self.summary:
            self.log(self.summary)
        for side, tiles in (("train", self.train), ("test", self.test)):
            ds = TileImages(tiles, self.image_size, target_mpp=tile_mpp, log=None)
            self.images[side] = torch.stack([ds[i][0] for i in range(len(ds))])

    def features(self, side: str, features: Callable[[Tensor], Tensor]) -> Tensor:
        """``(N, D)`` features of one side's images, ``batch_size`` at a time."""
        import torch

        x = self.images[side]
        return torch.cat(
            [features(x[i : i + self.batch_size]) for i in range(0, len(x), self.batch_size)]
        )

    def __call__(self, features: Callable[[Tensor], Tensor]) -> dict[str, float]:
        import numpy as np
        import torch

        from pathssl.eval.classification import balanced_accuracy
        from pathssl.eval.probes import knn_probe

        if not self.images:
            raise RuntimeError("KnnEvaluator: call prepare(tile_mpp) before evaluating")
        t0 = time.perf_counter()
        train_x, test_x = self.features("train", features), self.features("test", features)
        train_y = torch.from_numpy(self.train.labels)
        out = knn_probe(
            train_x, train_y, test_x, self.num_classes, k=self.k, temperature=self.temperature
        )
        y = self.test.labels
        return {
            "knn_top1": float(np.mean(out.pred == y)),
            "knn_balanced_accuracy": balanced_accuracy(y, out.pred),
            "knn_seconds": time.perf_counter() - t0,
        }


def knn_evaluator(
    config: str | Path,
    *,
    backbone: str,
    k: int | None = None,
    temperature: float | None = None,
    batch_size: int = 256,
    max_images: int | None = None,
    log: Callable[[str], None] | None = print,
) -> KnnEvaluator:
    """The online kNN probe of the labelled set that the ``pathssl eval`` config ``config``
    names: its ``data`` section (``source``, ``test`` or ``test_fraction`` + ``seed``,
    ``class_names``, ``image_size``) gives the images and the same train/test split as
    ``pathssl eval``; its ``model`` is replaced by ``backbone`` (the encoder being trained).
    ``k``: neighbours (None: the config's ``protocols.knn.k``, else 20); ``temperature``:
    None for a majority vote, else votes weighted by ``exp(similarity / temperature)``
    (Wu et al. 2018; DINO uses 0.07). ``max_images``: at most
    this many images, a random subset of each side in proportion (seeded by ``data.seed``).

    The labelled set is listed and checked here (files present, two classes or more), so a bad
    ``eval.knn`` is a one-line :class:`~pathssl.config.ConfigError` before any training."""
    import numpy as np

    from pathssl.config import ConfigError
    from pathssl.eval.config import KnnConfig, load_config
    from pathssl.eval.data import check_classes, labelled_splits

    try:
        ecfg = load_config(config, [f"model.backbone={backbone}", "model.checkpoint=null"])
        train, test = labelled_splits(ecfg.data)
        if len(train) == 0 or len(test) == 0:
            raise ValueError(f"empty split: {len(train)} train and {len(test)} test images")
        check_classes(train.labels, train.class_names, 1, where="the kNN training images")
    except (ValueError, OSError) as exc:
        raise ConfigError(f"eval.knn ({config}): {exc}", "eval.knn") from None
    n = len(train) + len(test)
    note = ""
    if max_images is not None and n > max_images:
        rng = np.random.default_rng(ecfg.data.seed)
        n_train = min(len(train), max(1, round(max_images * len(train) / n)), max_images - 1)
        n_test = min(len(test), max_images - n_train)
        train = train.subset(np.sort(rng.choice(len(train), n_train, replace=False)))
        test = test.subset(np.sort(rng.choice(len(test), n_test, replace=False)))
        note = f" (a random {max_images} of {n}: eval.max_images)"
    knn = ecfg.protocols.knn
    k = k if k is not None else (knn.k if knn is not None else KnnConfig().k)
    summary = (
        f"online kNN probe: {len(train)} train / {len(test)} test images{note} of {config}, "
        f"{len(train.class_names)} classes, k={k}, {ecfg.data.image_size} px"
    )
    return KnnEvaluator(
        train,
        test,
        image_size=ecfg.data.image_size,
        k=k,
        batch_size=batch_size,
        temperature=temperature,
        summary=summary,
        log=log,
    )


def labelled_source(
    config: str | Path, *, backbone: str, log: Callable[[str], None] | None = print
) -> LabelledSource:
    """The labelled stream of a method that trains on labels (S4L, ``supervised``;
    ``data.labelled.config``): the TRAINING side of the labelled set the ``pathssl eval``
    config ``config`` names (its test images are never trained on), read as ``pathssl eval``
    reads them (``data.image_size`` px, resampled to the tiles' mpp). Listed and checked here:
    a bad config is a one-line :class:`~pathssl.config.ConfigError` before any training."""
    from pathssl.config import ConfigError
    from pathssl.eval.config import load_config
    from pathssl.eval.data import TileImages, check_classes, labelled_splits
    from pathssl.train.labelled import LabelledSet

    try:
        ecfg = load_config(config, [f"model.backbone={backbone}", "model.checkpoint=null"])
        train, _ = labelled_splits(ecfg.data)
        if len(train) == 0:
            raise ValueError("no training images")
        check_classes(train.labels, train.class_names, 1, where="the labelled training images")
    except (ValueError, OSError) as exc:
        raise ConfigError(
            f"data.labelled.config ({config}): {exc}", "data.labelled.config"
        ) from None

    def read(tile_mpp: float | None) -> LabelledSet:
        images = TileImages(train, ecfg.data.image_size, target_mpp=tile_mpp, log=log)
        return LabelledSet(
            images,
            train.labels,
            train.class_names,
            f"the training side of {config} ({len(train)} images)",
        )

    return read
