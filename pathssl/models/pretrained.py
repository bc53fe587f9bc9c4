"""Reading an encoder: the one place every later stage loads it from.

A checkpoint written by ``pathssl pretrain`` is a ``torch.save`` dict with ``"trunk"`` (the
backbone's state dict with torchvision parameter names) and ``"meta"`` (``backbone`` name, optional
``backbone_params`` / ``image_size``, normalisation ``mean`` / ``std``, ``tile_mpp``, ...). Any
other encoder file (torchvision ImageNet weights, timm / DINO / DINOv2 checkpoints, published
pathology encoders, BiT ``.npz``) goes to :mod:`pathssl.models.external`, which maps its keys onto
a registered backbone and returns the same ``(trunk, meta)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from pathssl.models.backbones import Backbone, build_backbone


class CheckpointError(ValueError):
    """A checkpoint file is empty, damaged, or not of the kind a command expects."""


KINDS: dict[str, str] = {
    "pretrain": "a pretraining checkpoint (an encoder trunk, `pathssl pretrain`'s last.pt)",
    "nuclei": "a nuclei model (nuclei.pt, written at the end of `pathssl nuclei train`)",
    "nuclei-state": "the nuclei training loop's resumable state (last.pt of `pathssl nuclei "
    "train`; its model is nuclei.pt in the same folder)",
    "finetune-state": "the fine-tuning loop's resumable state (last.pt of a fine-tune run)",
    "training-state": "a training loop's resumable state (last.pt)",
    "best-weights": "a training run's best validated weights (best.pt)",
    "unknown": "not a pathssl checkpoint",
}


def checkpoint_kind(ckpt: Any) -> str:
    """What a loaded checkpoint is: one of :data:`KINDS`'s keys.

    ``pretrain``: has ``trunk`` (every pretraining ``last.pt``); ``nuclei``: ``model`` + ``meta``
    of kind nuclei; ``<kind>-state``: a training loop's ``last.pt`` without a trunk (it has
    ``optimizer`` and ``step``); ``best-weights``: ``best.pt`` (``method`` + ``scores``)."""
    if not isinstance(ckpt, Mapping):
        return "unknown"
    meta = ckpt.get("meta")
    kind = str(meta.get("kind", "")) if isinstance(meta, Mapping) else ""
    if "trunk" in ckpt:
        return "pretrain"
    if "optimizer" in ckpt and "step" in ckpt:
        return f"{kind}-state" if f"{kind}-state" in KINDS else "training-state"
    if "method" in ckpt and "scores" in ckpt:
        return "best-weights"
    if "model" in ckpt and kind == "nuclei":
        return "nuclei"
    return "unknown"


def read_checkpoint(
    path: str | Path, expect: str | tuple[str, ...] | None = None, fix: str = "", lazy: bool = False
) -> dict[str, Any]:
    """Load a checkpoint onto the CPU (tensors-only loading), checked before use.

    Raises FileNotFoundError for a missing file, and :class:`CheckpointError` (one line naming the
    file, what it is, what was expected and ``fix``, what to do) for an empty or damaged file or,
    when ``expect`` names kinds of :data:`KINDS`, a checkpoint of another kind. ``lazy``:
    memory-map the tensors instead of reading them (enough to check a file's kind and meta; a
    truncated file still fails, its index is at the end)."""
    path = Path(path)
    todo = f"; {fix}" if fix else ""
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found{todo}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes){todo}")
    try:
        ckpt: Any = torch.load(path, map_location="cpu", weights_only=True, mmap=lazy)
    except Exception as exc:  # noqa: BLE001  (EOFError, RuntimeError, UnpicklingError, ...)
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
        raise CheckpointError(
            f"checkpoint {path} is not readable (truncated or damaged: {reason}){todo}"
        ) from None
    if expect is not None:
        wanted = (expect,) if isinstance(expect, str) else expect
        kind = checkpoint_kind(ckpt)
        if kind not in wanted:
            raise CheckpointError(
                f"{path} is {KINDS[kind]}, expected {' or '.join(KINDS[w] for w in wanted)}{todo}"
            )
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path} is {KINDS['unknown']}{todo}")
    return ckpt


def read_pretrained(
    path: str | Path,
    expect_backbone: str | None = None,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    tile_mpp: float | str | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(trunk state dict, meta)`` of an encoder file (tensors-only loading): a pathssl
    pretraining checkpoint, or an external one (torchvision, timm, DINO/DINOv2 ``.pth`` /
    ``.bin`` / ``.safetensors``, BiT ``.npz``, ``torchvision:NAME``), mapped onto a registered
    backbone by :func:`pathssl.models.external.read_external`.

    ``mean`` / ``std`` / ``tile_mpp``: for files that do not record them (external files: see
    :mod:`pathssl.models.external` for which are required); a pathssl checkpoint's recorded
    values win, arguments only fill what it lacks. Raises FileNotFoundError for a missing file,
    :class:`CheckpointError` (a ValueError) for a damaged file, a pathssl checkpoint of another
    kind (:func:`checkpoint_kind`) or an unrecognised key layout, and ValueError when
    ``expect_backbone`` is given and the file holds another backbone.
    """
    from pathssl.models import external  # it reads files with read_checkpoint: imported here

    path = external.resolve(path)
    kw: dict[str, Any] = {"mean": mean, "std": std, "tile_mpp": tile_mpp}
    if path.suffix in (".npz", ".safetensors"):
        return external.read_external(path, expect_backbone, **kw)
    ckpt = read_checkpoint(path)
    kind = checkpoint_kind(ckpt)
    if kind == "unknown":
        return external.read_external(path, expect_backbone, loaded=ckpt, **kw)
    if kind != "pretrain":
        raise CheckpointError(f"{path} is {KINDS[kind]}, expected {KINDS['pretrain']}")
    meta: dict[str, Any] = dict(ckpt.get("meta", {}))
    for key, value in kw.items():
        if value is not None and meta.get(key) is None:
            meta[key] = None if str(value).strip().lower() == "none" else value
    name = meta.get("backbone")
    if expect_backbone is not None and name not in (None, expect_backbone):
        raise ValueError(f"checkpoint {path} holds a {name} trunk, not {expect_backbone}")
    return ckpt["trunk"], meta


def load_pretrained(
    path: str | Path,
    expect_backbone: str | None = None,
    image_size: int | None = None,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    tile_mpp: float | str | None = None,
) -> tuple[Backbone, dict[str, Any]]:
    """The file's backbone (:func:`read_pretrained`), built by name from its ``meta`` with its
    weights loaded (eval mode, CPU), and the ``meta``. ``image_size`` is the ViT input size when
    the file does not record one."""
    trunk, meta = read_pretrained(path, expect_backbone, mean=mean, std=std, tile_mpp=tile_mpp)
    name = str(meta.get("backbone", expect_backbone))
    params = dict(meta.get("backbone_params", {}))
    if name.startswith("vit"):
        params.setdefault("image_size", int(meta.get("image_size", image_size or 224)))
    backbone = build_backbone(name, **params)
    backbone.load_state_dict(trunk)
    return backbone.eval(), meta
