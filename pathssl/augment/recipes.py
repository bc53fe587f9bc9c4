"""View recipes for SSL methods, registered by name, every parameter explicit (and in configs).

* two views: ``simclr``, ``moco``, ``byol``, ``barlow_twins``;
* multi-crop (2 global + N local): ``dino``, ``swav``;
* single view + patch mask: ``mae``, ``maskfeat``.

Pathology defaults (Kang et al. 2023, "Benchmarking self-supervised learning on diverse
pathology datasets", CVPR): dihedral flips, HED stain jitter, mild brightness / contrast /
saturation, blur, no hue jitter. A recipe runs on the CPU (albumentations, one image:
:meth:`ViewRecipe.cpu`) or batched in torch (:meth:`ViewRecipe.torch`).

Example::

    recipe = build_recipe("simclr", size=224)
    out = recipe.cpu(seed=0)(tile)          # {"views": [uint8 (224, 224, 3)] * 2, ...}
    views = recipe.torch()(batch_uint8)     # {"views": [float (B, 3, 224, 224)] * 2, ...}
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from pathssl.registry import Registry

RECIPES: Registry[Callable[..., ViewRecipe]] = Registry("augment recipe")


@dataclass(frozen=True)
class ViewSpec:
    """One kind of view. ``scale``: area fraction range of the random resized crop;
    ``hed_alpha``/``hed_beta``: HED jitter half-widths (Tellez et al. 2019), applied with
    probability ``hed_p``; ``brightness``/``contrast``/``saturation``: factor half-widths
    around 1, applied with ``color_p``; ``blur_sigma`` in output pixels, with ``blur_p``."""

    size: int = 224
    scale: tuple[float, float] = (0.2, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    dihedral: bool = True
    hed_alpha: float = 0.05
    hed_beta: float = 0.05
    hed_p: float = 0.8
    brightness: float = 0.1
    contrast: float = 0.1
    saturation: float = 0.1
    color_p: float = 0.8
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    gray_p: float = 0.0
    solarize_p: float = 0.0

    def albu(self) -> Any:
        """The CPU pipeline: an ``A.Compose`` of albumentations transforms (uint8 in and out)."""
        import albumentations as A

        from .albu import Dihedral, HEDJitter

        t: list[Any] = [
            A.RandomResizedCrop(
                size=(self.size, self.size), scale=self.scale, ratio=self.ratio, p=1.0
            )
        ]
        if self.dihedral:
            t.append(Dihedral(p=1.0))
        if self.hed_p > 0:
            t.append(HEDJitter(alpha=self.hed_alpha, beta=self.hed_beta, p=self.hed_p))
        if self.color_p > 0:
            t.append(
                A.ColorJitter(
                    brightness=self.brightness,
                    contrast=self.contrast,
                    saturation=self.saturation,
                    hue=0.0,
                    p=self.color_p,
                )
            )
        if self.blur_p > 0:
            t.append(A.GaussianBlur(blur_limit=0, sigma_limit=self.blur_sigma, p=self.blur_p))
        if self.gray_p > 0:
            t.append(A.ToGray(p=self.gray_p))
        if self.solarize_p > 0:
            t.append(A.Solarize(threshold_range=(0.5, 0.5), p=self.solarize_p))
        return A.Compose(t)


@dataclass(frozen=True)
class ViewRecipe:
    """Views to make from one tile: ``views`` is a tuple of (spec, count); ``mask_ratio`` > 0
    adds a random patch mask over ``(size // patch_size) ** 2`` patches of the first view."""

    name: str
    views: tuple[tuple[ViewSpec, int], ...]
    mask_ratio: float = 0.0
    patch_size: int = 16

    @property
    def n_views(self) -> int:
        return sum(c for _, c in self.views)

    @property
    def num_patches(self) -> int:
        return (self.views[0][0].size // self.patch_size) ** 2

    def cpu(self, seed: int | None = None) -> Callable[[np.ndarray], dict[str, Any]]:
        """Callable on one (H, W, 3) uint8 tile -> ``{"views": [uint8 HWC, ...], "patch_mask":
        (num_patches,) bool or None}``; seeded runs are reproducible."""
        composes = []
        for i, (spec, count) in enumerate(self.views):
            c = spec.albu()
            c.set_random_seed(None if seed is None else seed * 1000 + i)
            composes.append((c, count))
        rng = np.random.default_rng(seed)

        def run(image: np.ndarray) -> dict[str, Any]:
            views = [c(image=image)["image"] for c, count in composes for _ in range(count)]
            mask = None
            if self.mask_ratio > 0:
                k = round(self.mask_ratio * self.num_patches)
                mask = np.zeros(self.num_patches, dtype=bool)
                mask[rng.permutation(self.num_patches)[:k]] = True
            return {"views": views, "patch_mask": mask}

        return run

    def torch(self) -> Any:
        """Batched torch module: (B, 3, H, W) uint8 -> ``{"views": [(B, 3, s, s) float in [0, 1],
        ...], "patch_mask": (B, num_patches) bool or None}``; ``forward(x, generator)``."""
        import torch

        from .torch_views import BatchView, random_patch_mask

        recipe = self

        class _Views(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.ops = torch.nn.ModuleList(
                    BatchView(spec) for spec, count in recipe.views for _ in range(count)
                )

            def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> Any:
                views = [op(x, generator) for op in self.ops]
                mask = None
                if recipe.mask_ratio > 0:
                    mask = random_patch_mask(
                        x.shape[0], recipe.num_patches, recipe.mask_ratio, generator
                    ).to(x.device)
                return {"views": views, "patch_mask": mask}

        return _Views()


def _base(**kw: Any) -> ViewSpec:
    clean: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in kw.items()}
    return ViewSpec(**clean)


@RECIPES.register("simclr")
def simclr(
    size: int = 224,
    scale: tuple[float, float] = (0.2, 1.0),
    hed_alpha: float = 0.05,
    hed_beta: float = 0.05,
    brightness: float = 0.1,
    contrast: float = 0.1,
    saturation: float = 0.1,
    blur_p: float = 0.5,
    gray_p: float = 0.0,
) -> ViewRecipe:
    """Two views from the same distribution (SimCLR, Chen et al. 2020), pathology defaults."""
    spec = _base(
        size=size,
        scale=scale,
        hed_alpha=hed_alpha,
        hed_beta=hed_beta,
        brightness=brightness,
        contrast=contrast,
        saturation=saturation,
        blur_p=blur_p,
        gray_p=gray_p,
    )
    return ViewRecipe("simclr", ((spec, 2),))


@RECIPES.register("moco")
def moco(**kw: Any) -> ViewRecipe:
    """MoCo v2 (Chen et al. 2020): the SimCLR views (same parameters)."""
    return replace(simclr(**kw), name="moco")


def _asymmetric(
    name: str,
    size: int,
    scale: tuple[float, float],
    hed_alpha: float,
    hed_beta: float,
    brightness: float,
    contrast: float,
    saturation: float,
    solarize_p: float,
) -> ViewRecipe:
    common = dict(
        size=size,
        scale=scale,
        hed_alpha=hed_alpha,
        hed_beta=hed_beta,
        brightness=brightness,
        contrast=contrast,
        saturation=saturation,
    )
    v1 = _base(**common, blur_p=1.0)
    v2 = _base(**common, blur_p=0.1, solarize_p=solarize_p)
    return ViewRecipe(name, ((v1, 1), (v2, 1)))


@RECIPES.register("byol")
def byol(
    size: int = 224,
    scale: tuple[float, float] = (0.2, 1.0),
    hed_alpha: float = 0.05,
    hed_beta: float = 0.05,
    brightness: float = 0.1,
    contrast: float = 0.1,
    saturation: float = 0.1,
    solarize_p: float = 0.2,
) -> ViewRecipe:
    """Two asymmetric views (BYOL, Grill et al. 2020): always blur one, solarise the other."""
    return _asymmetric(
        "byol", size, scale, hed_alpha, hed_beta, brightness, contrast, saturation, solarize_p
    )


@RECIPES.register("barlow_twins")
def barlow_twins(
    size: int = 224,
    scale: tuple[float, float] = (0.2, 1.0),
    hed_alpha: float = 0.05,
    hed_beta: float = 0.05,
    brightness: float = 0.1,
    contrast: float = 0.1,
    saturation: float = 0.1,
    solarize_p: float = 0.2,
) -> ViewRecipe:
    """Two asymmetric views as in Barlow Twins (Zbontar et al. 2021)."""
    return _asymmetric(
        "barlow_twins",
        size,
        scale,
        hed_alpha,
        hed_beta,
        brightness,
        contrast,
        saturation,
        solarize_p,
    )


def _multicrop(
    name: str,
    size: int,
    local_size: int,
    n_local: int,
    global_scale: tuple[float, float],
    local_scale: tuple[float, float],
    hed_alpha: float,
    hed_beta: float,
    solarize_p: float,
) -> ViewRecipe:
    g1 = _base(size=size, scale=global_scale, hed_alpha=hed_alpha, hed_beta=hed_beta, blur_p=1.0)
    g2 = replace(g1, blur_p=0.1, solarize_p=solarize_p)
    loc = replace(g1, size=local_size, scale=(local_scale[0], local_scale[1]), blur_p=0.5)
    views = ((g1, 1), (g2, 1)) + (((loc, n_local),) if n_local > 0 else ())
    return ViewRecipe(name, views)


@RECIPES.register("dino")
def dino(
    size: int = 224,
    local_size: int = 96,
    n_local: int = 6,
    global_scale: tuple[float, float] = (0.4, 1.0),
    local_scale: tuple[float, float] = (0.05, 0.4),
    hed_alpha: float = 0.05,
    hed_beta: float = 0.05,
    solarize_p: float = 0.2,
) -> ViewRecipe:
    """Multi-crop (DINO, Caron et al. 2021): 2 global + ``n_local`` local views."""
    return _multicrop(
        "dino",
        size,
        local_size,
        n_local,
        global_scale,
        local_scale,
        hed_alpha,
        hed_beta,
        solarize_p,
    )


@RECIPES.register("swav")
def swav(
    size: int = 224,
    local_size: int = 96,
    n_local: int = 6,
    global_scale: tuple[float, float] = (0.14, 1.0),
    local_scale: tuple[float, float] = (0.05, 0.14),
    hed_alpha: float = 0.05,
    hed_beta: float = 0.05,
) -> ViewRecipe:
    """Multi-crop (SwAV, Caron et al. 2020): 2 global + ``n_local`` local views."""
    return _multicrop(
        "swav", size, local_size, n_local, global_scale, local_scale, hed_alpha, hed_beta, 0.0
    )


def _masked(
    name: str,
    size: int,
    scale: tuple[float, float],
    mask_ratio: float,
    patch_size: int,
    hed_alpha: float,
    hed_beta: float,
) -> ViewRecipe:
    spec = _base(
        size=size, scale=scale, hed_alpha=hed_alpha, hed_beta=hed_beta, color_p=0.0, blur_p=0.0
    )
    return ViewRecipe(name, ((spec, 1),), mask_ratio=mask_ratio, patch_size=patch_size)


@RECIPES.register("mae")
def mae(
    size: int = 224,
    scale: tuple[float, float] = (0.2, 1.0),
    mask_ratio: float = 0.75,
    patch_size: int = 16,
    hed_alpha: float = 0.05,
    hed_beta: float = 0.05,
) -> ViewRecipe:
    """One view + random patch mask (MAE, He et al. 2022)."""
    return _masked("mae", size, scale, mask_ratio, patch_size, hed_alpha, hed_beta)


@RECIPES.register("maskfeat")
def maskfeat(
    size: int = 224,
    scale: tuple[float, float] = (0.5, 1.0),
    mask_ratio: float = 0.4,
    patch_size: int = 16,
    hed_alpha: float = 0.05,
    hed_beta: float = 0.05,
) -> ViewRecipe:
    """One view + random patch mask (MaskFeat, Wei et al. 2022; random, not block, masking)."""
    return _masked("maskfeat", size, scale, mask_ratio, patch_size, hed_alpha, hed_beta)


def build_recipe(name: str, **params: Any) -> ViewRecipe:
    """``RECIPES.build(name, **params)`` with YAML lists turned into tuples."""
    return RECIPES.build(
        name, **{k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}
    )


def load_recipe(name_or_path: str | Path, **overrides: Any) -> ViewRecipe:
    """A recipe by registered name, or from a YAML config ``{recipe: NAME, params: {...}}``
    (``configs/augment/*.yaml``); ``overrides`` replace config parameters."""
    p = Path(name_or_path)
    if p.suffix in {".yaml", ".yml"} or p.is_file():
        import yaml

        cfg = yaml.safe_load(p.read_text()) or {}
        return build_recipe(cfg["recipe"], **{**(cfg.get("params") or {}), **overrides})
    return build_recipe(str(name_or_path), **overrides)
