"""The common interface every SSL method implements, and shared helpers (EMA, schedules).

:class:`SSLMethod` is the interface; :class:`MomentumTargetMethod` adds the EMA target network
(BYOL, MoCo v2/v3, DINO); the masked image models (MAE, MaskFeat) share
:class:`pathssl.ssl.masked.MaskedImageMethod`.

A method is an ``nn.Module`` that owns its backbone, heads, target networks and loss. A generic
training loop drives every method the same way::

    method = METHODS.build("simclr", backbone=build_backbone("resnet18"))
    opt = torch.optim.AdamW(method.param_groups(weight_decay=0.05), lr=1e-3)
    for step in range(max_steps):
        views = [...]                      # method.n_global_views + method.n_local_views tensors
        out = method(views)                # {"loss": scalar with grad, other logs: detached}
        opt.zero_grad(); out["loss"].backward()
        method.on_after_backward(step)     # gradient surgery (frozen prototypes / last layer)
        opt.step()
        method.on_step_end(step, max_steps)  # EMA / momentum / queue updates
    torch.save(method.state_dict(), ...)  # queues, centres, step counter are buffers: exact resume
    trunk = method.export_backbone()       # torchvision-named weights

Views: ``views[:n_global_views]`` are the global crops ``(B, 3, H, W)``; the rest (multi-crop)
are smaller local crops ``(B, 3, h, w)``, all with the same ``B``. They arrive normalised with
the training tiles' per-channel mean/std; the training loop hands those over once
(:meth:`SSLMethod.set_input_normalisation`) so that a method predicting colour (colorization,
split-brain) can recover the RGB it saw (:meth:`SSLMethod.raw_rgb`).

A method with ``needs_index = True`` (PIRL's memory bank) is called as
``method(views, index=index)`` with each image's dataset index ``(B,)`` long.

A method with ``needs_labels = True`` (S4L, supervised) is called as
``method(views, labelled=LabelledBatch(views, labels))``: the recipe's views of a batch of
labelled images ``(B_l, 3, s, s)`` and their class indices ``(B_l,)`` long; its constructor takes
``num_classes``. With ``uses_tiles = False`` (supervised only) the labelled stream is the only
stream and ``views`` are the labelled batch's views. ``default_recipe`` names the view recipe a
method uses when the config names none.
"""

from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pathssl.config import ConfigError
from pathssl.models.backbones import Backbone, ViTBackbone
from pathssl.registry import Registry

if TYPE_CHECKING:
    from pathssl.augment import ViewRecipe

METHODS: Registry = Registry("ssl method")
M = TypeVar("M", bound=nn.Module)


class LabelledBatch(NamedTuple):
    """A labelled batch for a ``needs_labels`` method: ``views`` the view recipe's views of the
    labelled images ``[(B_l, 3, s, s)]`` (normalised like the tiles' views), ``labels`` their
    class indices ``(B_l,)`` long."""

    views: list[Tensor]
    labels: Tensor


class SSLMethod(nn.Module):
    """Base class: see the module docstring for the interface."""

    #: the method only works with a ViT backbone (masked image modelling)
    vit_only: ClassVar[bool] = False
    #: the method takes each image's dataset index: ``forward(views, index=(B,) long)``
    needs_index: ClassVar[bool] = False
    #: the method takes labelled images: ``forward(views, labelled=LabelledBatch)``
    needs_labels: ClassVar[bool] = False
    #: False: the method trains on the labelled stream only (no unlabelled tiles)
    uses_tiles: ClassVar[bool] = True
    #: the view recipe when ``augment.recipe`` is not set (None: the recipe named like the method)
    default_recipe: ClassVar[str | None] = None
    global_step: Tensor
    input_mean: Tensor
    input_std: Tensor

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        if self.vit_only and not isinstance(backbone, ViTBackbone):
            raise TypeError(f"{type(self).__name__} needs a ViT backbone, got {type(backbone)}")
        self.backbone = backbone
        self.embed_dim: int = backbone.embed_dim
        self.n_global_views = 2
        self.n_local_views = 0
        # optimisation steps completed; a buffer so state_dict() carries it for exact resume
        self.register_buffer("global_step", torch.zeros((), dtype=torch.long))
        # how the views were normalised (not saved: the checkpoint's meta holds mean/std)
        self.register_buffer("input_mean", torch.zeros(1, 3, 1, 1), persistent=False)
        self.register_buffer("input_std", torch.ones(1, 3, 1, 1), persistent=False)

    def forward(self, views: list[Tensor]) -> dict[str, Tensor]:
        raise NotImplementedError

    @classmethod
    def own_recipe(
        cls, params: dict[str, Any], augment_params: dict[str, Any]
    ) -> ViewRecipe | None:
        """The view recipe the method builds from its own ``params`` (``method.params``) and
        ``augment.params`` (multi-task: every task's recipe in turn); None (the default): the
        recipe ``augment.recipe`` or :attr:`default_recipe` names."""
        return None

    @torch.no_grad()
    def set_input_normalisation(self, mean: list[float], std: list[float]) -> None:
        """The views are ``(rgb - mean) / std`` per channel (RGB in [0, 1]); the training loop's
        builder calls this once. Default: mean 0, std 1 (the views are RGB in [0, 1])."""
        self.input_mean.copy_(torch.as_tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.input_std.copy_(torch.as_tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        encoding = getattr(self.backbone, "set_input_normalisation", None)
        if encoding is not None:  # a trunk that undoes the normalisation (split trunks)
            encoding(mean, std)

    def raw_rgb(self, x: Tensor) -> Tensor:
        """Normalised views ``(B, 3, H, W)`` -> float32 RGB in [0, 1] (clamped)."""
        return (x.float() * self.input_std + self.input_mean).clamp(0.0, 1.0)

    def on_after_backward(self, step: int) -> None:
        """Called between ``backward()`` and ``optimizer.step()``; default: nothing."""

    def on_step_end(self, step: int, max_steps: int) -> None:
        """Called after ``optimizer.step()`` of step ``step`` (0-based) out of ``max_steps``."""
        self.global_step.fill_(step + 1)

    def export_backbone(self) -> nn.Module:
        """The encoder to keep after pretraining (the teacher / target where the paper does)."""
        return self.backbone

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """Trainable parameters in two groups: weights with ``weight_decay``, and biases, norm
        parameters, class/mask tokens and position embeddings without it."""
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            leaf = name.rsplit(".", 1)[-1]
            if p.ndim <= 1 or leaf in {"class_token", "pos_embedding", "mask_token"}:
                no_decay.append(p)
            else:
                decay.append(p)
        return [
            {"name": "decay", "params": decay, "weight_decay": weight_decay},
            {"name": "no_decay", "params": no_decay, "weight_decay": 0.0},
        ]

    def check_views(self, views: list[Tensor], minimum: int) -> None:
        if len(views) < minimum:
            raise ValueError(f"{type(self).__name__} needs >= {minimum} views, got {len(views)}")


def recipe_for(method: str, recipe: str | None = None) -> str:
    """The view recipe of ``method``: ``recipe`` if given, else the method's
    :attr:`SSLMethod.default_recipe`, else the recipe of the same name (``moco_v2``/``moco_v3``
    use ``moco``); :class:`~pathssl.config.ConfigError` when there is none."""
    from pathssl.augment import RECIPES

    if recipe:
        return recipe
    default = METHODS.get(method).default_recipe if method in METHODS else None
    if default:
        return str(default)
    if method in RECIPES:
        return method
    base = method.rsplit("_v", 1)[0]
    if base in RECIPES:
        return base
    raise ConfigError(f"no view recipe named like method {method!r}: set augment.recipe")


def multi_crop_apply(fn: Any, views: list[Tensor]) -> list[Tensor]:
    """Run ``fn`` once per run of consecutive same-size views (concatenated along the batch)
    and split the output back into one tensor per view."""
    out: list[Tensor] = []
    i = 0
    while i < len(views):
        j = i
        while j < len(views) and views[j].shape[-2:] == views[i].shape[-2:]:
            j += 1
        y = fn(torch.cat(views[i:j]))
        out.extend(y.chunk(j - i))
        i = j
    return out


def cosine_schedule(step: int, max_steps: int, start: float, end: float) -> float:
    """``end - (end - start) * (cos(pi * step / max_steps) + 1) / 2``: ``start`` at step 0,
    ``end`` at ``max_steps`` (BYOL's target momentum, DINO's teacher momentum)."""
    t = min(max(step / max(max_steps, 1), 0.0), 1.0)
    return end - (end - start) * (math.cos(math.pi * t) + 1) / 2


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """``target = momentum * target + (1 - momentum) * online`` for parameters; buffers (BN
    running statistics) are copied."""
    t_params: list[Tensor] = list(target.parameters())
    o_params: list[Tensor] = [p.detach() for p in online.parameters()]
    torch._foreach_mul_(t_params, momentum)
    torch._foreach_add_(t_params, o_params, alpha=1 - momentum)
    for tb, ob in zip(target.buffers(), online.buffers(), strict=True):
        tb.copy_(ob)


def make_target(online: M) -> M:
    """A frozen deep copy of ``online`` (EMA target / teacher / momentum encoder)."""
    target = copy.deepcopy(online)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


class MomentumTargetMethod(SSLMethod):
    """Base of the methods with an EMA target network (BYOL's target, MoCo's key / momentum
    encoder, DINO's teacher): a frozen copy of the online backbone + head that follows it by
    :func:`ema_update` after every optimiser step.

    Subclasses call :meth:`init_target` once their head exists, and name the online network
    (:meth:`online`) and the attribute holding its copy (:meth:`target_network`). The momentum
    at step k of K is :func:`cosine_schedule` from ``momentum`` to 1 (BYOL, MoCo v3, DINO), or
    constant with ``cosine_momentum = False`` (MoCo v2).
    """

    #: momentum rises from ``base_momentum`` to 1 by a cosine; False: constant ``base_momentum``
    cosine_momentum: ClassVar[bool] = True

    def online(self) -> nn.Sequential:
        """The online network the target follows (backbone + head, no predictor)."""
        raise NotImplementedError

    def target_network(self) -> nn.Module:
        """The EMA copy of :meth:`online` (registered under the subclass's attribute name)."""
        raise NotImplementedError

    def init_target(self, momentum: float) -> nn.Sequential:
        """A frozen copy of :meth:`online` for the subclass to store; sets ``base_momentum``."""
        self.base_momentum = momentum
        return make_target(self.online())

    def momentum_at(self, step: int, max_steps: int) -> float:
        """The EMA momentum applied after step ``step`` (0-based) of ``max_steps``."""
        if not self.cosine_momentum:
            return self.base_momentum
        return cosine_schedule(step, max_steps, self.base_momentum, 1.0)

    def on_step_end(self, step: int, max_steps: int) -> None:
        super().on_step_end(step, max_steps)
        ema_update(self.target_network(), self.online(), self.momentum_at(step, max_steps))


@torch.no_grad()
def collapse_std(z: Tensor) -> Tensor:
    """Std over the batch of L2-normalised embeddings ``(B, D)``, mean over dims, times
    ``sqrt(D)``: ~1 for well-spread embeddings, 0 for a collapsed encoder."""
    z = F.normalize(z.detach().float(), dim=-1)
    return z.std(dim=0).mean() * math.sqrt(z.shape[-1])
