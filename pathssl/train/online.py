"""Online evaluation while pretraining: the generic hook through which the loop scores the
frozen encoder every ``eval.every`` steps.

``pathssl.train`` sits below ``pathssl.eval`` (``tests/test_architecture.py``), so the loop never
builds a probe itself: an :class:`Evaluator` is passed in (``build_trainer(cfg, evaluator=...)``,
``pretrain(cfg, evaluator=...)``). The kNN probe of ``eval.knn`` (``pathssl eval``'s data
formats and ``knn_probe``) is built above both, by
``pathssl.eval.online.knn_evaluator``. :func:`online_validation` makes the evaluator the
loop's :class:`~pathssl.train.loop.Validation`, which logs its scores (``val`` rows of
``metrics.jsonl`` and TensorBoard), keeps ``best.pt`` at the best ``monitor`` score (written
atomically after ``last.pt``) and checkpoints the best score, so a resumed run never replaces
``best.pt`` by worse weights.

The probed network is the one checkpoints keep as ``trunk`` (``method.export_backbone()``): the
EMA teacher's backbone for DINO (its paper evaluates the teacher) and the online backbone for
the others (SimCLR, MoCo v2/v3, BYOL, SwAV, Barlow Twins, MAE, MaskFeat: their papers keep the
online encoder, BYOL's target included). It runs in eval mode (BatchNorm running statistics,
no dropout), without gradients and in fp32, so evaluating never changes the training run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import torch
from torch import Tensor, nn

from pathssl.train.embed import embed_tiles
from pathssl.train.loop import Validation

__all__ = ["Evaluator", "online_validation", "probed_network"]


class Evaluator(Protocol):
    """An online probe.

    ``monitor``: the name of the score (higher is better) that selects ``best.pt``.
    ``prepare(tile_mpp)``: called once before training, on the process that evaluates (rank 0),
    with the pretraining tiles' micrometres per pixel: read the labelled images now, so a bad
    input fails at the start and not at step N. ``__call__(features)``: ``features`` maps
    ``(B, 3, H, W)`` uint8 RGB images (any device) to ``(B, D)`` float32 CPU features of the
    frozen encoder; returns scores by name, ``monitor`` among them."""

    monitor: str

    def prepare(self, tile_mpp: float | None) -> None: ...

    def __call__(self, features: Callable[[Tensor], Tensor]) -> dict[str, float]: ...


def probed_network(method: nn.Module) -> tuple[nn.Module, str]:
    """The network the probe scores (``method.export_backbone()``, else ``method``) and a
    phrase naming it: ``"the online backbone"`` or ``"the EMA teacher's backbone"``."""
    export = getattr(method, "export_backbone", None)
    trunk: nn.Module = export() if callable(export) else method
    own = getattr(method, "backbone", trunk)
    return trunk, "the online backbone" if trunk is own else "the EMA teacher's backbone"


def online_validation(
    method: nn.Module,
    evaluator: Evaluator,
    *,
    every: int,
    select_best: bool,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device,
) -> Validation:
    """The loop's :class:`Validation` running ``evaluator`` every ``every`` steps (and after the
    last) on :func:`probed_network` of ``method``: images normalised by the training tiles'
    ``mean``/``std`` (RGB, [0, 1] scale) on ``device``. ``select_best``: keep ``best.pt`` at
    the best ``evaluator.monitor``. Under DDP only rank 0 evaluates."""
    trunk, _ = probed_network(method)
    mean, std = list(mean), list(std)

    def features(images: Tensor) -> Tensor:
        return embed_tiles(trunk, images.to(device), mean, std).cpu()

    return Validation(
        lambda: evaluator(features),
        every=every,
        monitor=evaluator.monitor,
        mode="max",
        keep_best=select_best,
        main_only=True,
    )
