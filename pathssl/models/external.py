"""Encoders from files other programs wrote, mapped onto the package's backbones; never
downloaded.

Read: ``.pth`` / ``.pt`` / ``.bin`` (``torch.load``, tensors only), ``.safetensors``, and BiT
``.npz`` (:func:`pathssl.models.bit.load_bit_npz`). ``torchvision:NAME`` (e.g.
``torchvision:resnet50``) is the file ``NAME-*.pth`` of the user's torch hub cache
(``$TORCH_HOME/hub/checkpoints``, ``~/.cache/torch/hub/checkpoints``), where torchvision keeps the
ImageNet weights it downloaded once. A state dict nested under ``state_dict`` / ``model`` /
``teacher`` / ... (:data:`UNWRAP`, first found) is unwrapped. The key layout is found by an
anchor key under any prefix (``module.``, ``backbone.``, ``module.encoder_q.``, ...):
``resnet`` (torchvision and timm ResNets: Kang et al. 2023's Barlow Twins, MoCo v2, SwAV
ResNet-50s), ``torchvision-vit`` and ``timm-vit`` (timm / DINO / DINOv2 ViTs: Kang et al.'s ViT-S/16
DINO, UNI's ViT-L/16, Virchow's ViT-H/14 with SwiGLU, register tokens, LayerScale); the mappings
are :mod:`pathssl.models.external_layouts`. Classifier heads (``fc``, ``head``, ``heads``) and
``mask_token`` are dropped. When several encoders share a file (prefixes ``teacher.`` and
``student.``, ``encoder_q.`` and ``encoder_k.``) the first of :data:`PREFER` is taken and
recorded in ``meta["prefix"]``. The result is checked key by key and shape by shape against the
backbone (:func:`check_trunk`).

Normalisation and resolution (a pathssl checkpoint records them; these files do not): ``mean``,
``std`` and ``tile_mpp`` are arguments. Defaults exist only where the layout defines them:
torchvision ImageNet files (from the hub cache or named like ``resnet50-0676ba61.pth``) take
ImageNet's mean/std and no tile_mpp (photographs have none); BiT ``.npz`` files mean = std = 0.5.
Otherwise mean/std are required, and ``tile_mpp`` (micrometres per pixel of the pretraining
tiles, e.g. 0.5 at 20x) is required unless given as ``"none"`` (unknown: tiles are used as they
are). Every refusal is one :class:`~pathssl.models.pretrained.CheckpointError` line saying what
is missing.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pathssl.models.backbones import Backbone, build_backbone, trunk_state_dict
from pathssl.models.external_layouts import LAYOUTS, Converted
from pathssl.models.pretrained import CheckpointError, read_checkpoint

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BIT_MEAN_STD = (0.5, 0.5, 0.5)  # BiT scales pixels to [-1, 1]
UNWRAP = ("state_dict", "model", "model_state_dict", "teacher", "module", "net", "network")
PREFER = (
    "teacher",
    "encoder_q",
    "base_encoder",
    "online",
    "student",
    "encoder_k",
    "momentum",
    "target",
)
DROPPED = re.compile(r"^(fc|head|heads)\.|^mask_token$|^head_drop")
TORCHVISION_NAME = re.compile(r"^[a-z0-9_]+-[0-9a-f]{8,}\.pth$")
WHERE = (
    "eval: encoders[].mean/std/tile_mpp; nuclei: model.encoder_*; embed: --mean/--std/--tile-mpp"
)


def torchvision_weights(name: str) -> Path:
    """The torch hub cache's ``NAME-*.pth`` (torchvision's ImageNet weights); never downloads."""
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    found = sorted(folder.glob(f"{name}-*.pth"))
    if len(found) != 1:
        what = (
            "no file" if not found else f"{len(found)} files ({', '.join(f.name for f in found)})"
        )
        raise FileNotFoundError(
            f"torchvision:{name}: {what} {folder}/{name}-*.pth; nothing is downloaded: pass the "
            "weights file's path (set TORCH_HOME if your hub cache is elsewhere)"
        )
    return found[0]


def resolve(path: str | Path) -> Path:
    """``torchvision:NAME`` -> the hub cache file (:func:`torchvision_weights`); else the path
    (``~`` expanded)."""
    text = str(path)
    if text.startswith("torchvision:"):
        return torchvision_weights(text.split(":", 1)[1])
    return Path(text).expanduser()


def read_tensors(path: Path, loaded: Any = None) -> dict[str, Tensor]:
    """The file's flat ``{name: tensor}`` (``loaded``: the file already read by torch.load)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path), device="cpu"))
        except Exception as exc:  # noqa: BLE001  (SafetensorError, OSError, ...)
            raise CheckpointError(f"{path} is not a readable safetensors file: {exc}") from None
    obj = read_checkpoint(path) if loaded is None else loaded
    for _ in range(4):  # nested: {"state_dict": {...}}, {"model": {"state_dict": ...}}
        if not isinstance(obj, Mapping) or any(isinstance(v, Tensor) for v in obj.values()):
            break
        key = next((k for k in UNWRAP if isinstance(obj.get(k), Mapping)), None)
        if key is None:
            break
        obj = obj[key]
    tensors = (
        {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
        if isinstance(obj, Mapping)
        else {}
    )
    if not tensors:
        keys = list(obj)[:8] if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(f"{path} holds no tensors where weights were expected (top: {keys})")
    return tensors


def _prefixed(sd: dict[str, Tensor], anchor: str) -> list[str]:
    """Prefixes ``p`` such that ``p + anchor`` is a key (``""`` or ending in ``.``)."""
    return sorted(
        {
            k[: -len(anchor)]
            for k in sd
            if k.endswith(anchor) and k[: -len(anchor)][-1:] in ("", ".")
        }
    )


def _pick(prefixes: list[str], path: Path) -> str:
    if len(prefixes) == 1:
        return prefixes[0]
    for marker in PREFER:
        hits = [p for p in prefixes if marker in p.split(".")]
        if len(hits) == 1:
            return hits[0]
    raise CheckpointError(f"{path} holds several encoders ({', '.join(prefixes)}): save one alone")


def convert(sd: dict[str, Tensor], path: Path) -> tuple[str, str, Converted]:
    """``(layout, prefix, (backbone name, params, trunk in the backbone's names))``."""
    for layout, (anchor, fn) in LAYOUTS.items():
        prefixes = _prefixed(sd, anchor)
        if not prefixes:
            continue
        prefix = _pick(prefixes, path)
        sub = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
        try:
            name, params, trunk = fn({k: v for k, v in sub.items() if not DROPPED.search(k)})
        except (KeyError, ValueError) as exc:
            raise CheckpointError(
                f"{path}: {layout} layout (prefix {prefix!r}) not understood: {exc}"
            ) from None
        return layout, prefix, (name, params, trunk)
    keys = ", ".join(list(sd)[:8])
    raise CheckpointError(
        f"{path}: key layout not recognised (tried {', '.join(LAYOUTS)}: none of "
        f"{', '.join(a for a, _ in LAYOUTS.values())} found); first keys: {keys} ({len(sd)} keys)"
    )


def check_trunk(name: str, params: dict[str, Any], trunk: dict[str, Tensor], what: str) -> None:
    """Refuse (one line) a ``trunk`` whose keys or shapes differ from backbone ``name``'s."""
    with torch.device("meta"):
        want = {k: v.shape for k, v in build_backbone(name, **params).state_dict().items()}
    missing = [k for k in want if k not in trunk]
    extra = [k for k in trunk if k not in want]
    shapes = [
        f"{k} {tuple(trunk[k].shape)} vs {tuple(s)}"
        for k, s in want.items()
        if k in trunk and trunk[k].shape != s
    ]
    if missing or extra or shapes:
        parts = [
            f"{label} {', '.join(items[:5])}" + (" ..." if len(items) > 5 else "")
            for label, items in (
                ("unmatched keys", extra),
                ("missing", missing),
                ("shapes", shapes),
            )
            if items
        ]
        raise CheckpointError(f"{what} does not fit {name} {params}: {'; '.join(parts)}")


def _meta(
    path: Path,
    layout: str,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    tile_mpp: float | str | None,
) -> dict[str, Any]:
    """The meta every consumer reads (:mod:`pathssl.models.external`'s rules for mean, std and
    tile_mpp)."""
    imagenet = layout != "bit-npz" and (
        path.parent == Path(torch.hub.get_dir()) / "checkpoints"
        or bool(TORCHVISION_NAME.match(path.name))
    )
    default = IMAGENET_MEAN if imagenet else BIT_MEAN_STD if layout == "bit-npz" else None
    if (mean is None) != (std is None) or (mean is None and default is None):
        raise CheckpointError(
            f"{path}: normalisation unknown for an external encoder: give mean and std (the RGB "
            f"values its pretraining used; ImageNet's: {IMAGENET_MEAN}, {IMAGENET_STD}) ({WHERE})"
        )
    if mean is None or std is None:
        mean, std = default or (), IMAGENET_STD if imagenet else BIT_MEAN_STD
    if isinstance(tile_mpp, str):
        if tile_mpp.strip().lower() != "none":
            raise CheckpointError(f"tile_mpp must be a number or 'none', got {tile_mpp!r}")
        tile_mpp = None
    elif tile_mpp is None and not imagenet:
        raise CheckpointError(
            f"{path}: tile_mpp unknown for an external encoder: give the micrometres per pixel "
            "of its pretraining tiles (e.g. 0.5 at 20x), or tile_mpp=none to use tiles as they "
            f"are ({WHERE})"
        )
    mean_l, std_l = [float(v) for v in mean], [float(v) for v in std]
    if len(mean_l) != 3 or len(std_l) != 3:
        raise CheckpointError(f"mean and std take 3 values (R, G, B), got {mean_l}, {std_l}")
    mpp = None if tile_mpp is None else float(tile_mpp)
    return {
        "method": "external",
        "layout": layout,
        "source": str(path),
        "mean": mean_l,
        "std": std_l,
        "tile_mpp": mpp,
        "imagenet": imagenet,
    }


def _bit(path: Path, backbone: str | None) -> tuple[Backbone, dict[str, Any]]:
    bit = importlib.import_module("pathssl.models.bit")  # BiT .npz layout (Kolesnikov et al. 2020)
    model, meta = bit.load_bit_npz(path, backbone)
    return model, dict(meta)


def read_external(
    path: str | Path,
    backbone: str | None = None,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    tile_mpp: float | str | None = None,
    loaded: Any = None,
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """``(trunk state dict in the backbone's names, meta)`` of an external encoder file; meta has
    ``backbone``, ``backbone_params``, ``mean``, ``std``, ``tile_mpp``, ``method: external``,
    ``layout``, ``source``. ``backbone``: the name expected (refused when the file holds
    another)."""
    path = resolve(path)
    if not path.is_file():
        raise FileNotFoundError(f"encoder file {path} not found")
    if path.suffix == ".npz":
        model, bit_meta = _bit(path, backbone)
        meta = {**bit_meta, **_meta(path, "bit-npz", mean, std, tile_mpp)}
        return trunk_state_dict(model), meta
    layout, prefix, (name, params, trunk) = convert(read_tensors(path, loaded), path)
    if backbone is not None and backbone != name:
        raise CheckpointError(
            f"{path} holds a {name} trunk ({layout} layout, {params}), not {backbone}"
        )
    check_trunk(name, params, trunk, f"{path} ({layout} layout, prefix {prefix!r})")
    meta = _meta(path, layout, mean, std, tile_mpp)
    return trunk, {**meta, "backbone": name, "backbone_params": params, "prefix": prefix}


def load_external(
    path: str | Path,
    backbone: str | None = None,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    tile_mpp: float | str | None = None,
) -> tuple[Backbone, dict[str, Any]]:
    """The file's encoder as a package backbone (eval mode, CPU) and its meta
    (:func:`read_external`); the layout is detected from the keys."""
    path = resolve(path)
    if path.suffix == ".npz":
        model, bit_meta = _bit(path, backbone)
        return model.eval(), {**bit_meta, **_meta(path, "bit-npz", mean, std, tile_mpp)}
    trunk, meta = read_external(path, backbone, mean=mean, std=std, tile_mpp=tile_mpp)
    model = build_backbone(meta["backbone"], **meta["backbone_params"])
    model.load_state_dict(trunk, strict=True)
    return model.eval(), meta
