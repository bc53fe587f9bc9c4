"""A view recipe: the views to make from one tile, on the CPU (albumentations, one tile at a
time) or batched in torch, with the same semantics (:mod:`.view_spec` gives the steps).

Both backends return ``{"views": [...], "patch_mask": ..., "scale": [...], "mpp": [...]}``:
``scale`` holds, per view, the tile pixels per view pixel (the square root of the crop box's area
over the view's; a field-of-view view's is exactly its ``fov_side / size``), and ``mpp`` is
``tile_mpp * scale`` when the tile's resolution is given (``None`` otherwise): physical
resolution travels with each view.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .geometry import fov_centre
from .view_spec import ViewSpec


@dataclass(frozen=True)
class ViewRecipe:
    """Views to make from one tile: ``views`` is a tuple of (spec, count); ``mask_ratio`` > 0
    adds a patch mask over the ``(size // patch_size) ** 2`` patches of the first view, drawn
    ``mask_mode`` ``random`` or ``block`` (:func:`pathssl.augment.masking.patch_mask`). The
    views with ``fov_scale`` > 0 are fields of view around one centre per tile, drawn uniformly
    where the largest of them fits inside the tile."""

    name: str
    views: tuple[tuple[ViewSpec, int], ...]
    mask_ratio: float = 0.0
    patch_size: int = 16
    mask_mode: str = "random"

    @property
    def grid(self) -> tuple[int, int]:
        g = self.views[0][0].size // self.patch_size
        return g, g

    @property
    def n_views(self) -> int:
        return sum(c for _, c in self.views)

    @property
    def num_patches(self) -> int:
        return (self.views[0][0].size // self.patch_size) ** 2

    @property
    def fov_side(self) -> int:
        """The largest field of view in tile pixels (0: no field-of-view view)."""
        return max((spec.fov_side for spec, _ in self.views), default=0)

    def check_tile(self, height: int, width: int | None = None) -> None:
        """``ValueError`` when the recipe's fields of view do not fit (height, width) tiles."""
        width = height if width is None else width
        for spec, _ in self.views:
            if spec.fov_side > min(height, width):
                raise ValueError(
                    f"fov_scale {spec.fov_scale} of a {spec.size} px view needs a "
                    f"{spec.fov_side} px field, tiles are {width}x{height} px: lower size or "
                    "fov_scales, or tile with more context (pathssl tile --size)"
                )

    def check_inputs(self) -> None:
        """Read every file the views name (statistics, targets): errors before any compute."""
        for spec, _ in self.views:
            spec.check_inputs()

    def cpu(
        self, seed: int | None = None, tile_mpp: float | None = None
    ) -> Callable[[np.ndarray], dict[str, Any]]:
        """Callable on one (H, W, 3) uint8 tile -> ``{"views": [uint8 HWC, ...], "patch_mask":
        (num_patches,) bool or None, "scale": [float, ...], "mpp": [float, ...] or None}``;
        seeded runs are reproducible."""
        import torch

        from .masking import patch_mask

        composes = []
        for i, (spec, count) in enumerate(self.views):
            c = spec.albu()
            c.set_random_seed(None if seed is None else seed * 1000 + i)
            composes.append((spec, c, count))
        masks = torch.Generator()
        if seed is None:
            masks.seed()
        else:
            masks.manual_seed(seed)
        centres = np.random.default_rng(None if seed is None else [seed, 1])
        big = self.fov_side

        def run(image: np.ndarray) -> dict[str, Any]:
            extra: dict[str, Any] = {}
            if big:
                h, w = image.shape[:2]
                self.check_tile(h, w)
                u = centres.uniform(size=2)
                extra["fov_centre"] = (fov_centre(u[0], big, w), fov_centre(u[1], big, h))
            views, scales = [], []
            for spec, c, count in composes:
                kw = extra if spec.fov_scale > 0 else {}
                for _ in range(count):
                    out = c(image=image, **kw)
                    views.append(out["image"])
                    scales.append(_crop_scale(out["applied_transforms"], spec.size))
            mask = None
            if self.mask_ratio > 0:
                mask = patch_mask(1, self.grid, self.mask_ratio, self.mask_mode, masks)[0].numpy()
            mpp = None if tile_mpp is None else [tile_mpp * s for s in scales]
            return {"views": views, "patch_mask": mask, "scale": scales, "mpp": mpp}

        return run

    def torch(self, tile_mpp: float | None = None) -> Any:
        """Batched torch module: (B, 3, H, W) uint8 -> ``{"views": [(B, 3, s, s) float in [0, 1],
        ...], "patch_mask": (B, num_patches) bool or None, "scale": [(B,) float64, ...],
        "mpp": [(B,) float64, ...] or None}``; ``forward(x, generator)``."""
        import torch

        from .masking import patch_mask
        from .torch_geometry import fov_boxes
        from .torch_views import BatchView

        recipe = self

        class _Views(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.ops = torch.nn.ModuleList(
                    BatchView(spec) for spec, count in recipe.views for _ in range(count)
                )

            def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> Any:
                n, h, w = x.shape[0], x.shape[-2], x.shape[-1]
                ops: list[BatchView] = list(self.ops)  # type: ignore[arg-type]
                fov = [i for i, op in enumerate(ops) if op.spec.fov_scale > 0]
                boxes: dict[int, torch.Tensor] = {}
                if fov:
                    recipe.check_tile(h, w)
                    sides = tuple(float(ops[i].spec.fov_side) for i in fov)
                    boxes = dict(zip(fov, fov_boxes(n, h, w, 1.0, sides, generator), strict=True))
                normalised: dict[Any, torch.Tensor] = {}
                views, scales = [], []
                for i, op in enumerate(ops):
                    key = op.spec.norm_key
                    if key not in normalised:
                        normalised[key] = op.normalise(x)
                    v, s = op.run(normalised[key], generator, boxes.get(i), normalised=True)
                    views.append(v)
                    scales.append(s)
                mask = None
                if recipe.mask_ratio > 0:
                    grid, ratio, mode = recipe.grid, recipe.mask_ratio, recipe.mask_mode
                    mask = patch_mask(x.shape[0], grid, ratio, mode, generator, device=x.device)
                mpp = None if tile_mpp is None else [s * tile_mpp for s in scales]
                return {"views": views, "patch_mask": mask, "scale": scales, "mpp": mpp}

        return _Views()


def _crop_scale(applied: list[tuple[str, dict[str, Any]]], size: int) -> float:
    """Tile pixels per view pixel from the crop box albumentations recorded."""
    for _, params in applied:
        if "crop_coords" in params:
            x0, y0, x1, y1 = params["crop_coords"]
            return float(np.sqrt((x1 - x0) * (y1 - y0)) / size)
    raise ValueError("the view pipeline recorded no crop")
