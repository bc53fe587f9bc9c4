"""The published BiT weights (Kolesnikov et al. 2020) from a local ``.npz`` file, never downloaded.

BiT's files (``BiT-M-R50x1.npz``, ``BiT-S-R101x3.npz``, ...) hold TensorFlow-named arrays,
convolution kernels in HWIO order::

    resnet/root_block/standardized_conv2d/kernel              (7, 7, 3, 64 w)
    resnet/block<b>/unit<nn>/{a,b,c}/group_norm/{gamma,beta}  (C,)
    resnet/block<b>/unit<nn>/{a,b,c}/standardized_conv2d/kernel
    resnet/block<b>/unit01/a/proj/standardized_conv2d/kernel  (the projection shortcut)
    resnet/group_norm/{gamma,beta}                            (the final pre-head norm)
    resnet/head/conv2d/{kernel,bias}                          (the upstream classifier)

(``a``: the unit's first GN + 1x1 conv, ``b``: GN + 3x3, ``c``: GN + 1x1; blocks 1-4 are the
stages, units numbered from 01.) They map onto :class:`~pathssl.models.resnet_v2.ResNetV2Backbone`
(kernels transposed to OIHW); the upstream head is not part of the trunk and is left out (its
class count is recorded). BiT's inputs are scaled to [-1, 1]: mean = std = 0.5 per channel.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from pathssl.models.backbones import build_backbone
from pathssl.models.resnet_v2 import DEPTHS, NAMED, ResNetV2Backbone

PREFIX = "resnet/"
ROOT_KEY = PREFIX + "root_block/standardized_conv2d/kernel"
HEAD_KEYS = (PREFIX + "head/conv2d/kernel", PREFIX + "head/conv2d/bias")
#: BiT's input normalisation: x / 127.5 - 1
BIT_MEAN = (0.5, 0.5, 0.5)
BIT_STD = (0.5, 0.5, 0.5)
_UNIT = re.compile(r"^resnet/block([1-4])/unit(\d\d)/")
_PARTS = {"a": ("norm1", "conv1"), "b": ("norm2", "conv2"), "c": ("norm3", "conv3")}


class BitLayoutError(ValueError):
    """A ``.npz`` file that is not (or not entirely) a BiT ResNet-v2 in the published layout."""


def bit_key_map(layers: list[int]) -> dict[str, str]:
    """``{npz key: trunk state-dict key}`` of a ResNet-v2 with ``layers`` units per stage (the
    head's keys are not in it)."""
    out = {
        ROOT_KEY: "stem.conv.weight",
        PREFIX + "group_norm/gamma": "norm.weight",
        PREFIX + "group_norm/beta": "norm.bias",
    }
    for s, units in enumerate(layers):
        for u in range(units):
            src, dst = f"{PREFIX}block{s + 1}/unit{u + 1:02d}/", f"stages.{s}.blocks.{u}."
            for part, (norm, conv) in _PARTS.items():
                out[f"{src}{part}/group_norm/gamma"] = f"{dst}{norm}.weight"
                out[f"{src}{part}/group_norm/beta"] = f"{dst}{norm}.bias"
                out[f"{src}{part}/standardized_conv2d/kernel"] = f"{dst}{conv}.weight"
            if u == 0:  # every stage's first unit projects (channels or stride change)
                out[f"{src}a/proj/standardized_conv2d/kernel"] = f"{dst}downsample.conv.weight"
    return out


def infer_layout(keys: list[str], root_kernel_shape: tuple[int, ...]) -> tuple[list[int], float]:
    """``(units per stage, width)`` of a BiT file from its key names and the root kernel's
    ``(7, 7, 3, 64 w)`` shape."""
    units = [0, 0, 0, 0]
    for key in keys:
        m = _UNIT.match(key)
        if m:
            units[int(m.group(1)) - 1] = max(units[int(m.group(1)) - 1], int(m.group(2)))
    if len(root_kernel_shape) != 4 or root_kernel_shape[:3] != (7, 7, 3):
        raise BitLayoutError(f"{ROOT_KEY} has shape {root_kernel_shape}, expected (7, 7, 3, 64 w)")
    return units, root_kernel_shape[3] / 64


def backbone_for(layers: list[int], width: float) -> tuple[str, dict[str, Any]]:
    """The registered name (and params) that builds a ResNet-v2 of this layout: a fixed size
    (``resnetv2_50x1``, ...) or ``resnetv2`` with ``{depth, width}``."""
    name = NAMED.get((tuple(layers), float(width)))
    if name is not None:
        return name, {}
    for depth, units in DEPTHS.items():
        if units == layers:
            return "resnetv2", {"depth": depth, "width": width}
    known = ", ".join(f"{d}: {u}" for d, u in DEPTHS.items())
    raise BitLayoutError(f"units per stage {layers} are no known ResNet-v2 depth ({known})")


def _listing(keys: list[str], limit: int = 6) -> str:
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def bit_state_dict(
    arrays: Mapping[str, NDArray[Any]], model: ResNetV2Backbone, where: str = "the file"
) -> dict[str, torch.Tensor]:
    """``arrays`` (BiT npz names) as ``model``'s state dict: float32 tensors, kernels HWIO ->
    OIHW. Raises :class:`BitLayoutError` naming the missing keys, the unexpected ones (any
    key that is neither the trunk's nor the head's) and any shape that does not fit."""
    mapping = bit_key_map(model.layers)
    missing = [k for k in mapping if k not in arrays]
    unexpected = [k for k in arrays if k not in mapping and k not in HEAD_KEYS]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s): {_listing(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} key(s): {_listing(unexpected)}")
        raise BitLayoutError(
            f"{where} does not match the BiT layout of a ResNet-v2 with units {model.layers} "
            f"and width {model.width:g}: {'; '.join(parts)}"
        )
    target = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for src, dst in mapping.items():
        a = np.asarray(arrays[src], dtype=np.float32)
        if a.ndim == 4:
            a = a.transpose(3, 2, 0, 1)
        if tuple(a.shape) != tuple(target[dst].shape):
            raise BitLayoutError(
                f"{where}: {src} has shape {tuple(arrays[src].shape)}, the trunk's {dst} needs "
                f"{tuple(target[dst].shape)} (after HWIO -> OIHW)"
            )
        out[dst] = torch.from_numpy(np.ascontiguousarray(a))
    return out


def load_bit_npz(
    path: str | Path, backbone_name: str | None = None
) -> tuple[ResNetV2Backbone, dict[str, Any]]:
    """The trunk stored in a BiT ``.npz`` file (eval mode, CPU) and its ``meta``.

    ``backbone_name``: the registered ResNet-v2 to build (e.g. ``resnetv2_50x1``); None infers
    depth and width from the arrays' names and shapes. ``meta`` has the keys of a pretraining
    checkpoint's meta (``backbone``, ``backbone_params``, ``mean``/``std`` = BiT's 0.5,
    ``tile_mpp`` None: ImageNet images have none) plus ``source: bit-npz``, ``file`` and
    ``head_classes`` (the upstream classifier's width, None without a head).

    Raises FileNotFoundError for a missing file and :class:`BitLayoutError` (a ValueError) for
    a file that is not an npz archive, has no BiT root kernel, or whose keys or shapes do not
    fit (the message names the missing and unexpected keys).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"BiT weights {path} not found")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as exc:  # noqa: BLE001  (BadZipFile, ValueError, OSError, EOFError)
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
        raise BitLayoutError(f"{path} is not a readable .npz archive ({reason})") from None
    if ROOT_KEY not in arrays:
        raise BitLayoutError(
            f"{path} is not a BiT ResNet-v2 file: no {ROOT_KEY} "
            f"(its keys: {_listing(sorted(arrays)) or 'none'})"
        )
    layers, width = infer_layout(list(arrays), tuple(arrays[ROOT_KEY].shape))
    name, params = backbone_for(layers, width)
    if backbone_name is not None:
        model = build_backbone(backbone_name)
        if not isinstance(model, ResNetV2Backbone):
            raise BitLayoutError(f"{backbone_name} is not a ResNet-v2: BiT files hold ResNet-v2")
        if (model.layers, model.width) != (layers, width):
            raise BitLayoutError(
                f"{path} holds a ResNet-v2 with units {layers} and width {width:g} ({name}), "
                f"not {backbone_name} (units {model.layers}, width {model.width:g})"
            )
        name, params = backbone_name, {}
    else:
        model = build_backbone(name, **params)
        assert isinstance(model, ResNetV2Backbone)
    model.load_state_dict(bit_state_dict(arrays, model, str(path)))
    head = arrays.get(HEAD_KEYS[0])
    meta: dict[str, Any] = {
        "backbone": name,
        "backbone_params": params,
        "mean": list(BIT_MEAN),
        "std": list(BIT_STD),
        "tile_mpp": None,
        "source": "bit-npz",
        "file": str(path),
        "head_classes": int(head.shape[-1]) if head is not None else None,
    }
    return model.eval(), meta
