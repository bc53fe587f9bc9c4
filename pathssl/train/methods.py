"""The method and its views from a :class:`PretrainConfig` (used by
:func:`pathssl.train.build.build_trainer` and ``pathssl augment-preview``): the registered
method and backbone with their checked keyword arguments, the view recipe (the method's own,
``augment.recipe`` or the method's default), SyncBN across GPUs, the mask grid of masking
recipes."""

from __future__ import annotations

import dataclasses
import difflib
import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

import pathssl.ssl  # noqa: F401  (registers every method)
from pathssl.augment import RECIPES, ViewRecipe, build_recipe
from pathssl.models.backbones import BACKBONES, build_backbone
from pathssl.ssl.base import METHODS, SSLMethod, recipe_for
from pathssl.train.config import ConfigError, PretrainConfig


def check_kwargs(fn: Callable[..., Any], kwargs: dict[str, Any], where: str) -> None:
    """Fail with the key and its nearest valid names if ``fn`` takes no such keyword."""
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    valid = [n for n in params if n != "backbone"]
    for key in kwargs:
        if key not in valid:
            near = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
            hint = f"; did you mean {' or '.join(repr(n) for n in near)}?" if near else ""
            raise ConfigError(
                f"unknown config key '{where}.{key}'{hint} (valid: {', '.join(valid)})"
            )


def _registered(registry: Any, name: str, key: str) -> Callable[..., Any]:
    if name not in registry:
        near = difflib.get_close_matches(name, registry.names(), n=3, cutoff=0.4)
        hint = f"; did you mean {' or '.join(repr(n) for n in near)}?" if near else ""
        raise ConfigError(
            f"{key}: unknown {registry.kind} {name!r}{hint} (known: {', '.join(registry.names())})"
        )
    fn: Callable[..., Any] = registry.get(name)
    return fn


def recipe_name(method: str, recipe: str | None) -> str:
    """The view recipe for ``method``: ``recipe`` if given, else the method's
    ``default_recipe``, else the recipe of the same name (``moco_v2``/``moco_v3`` use ``moco``):
    :func:`pathssl.ssl.base.recipe_for`."""
    return recipe_for(method, recipe)


def build_views(cfg: PretrainConfig) -> ViewRecipe:
    """The run's view recipe: the one the method builds itself (multi-task: its tasks'), else
    ``augment.recipe`` (or the method's) with ``augment.params``."""
    m_cls = _registered(METHODS, cfg.method.name, "method.name")
    own = m_cls.own_recipe(dict(cfg.method.params), dict(cfg.augment.params))  # type: ignore[attr-defined]
    if own is not None:
        if cfg.augment.recipe:
            raise ConfigError(
                f"method {cfg.method.name!r} builds its own views: drop augment.recipe "
                f"({cfg.augment.recipe!r}) and set each part's recipe in method.params"
            )
        assert isinstance(own, ViewRecipe)
        return own
    name = recipe_name(cfg.method.name, cfg.augment.recipe)
    check_kwargs(_registered(RECIPES, name, "augment.recipe"), cfg.augment.params, "augment.params")
    return build_recipe(name, **cfg.augment.params)


def build_method(
    cfg: PretrainConfig, recipe: ViewRecipe, num_classes: int | None = None
) -> SSLMethod:
    """Backbone + method from the config; ViT ``image_size`` and multi-crop ``n_local_views``
    default to the recipe's (global view size, number of views beyond 2); a method that takes
    ``num_classes`` gets the labelled set's (``num_classes``, when given), one that takes
    ``augment_params`` gets ``augment.params`` (multi-task: every task's recipe)."""
    bb_fn = _registered(BACKBONES, cfg.model.backbone, "model.backbone")
    bb_params = dict(cfg.model.params)
    check_kwargs(bb_fn, bb_params, "model.params")
    if "image_size" in inspect.signature(bb_fn).parameters:
        bb_params.setdefault("image_size", recipe.views[0][0].size)
    m_fn = _registered(METHODS, cfg.method.name, "method.name")
    m_params = dict(cfg.method.params)
    check_kwargs(m_fn, m_params, "method.params")
    signature = inspect.signature(m_fn).parameters
    if "n_local_views" in signature:
        m_params.setdefault("n_local_views", max(0, recipe.n_views - 2))
    if "augment_params" in signature:
        m_params.setdefault("augment_params", dict(cfg.augment.params))
    if num_classes is not None and "num_classes" in signature:
        given = m_params.setdefault("num_classes", num_classes)
        if given != num_classes:
            raise ConfigError(
                f"method.params.num_classes {given} differs from the {num_classes} classes of "
                "data.labelled: drop method.params.num_classes"
            )
    if recipe.mask_ratio > 0 and "mask_ratio" in inspect.signature(m_fn).parameters:
        # the recipe draws the mask (augment.params.mask_ratio): one ratio, stated once
        given = m_params.setdefault("mask_ratio", recipe.mask_ratio)
        if abs(float(given) - recipe.mask_ratio) > 1e-9:
            raise ConfigError(
                f"method.params.mask_ratio {given} differs from the view recipe's mask_ratio "
                f"{recipe.mask_ratio}: the recipe draws the mask; set augment.params.mask_ratio "
                "and drop method.params.mask_ratio"
            )
    try:
        method = METHODS.build(
            cfg.method.name, backbone=build_backbone(cfg.model.backbone, **bb_params), **m_params
        )
    except TypeError as exc:
        raise ConfigError(
            f"method {cfg.method.name!r} with backbone {cfg.model.backbone!r}: {exc}"
        ) from None
    assert isinstance(method, SSLMethod)
    need = method.n_global_views + method.n_local_views
    if recipe.n_views < need:
        raise ConfigError(
            f"method {cfg.method.name!r} needs {need} views, recipe {recipe.name!r} makes "
            f"{recipe.n_views}"
        )
    return method


def sync_batchnorm(method: SSLMethod, world_size: int, device: torch.device) -> SSLMethod:
    """Across several CUDA processes every BatchNorm of the method (a ResNet's, and the MLP
    heads' of a ViT method such as MoCo v3's projector and predictor) becomes a SyncBatchNorm,
    so its statistics are the global batch's. Unchanged on one process or on the CPU, and for a
    method that says ``sync_bn = False`` (MoCo v2 with Shuffle-BN: global statistics would undo
    the shuffle; the reference uses no SyncBN)."""
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in method.modules())
    wanted = getattr(method, "sync_bn", True)
    if world_size > 1 and device.type == "cuda" and has_bn and wanted:
        converted = nn.SyncBatchNorm.convert_sync_batchnorm(method)
        assert isinstance(converted, SSLMethod)
        return converted
    return method


def align_mask(recipe: ViewRecipe, method: SSLMethod) -> ViewRecipe:
    """A masking recipe's patch grid follows the backbone's patch size (a ViT's 16 px patches,
    or a test ViT's smaller ones), so the mask it draws fits the method's tokens."""
    patch = getattr(method.backbone, "patch_size", None)
    if recipe.mask_ratio > 0 and patch is not None and patch != recipe.patch_size:
        return dataclasses.replace(recipe, patch_size=int(patch))
    return recipe
