"""View recipes for SSL methods, registered by name, every parameter explicit (and in configs).

* two views: ``simclr``, ``moco`` (:func:`same_views`), ``byol``, ``barlow_twins``
  (:func:`asymmetric_views`);
* multi-crop (2 global + N local): ``dino``, ``swav`` (:func:`multi_crop_views`);
* single view + patch mask: ``mae``, ``maskfeat`` (:func:`masked_view`).

A recipe is one of these families plus a table of its keyword parameters and their defaults
(``_register``): the parameters that are :class:`ViewSpec` fields make the family's ``view``,
the others are the family's own. ``inspect.signature(RECIPES.get(name))`` lists them, and an
unknown keyword is a ``TypeError``.

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

import inspect
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
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
    adds a patch mask over the ``(size // patch_size) ** 2`` patches of the first view, drawn
    ``mask_mode`` ``random`` or ``block`` (:func:`pathssl.augment.masking.patch_mask`)."""

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

    def cpu(self, seed: int | None = None) -> Callable[[np.ndarray], dict[str, Any]]:
        """Callable on one (H, W, 3) uint8 tile -> ``{"views": [uint8 HWC, ...], "patch_mask":
        (num_patches,) bool or None}``; seeded runs are reproducible."""
        import torch

        from .masking import patch_mask

        composes = []
        for i, (spec, count) in enumerate(self.views):
            c = spec.albu()
            c.set_random_seed(None if seed is None else seed * 1000 + i)
            composes.append((c, count))
        masks = torch.Generator()
        if seed is None:
            masks.seed()
        else:
            masks.manual_seed(seed)

        def run(image: np.ndarray) -> dict[str, Any]:
            views = [c(image=image)["image"] for c, count in composes for _ in range(count)]
            mask = None
            if self.mask_ratio > 0:
                mask = patch_mask(1, self.grid, self.mask_ratio, self.mask_mode, masks)[0].numpy()
            return {"views": views, "patch_mask": mask}

        return run

    def torch(self) -> Any:
        """Batched torch module: (B, 3, H, W) uint8 -> ``{"views": [(B, 3, s, s) float in [0, 1],
        ...], "patch_mask": (B, num_patches) bool or None}``; ``forward(x, generator)``."""
        import torch

        from .masking import patch_mask
        from .torch_views import BatchView

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
                    grid, ratio, mode = recipe.grid, recipe.mask_ratio, recipe.mask_mode
                    mask = patch_mask(x.shape[0], grid, ratio, mode, generator, device=x.device)
                return {"views": views, "patch_mask": mask}

        return _Views()


def same_views(name: str, view: ViewSpec) -> ViewRecipe:
    """Two views from one distribution ``view`` (the SimCLR family)."""
    return ViewRecipe(name, ((view, 2),))


def asymmetric_views(name: str, view: ViewSpec, solarize_p: float) -> ViewRecipe:
    """Two asymmetric views (the BYOL family): ``view`` always blurred, and ``view`` rarely
    blurred (p = 0.1) and solarised with ``solarize_p``."""
    v1 = replace(view, blur_p=1.0)
    v2 = replace(view, blur_p=0.1, solarize_p=solarize_p)
    return ViewRecipe(name, ((v1, 1), (v2, 1)))


def multi_crop_views(
    name: str,
    view: ViewSpec,
    global_scale: tuple[float, float],
    solarize_p: float,
    local_size: int,
    local_scale: tuple[float, float],
    n_local: int,
) -> ViewRecipe:
    """Multi-crop: the 2 :func:`asymmetric_views` of ``view`` cropped with ``global_scale``,
    then ``n_local`` local views (``local_size``, ``local_scale``, blur p = 0.5)."""
    globals_ = asymmetric_views(name, replace(view, scale=global_scale), solarize_p).views
    loc = replace(globals_[0][0], size=local_size, scale=local_scale, blur_p=0.5)
    return ViewRecipe(name, globals_ + (((loc, n_local),) if n_local > 0 else ()))


def masked_view(
    name: str, view: ViewSpec, mask_ratio: float, patch_size: int, mask_mode: str = "random"
) -> ViewRecipe:
    """One view without colour jitter or blur + a patch mask of ``mask_ratio`` over
    ``patch_size`` patches, ``mask_mode`` random or block
    (:func:`pathssl.augment.masking.patch_mask`)."""
    if mask_mode not in ("random", "block"):
        raise ValueError(f"augment.params.mask_mode must be random or block, got {mask_mode!r}")
    spec = replace(view, color_p=0.0, blur_p=0.0)
    return ViewRecipe(
        name, ((spec, 1),), mask_ratio=mask_ratio, patch_size=patch_size, mask_mode=mask_mode
    )


_VIEW_FIELDS = {f.name for f in fields(ViewSpec)}
#: the stain and colour parameters of the jittered recipes, with their defaults
_COLOUR: dict[str, Any] = {
    "size": 224,
    "scale": (0.2, 1.0),
    "hed_alpha": 0.05,
    "hed_beta": 0.05,
    "brightness": 0.1,
    "contrast": 0.1,
    "saturation": 0.1,
}
_MULTI_CROP: dict[str, Any] = {
    "size": 224,
    "local_size": 96,
    "n_local": 6,
    "global_scale": (0.4, 1.0),
    "local_scale": (0.05, 0.4),
    "hed_alpha": 0.05,
    "hed_beta": 0.05,
    "solarize_p": 0.2,
}
_MASKED: dict[str, Any] = {
    "size": 224,
    "scale": (0.2, 1.0),
    "mask_ratio": 0.75,
    "patch_size": 16,
    "mask_mode": "random",
    "hed_alpha": 0.05,
    "hed_beta": 0.05,
}


def _register(
    name: str, family: Callable[..., ViewRecipe], doc: str, params: dict[str, Any]
) -> None:
    """Register the recipe ``name``: keyword parameters ``params`` (name -> default, in
    order; ``inspect.signature(RECIPES.get(name))`` lists them) -> ``family(name, view,
    **its own parameters)``, where ``view`` is a :class:`ViewSpec` of the other parameters."""
    own = [k for k in inspect.signature(family).parameters if k not in ("name", "view")]
    sig = inspect.Signature(
        [
            inspect.Parameter(
                k, inspect.Parameter.KEYWORD_ONLY, default=v, annotation=_annotation(v)
            )
            for k, v in params.items()
        ],
        return_annotation=ViewRecipe,
    )

    def recipe(**kwargs: Any) -> ViewRecipe:
        try:
            bound = sig.bind(**kwargs)
        except TypeError as e:
            raise TypeError(f"augment recipe {name!r}: {e}") from None
        bound.apply_defaults()
        args: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in bound.arguments.items()
        }
        view = ViewSpec(**{k: v for k, v in args.items() if k not in own})
        return family(name, view, **{k: v for k, v in args.items() if k in own})

    unknown = set(params) - set(own) - _VIEW_FIELDS
    if unknown or set(own) - set(params):
        raise TypeError(f"recipe {name!r}: parameters {params} do not fit {family.__name__}")
    recipe.__signature__ = sig  # type: ignore[attr-defined]
    recipe.__doc__, recipe.__name__, recipe.__qualname__ = doc, name, name
    RECIPES.register(name)(recipe)


def _annotation(default: Any) -> Any:
    return tuple[float, float] if isinstance(default, tuple) else type(default)


_register(
    "simclr",
    same_views,
    "Two views from the same distribution (SimCLR, Chen et al. 2020), pathology defaults.",
    {**_COLOUR, "blur_p": 0.5, "gray_p": 0.0},
)
_register(
    "moco",
    same_views,
    "MoCo v2 (Chen et al. 2020): the SimCLR views (same parameters).",
    {**_COLOUR, "blur_p": 0.5, "gray_p": 0.0},
)
_register(
    "byol",
    asymmetric_views,
    "Two asymmetric views (BYOL, Grill et al. 2020): always blur one, solarise the other.",
    {**_COLOUR, "solarize_p": 0.2},
)
_register(
    "barlow_twins",
    asymmetric_views,
    "Two asymmetric views as in Barlow Twins (Zbontar et al. 2021).",
    {**_COLOUR, "solarize_p": 0.2},
)
_register(
    "dino",
    multi_crop_views,
    "Multi-crop (DINO, Caron et al. 2021): 2 global + ``n_local`` local views.",
    _MULTI_CROP,
)
_register(
    "swav",
    multi_crop_views,
    "Multi-crop (SwAV, Caron et al. 2020): 2 global + ``n_local`` local views, no solarisation.",
    {**_MULTI_CROP, "global_scale": (0.14, 1.0), "local_scale": (0.05, 0.14), "solarize_p": 0.0},
)
_register("mae", masked_view, "One view + random patch mask (MAE, He et al. 2022).", _MASKED)
_register(
    "maskfeat",
    masked_view,
    "One view + block-wise patch mask (MaskFeat, Wei et al. 2022: BEiT's blocks, 40 %).",
    {**_MASKED, "scale": (0.5, 1.0), "mask_ratio": 0.4, "mask_mode": "block"},
)


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
