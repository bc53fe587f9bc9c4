"""What a batch means to the training loop (:class:`pathssl.train.loop.BatchStep`).

:class:`ViewStep` (SSL): uint8 tiles ``(B, 3, S, S)`` (decoded by DataLoader workers, or JPEG bytes
decoded on the GPU) -> batched views on the device (``recipe.torch()``), normalised by the
training tiles' mean/std -> ``method(views)`` (plus the recipe's patch mask, and each tile's
dataset index for a method that asks for it). :class:`LabelledViewStep`: the same plus a labelled
stream (S4L, supervised): the labelled images' views from the same recipe, with their labels, as
``method(views, labelled=LabelledBatch)``. :class:`SupervisedStep`: ``{"image", **targets}``
-> ``module(images, targets)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from pathssl.data import decode_jpeg_batch
from pathssl.ssl.base import LabelledBatch


class ViewInputs(NamedTuple):
    """What :meth:`ViewStep.prepare` gives :meth:`ViewStep.forward`."""

    views: list[Tensor]  #: normalised views (B, 3, s, s) float
    patch_mask: Tensor | None  #: the recipe's (B, N) bool patch mask, or None
    tile_index: Tensor | None  #: the tiles' dataset indices (B,) long on the device, or None
    labelled: LabelledBatch | None = None  #: labelled views + labels (needs_labels methods)


class ViewStep:
    """SSL: uint8 tiles -> normalised views -> ``model(views)``.

    ``views``: a module ``(B, 3, S, S) uint8 -> {"views": [(B, 3, s, s) float in [0, 1]]}``
    called as ``views(x, generator)``; ``mean``/``std``: per-channel normalisation (RGB, [0, 1]
    scale). The model gets ``patch_mask=`` when the recipe draws one (the masked methods) and
    ``index=`` (the batch's ``"index"``) when the method's ``needs_index`` is set (PIRL's memory
    bank)."""

    def __init__(
        self,
        views: nn.Module,
        mean: Sequence[float],
        std: Sequence[float],
        device: torch.device,
        generator: torch.Generator,
        channels_last: bool = False,
    ) -> None:
        self.views = views
        self.device = device
        self.generator = generator
        self.channels_last = channels_last
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)

    def images(self, batch: dict[str, Any]) -> Tensor:
        """The batch's tiles as ``(B, 3, S, S)`` uint8 on the device."""
        if "jpeg" in batch:
            return decode_jpeg_batch(batch["jpeg"], self.device)
        x: Tensor = batch["image"]
        return x.to(self.device, non_blocking=True)

    @torch.no_grad()
    def make_views(self, images: Tensor) -> tuple[list[Tensor], Tensor | None]:
        """(normalised views, the recipe's ``(B, N)`` bool patch mask or None)."""
        out = self.views(images, self.generator)
        views = [(v.float() - self.mean) / self.std for v in out["views"]]
        if self.channels_last:
            views = [v.contiguous(memory_format=torch.channels_last) for v in views]
        return views, out.get("patch_mask")

    def prepare(self, batch: dict[str, Any]) -> ViewInputs:
        views, mask = self.make_views(self.images(batch))
        index = batch.get("index")
        if index is not None:
            index = index.to(self.device, non_blocking=True)
        return ViewInputs(views, mask, index)

    def forward(self, model: nn.Module, inputs: ViewInputs) -> dict[str, Tensor]:
        """``model(views)``, with ``patch_mask=mask`` for a masking recipe (the masked methods
        take their mask from the recipe: one place) and ``index=index`` for a method whose
        ``needs_index`` is set (``model`` may be its DDP wrapper)."""
        kwargs: dict[str, Tensor] = {}
        if inputs.patch_mask is not None:
            kwargs["patch_mask"] = inputs.patch_mask
        if getattr(getattr(model, "module", model), "needs_index", False):
            if inputs.tile_index is None:
                raise ValueError("the method needs each tile's dataset index: batch has no 'index'")
            kwargs["index"] = inputs.tile_index
        if inputs.labelled is not None:
            out: dict[str, Tensor] = model(inputs.views, labelled=inputs.labelled, **kwargs)
            return out
        out = model(inputs.views, **kwargs)
        return out


class LabelledViewStep(ViewStep):
    """A :class:`ViewStep` with a labelled stream: batches ``(tiles, labelled)`` (a
    :class:`~pathssl.train.streams.PairedLoader`'s pairs), or ``labelled`` alone with
    ``tiles=False`` (a method that reads no tiles; its ``views`` are then the labelled views).
    ``labelled`` is ``{"image": (B_l, 3, S, S) uint8, "label": (B_l,) int64}``; its views come
    from the same recipe and generator, after the tiles' views."""

    def __init__(self, *args: Any, tiles: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tiles = tiles

    def prepare(self, batch: Any) -> ViewInputs:
        tiles, labelled = batch if self.tiles else (None, batch)
        inputs = super().prepare(tiles) if tiles is not None else None
        views, _ = self.make_views(self.images(labelled))
        labels = labelled["label"].to(self.device, non_blocking=True)
        lab = LabelledBatch(views, labels)
        if inputs is None:
            return ViewInputs(views, None, None, lab)
        return inputs._replace(labelled=lab)


class SupervisedStep:
    """Supervised: ``{image_key: images, **targets}`` -> ``model(images, targets)``."""

    def __init__(self, device: torch.device, image_key: str = "image") -> None:
        self.device = device
        self.image_key = image_key

    def prepare(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        moved = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        return moved.pop(self.image_key), moved

    def forward(
        self, model: nn.Module, inputs: tuple[Tensor, dict[str, Tensor]]
    ) -> dict[str, Tensor]:
        out: dict[str, Tensor] = model(*inputs)
        return out


class MixUpStep:
    """MixUp (Zhang et al. 2018) as an optional transform of a supervised batch: wraps a step
    whose ``prepare`` gives ``(images (B, 3, H, W), {label_key: (B,) int, ...})`` and returns
    ``(lam * x + (1 - lam) * x[perm], {label_key: (B, num_classes) soft targets})`` with
    ``lam ~ Beta(alpha, alpha)`` and ``perm`` a permutation of the batch, both drawn from
    ``generator`` (checkpointed by the loop, so a resumed run mixes the same pairs). The model
    must accept soft targets (``cross_entropy`` does). Images come out as float."""

    def __init__(
        self,
        inner: Any,
        num_classes: int,
        alpha: float,
        generator: torch.Generator,
        label_key: str = "label",
    ) -> None:
        if alpha <= 0:
            raise ValueError(f"mixup alpha must be > 0, got {alpha}")
        self.inner = inner
        self.num_classes = num_classes
        self.alpha = alpha
        self.generator = generator
        self.label_key = label_key

    def draw(self, batch_size: int) -> tuple[float, Tensor]:
        """``(lam, perm (B,) int64 on the CPU)`` for the next batch."""
        import numpy as np

        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=self.generator).item())
        lam = float(np.random.default_rng(seed).beta(self.alpha, self.alpha))
        return lam, torch.randperm(batch_size, generator=self.generator)

    def prepare(self, batch: Any) -> tuple[Tensor, dict[str, Tensor]]:
        images, targets = self.inner.prepare(batch)
        lam, perm = self.draw(images.shape[0])
        perm = perm.to(images.device)
        x = images.float()
        y = nn.functional.one_hot(targets[self.label_key].long(), self.num_classes).float()
        mixed = {**targets, self.label_key: lam * y + (1 - lam) * y[perm]}
        return lam * x + (1 - lam) * x[perm], mixed

    def forward(self, model: nn.Module, inputs: Any) -> dict[str, Tensor]:
        out: dict[str, Tensor] = self.inner.forward(model, inputs)
        return out


class PairedStep:
    """Two data streams in one step (e.g. labelled + unlabelled): the loader yields pairs
    ``(batch_a, batch_b)`` (:class:`~pathssl.train.streams.PairedLoader`), each prepared by its
    own step, and the model is called as ``model(inputs_a, inputs_b)``."""

    def __init__(self, first: Any, second: Any) -> None:
        self.first = first
        self.second = second

    def prepare(self, batch: tuple[Any, Any]) -> tuple[Any, Any]:
        a, b = batch
        return self.first.prepare(a), self.second.prepare(b)

    def forward(self, model: nn.Module, inputs: tuple[Any, Any]) -> dict[str, Tensor]:
        out: dict[str, Tensor] = model(*inputs)
        return out
