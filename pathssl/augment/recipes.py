"""View recipes for SSL methods, registered by name, every parameter explicit (and in configs).

* two views: ``simclr``, ``moco`` (:func:`same_views`), ``byol``, ``barlow_twins``
  (:func:`asymmetric_views`);
* multi-crop (2 global + N local): ``dino``, ``swav`` (:func:`multi_crop_views`);
* single view + patch mask: ``mae``, ``maskfeat`` (:func:`masked_view`);
* one view for the pretext tasks, which cut or transform it themselves on the batched path
  (:func:`one_view`): ``rotation`` (no dihedral step: the method's rotation is the label),
  ``jigsaw``, ``context``, ``colorization``, ``split_brain``; ``pirl`` takes the two SimCLR-style
  views (:func:`same_views`).

A recipe is one of these families plus a table of its keyword parameters and their defaults
(``_register``): the parameters that are :class:`ViewSpec` fields make the family's ``view``,
``fov_scales`` places views at two (or more) physical resolutions, the others are the family's
own. ``inspect.signature(RECIPES.get(name))`` lists them, and an unknown keyword is a
``TypeError``.

Pathology defaults (Kang et al. 2023, "Benchmarking self-supervised learning on diverse
pathology datasets", CVPR): dihedral flips, HED stain jitter, mild brightness / contrast /
saturation, blur, no hue jitter. A recipe runs on the CPU (albumentations, one image:
:meth:`ViewRecipe.cpu`) or batched in torch (:meth:`ViewRecipe.torch`), same semantics.

Stain and resolution parameters of every recipe (off by default: existing recipes are unchanged;
full definitions in :class:`ViewSpec`, order of the steps in :mod:`.view_spec`):

* ``hed_alpha``, ``hed_beta``, ``hed_p``: HED jitter (Tellez et al. 2019);
* ``randstain_p`` (0), ``randstain_stats`` (a ``pathssl stain-stats`` YAML),
  ``randstain_std_scale`` (1), ``randstain_gmm`` (false): RandStainNA (Shen et al. 2022);
* ``macenko_p`` (0), ``macenko_sigma``, ``macenko_alpha``, ``macenko_beta``, ``macenko_stains``
  (None: reference H&E vectors; or a stains YAML / an image): Macenko stain augmentation;
* ``stain_norm`` (``none`` | ``reinhard`` | ``macenko``), ``stain_norm_target`` (a stain-stats
  YAML or an image for Reinhard; a stains YAML or an image for Macenko), ``stain_norm_space``
  (Reinhard's colour space, ``lab``): normalisation of the whole tile before cropping;
* ``fov_scales`` (``[]``): multi-field-of-view crops. The i-th number goes to the i-th view
  (the global views first): that view is a square of ``round(size * fov_scale)`` tile pixels
  around a centre shared by these views, resampled to ``size``, so its mpp is the tile's times
  that factor (recorded per view in the output's ``scale`` / ``mpp``). ``[2.0, 1.0]`` with
  ``size: 112`` on 224 px tiles: a wide field (the whole tile, downsampled 2x) and a narrow
  one at full resolution, from the same place. Both fields lie inside the stored tile; for
  full-size views at two resolutions, tile with more context (``pathssl tile --size 448``,
  then ``size: 224``).

File paths are read relative to the working directory (:mod:`.stain_inputs`).

Example::

    recipe = build_recipe("simclr", size=224)
    out = recipe.cpu(seed=0)(tile)          # {"views": [uint8 (224, 224, 3)] * 2, ...}
    views = recipe.torch()(batch_uint8)     # {"views": [float (B, 3, 224, 224)] * 2, ...}
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from pathssl.registry import Registry

from .view_recipe import ViewRecipe
from .view_spec import VIEW_FIELDS, ViewSpec

RECIPES: Registry[Callable[..., ViewRecipe]] = Registry("augment recipe")


def same_views(name: str, view: ViewSpec) -> ViewRecipe:
    """Two views from one distribution ``view`` (the SimCLR family)."""
    return ViewRecipe(name, ((view, 2),))


def one_view(name: str, view: ViewSpec) -> ViewRecipe:
    """One view from ``view`` (the pretext tasks: rotation, jigsaw, context, colorization)."""
    return ViewRecipe(name, ((view, 1),))


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


def with_fov(recipe: ViewRecipe, fov_scales: tuple[float, ...]) -> ViewRecipe:
    """``recipe`` with its first ``len(fov_scales)`` views turned into fields of view at those
    scales (:attr:`ViewSpec.fov_scale`; 0 keeps a view's random resized crop)."""
    if not fov_scales:
        return recipe
    flat = [spec for spec, count in recipe.views for _ in range(count)]
    if len(fov_scales) > len(flat):
        raise ValueError(
            f"fov_scales: {len(fov_scales)} scales for the {len(flat)} views of recipe "
            f"{recipe.name!r}"
        )
    n = len(fov_scales)
    fovs = [replace(s, fov_scale=float(f)) for s, f in zip(flat[:n], fov_scales, strict=True)]
    flat = fovs + flat[n:]
    groups: list[tuple[ViewSpec, int]] = []
    for spec in flat:
        if groups and groups[-1][0] == spec:
            groups[-1] = (spec, groups[-1][1] + 1)
        else:
            groups.append((spec, 1))
    return replace(recipe, views=tuple(groups))


#: the stain and resolution parameters every recipe takes (all off by default)
_STAIN: dict[str, Any] = {
    "hed_p": 0.8,
    "randstain_p": 0.0,
    "randstain_stats": None,
    "randstain_std_scale": 1.0,
    "randstain_gmm": False,
    "macenko_p": 0.0,
    "macenko_stains": None,
    "macenko_sigma": 0.05,
    "macenko_alpha": 0.1,
    "macenko_beta": 0.05,
    "stain_norm": "none",
    "stain_norm_target": None,
    "stain_norm_space": "lab",
    "fov_scales": (),
}
#: the stain and colour parameters of the jittered recipes, with their defaults
_COLOUR: dict[str, Any] = {
    "size": 224,
    "scale": (0.2, 1.0),
    "hed_alpha": 0.05,
    "hed_beta": 0.05,
    "brightness": 0.1,
    "contrast": 0.1,
    "saturation": 0.1,
    **_STAIN,
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
    **_STAIN,
}
_MASKED: dict[str, Any] = {
    "size": 224,
    "scale": (0.2, 1.0),
    "mask_ratio": 0.75,
    "patch_size": 16,
    "mask_mode": "random",
    "hed_alpha": 0.05,
    "hed_beta": 0.05,
    **_STAIN,
}


def _register(
    name: str, family: Callable[..., ViewRecipe], doc: str, params: dict[str, Any]
) -> None:
    """Register the recipe ``name``: keyword parameters ``params`` (name -> default, in
    order; ``inspect.signature(RECIPES.get(name))`` lists them) -> ``family(name, view,
    **its own parameters)``, where ``view`` is a :class:`ViewSpec` of the other parameters,
    then :func:`with_fov` with ``fov_scales``."""
    own = [k for k in inspect.signature(family).parameters if k not in ("name", "view")]
    sig = inspect.Signature(
        [
            inspect.Parameter(
                k, inspect.Parameter.KEYWORD_ONLY, default=v, annotation=_annotation(k, v)
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
        fov_scales = tuple(float(f) for f in args.pop("fov_scales", ()))
        view = ViewSpec(**{k: v for k, v in args.items() if k not in own})
        return with_fov(
            family(name, view, **{k: v for k, v in args.items() if k in own}), fov_scales
        )

    unknown = set(params) - set(own) - set(VIEW_FIELDS) - {"fov_scales"}
    if unknown or set(own) - set(params):
        raise TypeError(f"recipe {name!r}: parameters {params} do not fit {family.__name__}")
    recipe.__signature__ = sig  # type: ignore[attr-defined]
    recipe.__doc__, recipe.__name__, recipe.__qualname__ = doc, name, name
    RECIPES.register(name)(recipe)


def _annotation(name: str, default: Any) -> Any:
    if name == "fov_scales":
        return tuple[float, ...]
    if default is None:
        return VIEW_FIELDS[name].type  # e.g. "str | None"
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


_register(
    "rotation",
    one_view,
    "One view without the dihedral step: the method rotates it (Gidaris et al. 2018).",
    {**_COLOUR, "scale": (0.4, 1.0), "dihedral": False, "blur_p": 0.0},
)
_register(
    "jigsaw",
    one_view,
    "One 225 px view cut into 3x3 jittered patches by the method (Noroozi & Favaro 2016).",
    {**_COLOUR, "size": 225, "scale": (0.4, 1.0), "blur_p": 0.0, "gray_p": 0.3},
)
_register(
    "context",
    one_view,
    "One view; the method takes a centre patch and a neighbour (Doersch et al. 2015).",
    {**_COLOUR, "scale": (0.4, 1.0), "blur_p": 0.0, "gray_p": 0.3},
)
_register(
    "pirl",
    same_views,
    "Two views: the image and the one the method cuts into a jigsaw (Misra & van der Maaten 2020).",
    {**_COLOUR, "blur_p": 0.5, "gray_p": 0.2},
)

_register(
    "colorization",
    one_view,
    "One view whose colour is the target (Zhang et al. 2016): stain jitter, no grey or "
    "saturation jitter.",
    {**_COLOUR, "scale": (0.4, 1.0), "saturation": 0.0, "blur_p": 0.0, "gray_p": 0.0},
)
_register(
    "split_brain",
    one_view,
    "One view split into two channel groups that predict each other (Zhang et al. 2017).",
    {**_COLOUR, "scale": (0.4, 1.0), "saturation": 0.0, "blur_p": 0.0, "gray_p": 0.0},
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
