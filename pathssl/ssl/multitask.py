"""Multi-task self-supervision: Doersch & Zisserman, "Multi-task Self-Supervised Visual
Learning", ICCV 2017, arXiv:1708.07860.

One trunk, several registered methods as tasks, one optimiser step on the weighted sum of their
losses::

    method:
      name: multitask
      params:
        tasks:
          rotation: 1.0                                   # weight only
          simclr: {weight: 0.5, params: {proj_dim: 64}, augment: {blur_p: 0.0}}

Each task keeps its own heads (and target networks, queues, ...) and gets its own views, made by
its own recipe (``recipe``, else the task method's; ``augment.params`` for every task, then the
task's ``augment``), all from the same tiles: the run's recipe is the tasks' recipes one after
the other (:meth:`MultiTask.own_recipe`), and ``forward`` hands each task its slice. Per-task
losses and logs are returned as ``<task>/<key>``. Recipes that draw a patch mask (MAE,
MaskFeat) and tasks that take labels are refused. The trunk checkpoints keep is the shared one.

``lasso=True`` (the paper's Sec. 3.2, ResNets only): each task reads a learned mixture of the
trunk's stages instead of its last one, ``sum_s alpha_{t,s} P_s(pool(tap_s(x)))`` over the taps
``lasso_taps`` of ``forward_taps`` (strides 2 ** (i + 1)), with linear maps ``P_s`` to the
trunk's width shared by the tasks (the last one starts as the identity) and per-task
coefficients ``alpha_t`` (starting one-hot on the last listed tap) under an L1 penalty
``lasso_l1 * sum |alpha|``. Only pooled features are mixed: a task that reads feature maps
(colorization) cannot take part. (Here the lasso checkpoints hold the trunk once more per task.)
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from pathssl.augment import ViewRecipe, build_recipe
from pathssl.config import ConfigError
from pathssl.models.backbones import Backbone
from pathssl.ssl.base import METHODS, SSLMethod, recipe_for

KEY = "method.params.tasks"
TASK_KEYS = ("weight", "params", "recipe", "augment")


@dataclass(frozen=True)
class TaskSpec:
    """One task: a registered method ``name``, its loss ``weight``, its keyword ``params``, its
    view ``recipe`` (None: the method's) and ``augment`` parameters over ``augment.params``."""

    name: str
    weight: float = 1.0
    params: dict[str, Any] = field(default_factory=dict)
    recipe: str | None = None
    augment: dict[str, Any] = field(default_factory=dict)


def task_specs(tasks: Mapping[str, Any]) -> list[TaskSpec]:
    """``method.params.tasks`` (task name -> weight, or -> ``{weight, params, recipe,
    augment}``) as :class:`TaskSpec` s, checked: registered methods, no labels, no nesting."""
    if not isinstance(tasks, Mapping) or not tasks:
        raise ConfigError(f"{KEY}: name one or more registered methods with weights", KEY)
    out = []
    for name, spec in tasks.items():
        where = f"{KEY}.{name}"
        if name not in METHODS or name == "multitask":
            known = ", ".join(n for n in METHODS.names() if n != "multitask")
            raise ConfigError(f"{where}: {name!r} is not a method a task can be ({known})", where)
        cls = METHODS.get(name)
        if getattr(cls, "needs_labels", False):
            raise ConfigError(f"{where}: {name} trains on labels; a task here cannot", where)
        if isinstance(spec, bool) or not isinstance(spec, int | float | Mapping):
            raise ConfigError(f"{where}: expected a weight or a mapping, got {spec!r}", where)
        if not isinstance(spec, Mapping):
            spec = {"weight": spec}
        unknown = sorted(set(spec) - set(TASK_KEYS))
        if unknown:
            raise ConfigError(
                f"unknown config key '{where}.{unknown[0]}' (valid: {', '.join(TASK_KEYS)})", where
            )
        weight = spec.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, int | float) or weight < 0:
            raise ConfigError(f"{where}.weight must be a number >= 0, got {weight!r}", where)
        out.append(
            TaskSpec(
                str(name),
                float(weight),
                dict(spec.get("params") or {}),
                spec.get("recipe"),
                dict(spec.get("augment") or {}),
            )
        )
    return out


def task_recipe(spec: TaskSpec, augment_params: Mapping[str, Any]) -> ViewRecipe:
    """The views of one task: its recipe with ``augment.params`` then the task's ``augment``."""
    where = f"{KEY}.{spec.name}"
    name = recipe_for(spec.name, spec.recipe)
    try:
        recipe = build_recipe(name, **{**augment_params, **spec.augment})
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: recipe {name!r}: {exc}", where) from None
    if recipe.mask_ratio > 0:
        raise ConfigError(f"{where}: recipe {name!r} draws a patch mask; not in a multi-task run")
    return recipe


def _check_params(cls: Any, params: Mapping[str, Any], where: str) -> None:
    valid = [n for n in inspect.signature(cls).parameters if n != "backbone"]
    for key in params:
        if key not in valid:
            raise ConfigError(
                f"unknown config key '{where}.params.{key}' (valid: {', '.join(valid)})", where
            )


class StageMixture(nn.Module):
    """One task's view of the trunk under ``lasso``: ``(B, 3, H, W)`` ->
    ``sum_s alpha_s P_s(mean_hw(tap_s(x)))`` ``(B, embed_dim)``, ``alpha`` ``(S,)`` learned."""

    def __init__(self, trunk: nn.Module, projections: nn.ModuleList, taps: list[int]) -> None:
        super().__init__()
        self.trunk = trunk
        self.projections = projections
        self.taps = list(taps)
        self.embed_dim: int = int(trunk.embed_dim)  # type: ignore[arg-type]
        alpha = torch.zeros(len(taps))
        alpha[-1] = 1.0
        self.alpha = nn.Parameter(alpha)

    def forward(self, x: Tensor) -> Tensor:
        maps = self.trunk.forward_taps(x)  # type: ignore[operator]
        feats = [p(maps[t].mean((2, 3))) for p, t in zip(self.projections, self.taps, strict=True)]
        return torch.einsum("s,sbe->be", self.alpha.to(feats[0].dtype), torch.stack(feats))

    def forward_features(self, x: Tensor) -> Tensor:
        raise TypeError(
            "multitask lasso mixes pooled features: a task reading feature maps "
            "cannot take part (set method.params.lasso=false)"
        )


@METHODS.register("multitask")
class MultiTask(SSLMethod):
    """Tasks on one trunk; see the module docstring. ``tasks``: see :func:`task_specs`;
    ``augment_params``: ``augment.params`` (the builder passes it).

    Views: every task's views in task order, ``(B, 3, s, s)`` each; ``index`` ``(B,)`` for
    the tasks that take dataset indices (PIRL)."""

    needs_index: ClassVar[bool] = True  # handed on to the tasks that take it

    def __init__(
        self,
        backbone: Backbone,
        tasks: dict[str, Any],
        lasso: bool = False,
        lasso_l1: float = 1e-3,
        lasso_taps: list[int] | None = None,
        augment_params: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(backbone)
        specs = task_specs(tasks)
        recipes = [task_recipe(s, augment_params or {}) for s in specs]
        self.task_weights = [s.weight for s in specs]
        self.view_counts = [r.n_views for r in recipes]
        self.lasso_l1 = lasso_l1
        self.mixtures: list[StageMixture] = []
        if lasso:
            taps = list(lasso_taps) if lasso_taps is not None else [1, 2, 3, 4]
            channels = getattr(backbone, "tap_channels", None)
            if channels is None or not hasattr(backbone, "forward_taps"):
                raise ConfigError("method.params.lasso needs a backbone with forward_taps (ResNet)")
            if not taps or any(not 0 <= t < len(channels) for t in taps):
                raise ConfigError(f"method.params.lasso_taps: {taps} not in 0..{len(channels) - 1}")
            self.stage_projections = nn.ModuleList(
                nn.Linear(channels[t], self.embed_dim) for t in taps
            )
            last = self.stage_projections[-1]
            assert isinstance(last, nn.Linear)
            if last.in_features == last.out_features:  # starts as the plain pooled features
                with torch.no_grad():
                    last.weight.copy_(torch.eye(self.embed_dim))
                    last.bias.zero_()
        self.tasks = nn.ModuleDict()
        for spec, recipe in zip(specs, recipes, strict=True):
            cls = METHODS.get(spec.name)
            params = dict(spec.params)
            _check_params(cls, params, f"{KEY}.{spec.name}")
            if "n_local_views" in inspect.signature(cls).parameters:
                params.setdefault("n_local_views", max(0, recipe.n_views - 2))
            trunk: nn.Module = backbone
            if lasso:
                mixture = StageMixture(backbone, self.stage_projections, taps)
                self.mixtures.append(mixture)
                trunk = mixture
            try:
                task = METHODS.build(spec.name, backbone=trunk, **params)
            except TypeError as exc:
                raise ConfigError(f"{KEY}.{spec.name}: {exc}") from None
            need = task.n_global_views + task.n_local_views
            if recipe.n_views < need:
                raise ConfigError(
                    f"{KEY}.{spec.name} needs {need} views, recipe {recipe.name!r} makes "
                    f"{recipe.n_views}"
                )
            if not lasso:  # one copy of the trunk in state_dict: the task keeps a reference
                del task._modules["backbone"]
                object.__setattr__(task, "backbone", backbone)
            self.tasks[spec.name] = task
        self.n_global_views = sum(self.view_counts)

    @classmethod
    def own_recipe(
        cls, params: dict[str, Any], augment_params: dict[str, Any]
    ) -> ViewRecipe | None:
        """The tasks' recipes one after the other (one recipe module, one generator)."""
        recipes = [task_recipe(s, augment_params) for s in task_specs(params.get("tasks", {}))]
        return ViewRecipe("multitask", tuple(v for r in recipes for v in r.views))

    @property
    def sync_bn(self) -> bool:
        """SyncBN across GPUs only when every task wants it (MoCo v2's Shuffle-BN does not)."""
        return all(getattr(t, "sync_bn", True) for t in self.tasks.values())

    @torch.no_grad()
    def set_input_normalisation(self, mean: list[float], std: list[float]) -> None:
        super().set_input_normalisation(mean, std)
        for task in self.tasks.values():
            task.set_input_normalisation(mean, std)  # type: ignore[operator]

    def forward(self, views: list[Tensor], index: Tensor | None = None) -> dict[str, Tensor]:
        self.check_views(views, self.n_global_views)
        total: Tensor | None = None
        logs: dict[str, Tensor] = {}
        start = 0
        for (name, task), weight, n in zip(
            self.tasks.items(), self.task_weights, self.view_counts, strict=True
        ):
            own = views[start : start + n]
            start += n
            out = task(own, index=index) if getattr(task, "needs_index", False) else task(own)
            weighted = weight * out["loss"]
            total = weighted if total is None else total + weighted
            logs.update({f"{name}/{k}": v.detach() for k, v in out.items()})
            if "embed_std" in out and "embed_std" not in logs:
                logs["embed_std"] = out["embed_std"].detach()
        assert total is not None
        if self.mixtures:
            l1 = torch.stack([m.alpha.abs().sum() for m in self.mixtures]).sum()
            total = total + self.lasso_l1 * l1
            logs["lasso_l1"] = l1.detach()
        return {"loss": total, **logs}

    def on_after_backward(self, step: int) -> None:
        for task in self.tasks.values():
            task.on_after_backward(step)  # type: ignore[operator]

    def on_step_end(self, step: int, max_steps: int) -> None:
        super().on_step_end(step, max_steps)
        for task in self.tasks.values():
            task.on_step_end(step, max_steps)  # type: ignore[operator]
