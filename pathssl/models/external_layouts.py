"""Key layouts of external encoder files, each mapped onto a registered backbone
(:mod:`pathssl.models.external` finds the layout and reads the file).

Each converter takes a state dict with its prefix removed and returns ``(backbone name, build
arguments, trunk in the backbone's parameter names)``; keys it does not understand are passed on
unchanged, for :func:`pathssl.models.external.check_trunk` to name. Raises ValueError / KeyError
when the layout's structure does not hold.

- ``resnet``: torchvision and timm ResNets (the same names: ``conv1``, ``bn1``, ``layerN.M``,
  ``downsample.0/1``).
- ``torchvision-vit``: torchvision's ``VisionTransformer`` (``class_token``, ``conv_proj``,
  ``encoder.layers.encoder_layer_N``): the package's own ViT names (with
  :class:`~pathssl.models.vit_variants.ViTVariant`'s registers, ``ls_1`` and ``mlp.w12``).
- ``timm-vit``: timm, DINO and DINOv2 ViTs (``cls_token``, ``pos_embed``, ``patch_embed.proj``,
  ``blocks.N.{norm1, attn.qkv, attn.proj, ls1.gamma, norm2, mlp.*, ls2.gamma}``, ``norm``) with
  register tokens (timm ``reg_token``, DINOv2 ``register_tokens``) and all three position
  conventions (patches only: timm ``no_embed_class``; class token + patches, registers without:
  DINOv2; class token + registers + patches: timm's default), LayerScale and SwiGLU MLPs (timm
  ``SwiGLUPacked``: ``mlp.fc1`` twice as wide as ``mlp.fc2``'s input, SiLU gate first; timm
  ``SwiGLU``: ``fc1_g`` / ``fc1_x``; DINOv2 ``w12`` / ``w3``), onto
  :class:`~pathssl.models.vit_variants.ViTVariant`.

ViT head counts are not in the weights: :data:`HEADS` by width (the published sizes), else
width / 64.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

HEADS = {64: 2, 192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16, 1536: 24}
# name -> (patch, depth, heads, hidden, mlp_dim, builder takes the variant arguments)
VIT_SIZES: dict[str, tuple[int, int, int, int, int, bool]] = {
    "vit_tiny": (16, 2, 2, 64, 128, False),
    "vit_small_patch16": (16, 12, 6, 384, 1536, False),
    "vit_base_patch16": (16, 12, 12, 768, 3072, False),
    "vit_large_patch16": (16, 24, 16, 1024, 4096, True),
    "vit_huge_patch14": (14, 32, 16, 1280, 5120, True),
}
Converted = tuple[str, dict[str, Any], dict[str, Tensor]]  # backbone name, params, trunk


def _resnet(sd: dict[str, Tensor]) -> Converted:
    bottleneck = "layer1.0.conv3.weight" in sd
    blocks = tuple(
        1 + max((int(k.split(".")[1]) for k in sd if k.startswith(f"layer{i}.")), default=-1)
        for i in range(1, 5)
    )
    names: dict[tuple[bool, tuple[int, ...]], str] = {
        (False, (2, 2, 2, 2)): "resnet18",
        (True, (3, 4, 6, 3)): "resnet50",
    }
    name = names.get((bottleneck, blocks))
    if name is None:
        kind = "Bottleneck" if bottleneck else "BasicBlock"
        raise ValueError(
            f"a {kind} ResNet with blocks {list(blocks)} has no registered backbone "
            "(resnet18, resnet50)"
        )
    trunk = dict(sd)
    for k in [k for k in sd if k.endswith(".running_mean")]:  # timm files lack these counters
        trunk.setdefault(k.replace("running_mean", "num_batches_tracked"), torch.tensor(0))
    return name, {}, trunk


def _grid(n: int) -> int | None:
    g = math.isqrt(max(n, 0))
    return g if g > 0 and g * g == n else None


def _vit_name(spec: dict[str, Any], image_size: int) -> tuple[str, dict[str, Any]]:
    """The registered name of a ViT ``spec`` and its build arguments (``vit``: any size)."""
    size = (spec["patch_size"], spec["depth"], spec["num_heads"], spec["hidden_dim"])
    plain = not spec["reg_tokens"] and not spec["layer_scale"] and spec["mlp"] == "gelu"
    for name, (patch, depth, heads, hidden, mlp_dim, variants) in VIT_SIZES.items():
        if (patch, depth, heads, hidden) != size:
            continue
        if plain and spec["mlp_dim"] == mlp_dim:
            return name, {"image_size": image_size}
        if variants:
            extra = {k: v for k, v in spec.items() if k in ("reg_tokens", "layer_scale") and v}
            if spec["mlp"] != "gelu":
                extra["mlp"] = spec["mlp"]
            if spec["mlp_dim"] != mlp_dim:
                extra["mlp_dim"] = spec["mlp_dim"]
            return name, {"image_size": image_size, **extra}
    return "vit", {"image_size": image_size, **spec}


def _torchvision_vit(sd: dict[str, Tensor]) -> Converted:
    hidden, patch = sd["class_token"].shape[-1], sd["conv_proj.weight"].shape[-1]
    depth = len({k.split(".")[2] for k in sd if k.startswith("encoder.layers.encoder_layer_")})
    g = _grid(sd["encoder.pos_embedding"].shape[1] - 1)
    if g is None:
        raise ValueError(
            f"encoder.pos_embedding {tuple(sd['encoder.pos_embedding'].shape)} is no square grid"
        )
    first = "encoder.layers.encoder_layer_0."
    swiglu = first + "mlp.w12.weight" in sd  # the package's ViTVariant names
    mlp_dim = (
        sd[first + "mlp.w3.weight"].shape[1] if swiglu else sd[first + "mlp.0.weight"].shape[0]
    )
    regs = sd.get("encoder.layers.registers")
    spec = dict(
        patch_size=patch,
        depth=depth,
        num_heads=HEADS.get(hidden, hidden // 64),
        hidden_dim=hidden,
        mlp_dim=mlp_dim,
        reg_tokens=0 if regs is None else regs.shape[1],
        layer_scale=first + "ls_1.gamma" in sd,
        mlp="swiglu" if swiglu else "gelu",
    )
    name, params = _vit_name(spec, g * patch)
    return name, params, dict(sd)


BLOCK_KEYS = {
    "norm1.": "ln_1.",
    "norm2.": "ln_2.",
    "attn.qkv.weight": "self_attention.in_proj_weight",
    "attn.qkv.bias": "self_attention.in_proj_bias",
    "attn.proj.": "self_attention.out_proj.",
    "ls1.gamma": "ls_1.gamma",
    "ls2.gamma": "ls_2.gamma",
}


def _timm_block(sd: dict[str, Tensor], i: int, swiglu: bool) -> dict[str, Tensor]:
    src, dst = f"blocks.{i}.", f"encoder.layers.encoder_layer_{i}."
    part = {k[len(src) :]: sd.pop(k) for k in [k for k in sd if k.startswith(src)]}
    out: dict[str, Tensor] = {}
    if "mlp.fc1_g.weight" in part:  # timm SwiGLU: gate and value projections apart
        for p in ("weight", "bias"):
            if f"mlp.fc1_g.{p}" in part:
                out[f"mlp.w12.{p}"] = torch.cat(
                    [part.pop(f"mlp.fc1_g.{p}"), part.pop(f"mlp.fc1_x.{p}")]
                )
    fc = (
        {"mlp.fc1.": "mlp.w12.", "mlp.fc2.": "mlp.w3."}
        if swiglu
        else {"mlp.fc1.": "mlp.0.", "mlp.fc2.": "mlp.3."}
    )
    renames = {**BLOCK_KEYS, **fc}
    for key, value in part.items():
        new = next((key.replace(a, b, 1) for a, b in renames.items() if key.startswith(a)), key)
        out[new] = value
    if "self_attention.in_proj_weight" in out and "self_attention.in_proj_bias" not in out:
        out["self_attention.in_proj_bias"] = torch.zeros(
            out["self_attention.in_proj_weight"].shape[0]
        )
    return {dst + k: v for k, v in out.items()}


def _timm_vit(sd: dict[str, Tensor]) -> Converted:
    sd = dict(sd)
    cls, pos = sd.pop("cls_token"), sd.pop("pos_embed")
    regs = sd.pop("reg_token", sd.pop("register_tokens", None))
    r, hidden = (0 if regs is None else regs.shape[1]), cls.shape[-1]
    patch, n = sd["patch_embed.proj.weight"].shape[-1], pos.shape[1]
    reg_pos: Tensor | float = 0.0
    if _grid(n):  # no_embed_class: only the patches have positions
        cls_pos, patch_pos = torch.zeros_like(cls), pos
    elif _grid(n - 1):  # class token and patches (DINOv2 keeps registers without positions)
        cls_pos, patch_pos = pos[:, :1], pos[:, 1:]
    elif r and _grid(n - 1 - r):  # timm: class token, registers, patches
        cls_pos, reg_pos, patch_pos = pos[:, :1], pos[:, 1 : 1 + r], pos[:, 1 + r :]
    else:
        raise ValueError(f"pos_embed {tuple(pos.shape)} fits no square grid with {r} registers")
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    b0 = {k[len("blocks.0.") :]: v for k, v in sd.items() if k.startswith("blocks.0.")}
    swiglu = (
        "mlp.w12.weight" in b0
        or "mlp.fc1_g.weight" in b0
        or (
            "mlp.fc1.weight" in b0
            and b0["mlp.fc1.weight"].shape[0] == 2 * b0["mlp.fc2.weight"].shape[1]
        )
    )
    second = b0.get("mlp.w3.weight", b0.get("mlp.fc2.weight"))
    if second is None:
        raise ValueError("blocks.0 has no MLP (mlp.fc2 / mlp.w3)")
    trunk = {"class_token": cls, "encoder.pos_embedding": torch.cat([cls_pos, patch_pos], dim=1)}
    if regs is not None:
        trunk["encoder.layers.registers"] = regs + reg_pos
    for i in range(depth):
        trunk.update(_timm_block(sd, i, swiglu))
    for a, b in (("patch_embed.proj.", "conv_proj."), ("norm.", "encoder.ln.")):
        trunk.update({b + k[len(a) :]: sd.pop(k) for k in [k for k in sd if k.startswith(a)]})
    trunk.update(sd)  # whatever is left is reported by the check against the backbone
    spec = dict(
        patch_size=patch,
        depth=depth,
        num_heads=HEADS.get(hidden, hidden // 64),
        hidden_dim=hidden,
        mlp_dim=second.shape[1],
        reg_tokens=r,
        layer_scale="ls1.gamma" in b0,
        mlp="swiglu" if swiglu else "gelu",
    )
    name, params = _vit_name(spec, math.isqrt(patch_pos.shape[1]) * patch)
    return name, params, trunk


# layout -> (anchor key every file of it has, converter)
LAYOUTS: dict[str, tuple[str, Callable[[dict[str, Tensor]], Converted]]] = {
    "resnet": ("layer1.0.conv1.weight", _resnet),
    "torchvision-vit": ("encoder.pos_embedding", _torchvision_vit),
    "timm-vit": ("patch_embed.proj.weight", _timm_vit),
}
