"""Atomic checkpoints and the RNG states an exact resume needs.

A checkpoint is one ``torch.save`` file::

    {"trunk": torchvision-named backbone state_dict, "method": full method state (heads,
     EMA targets, queues, centres, step), "optimizer", "scheduler", "sampler", "rng", "step",
     "meta": {method, backbone, tile_mpp, mean, std, config, pathssl_version}}

The trunk loads into a plain torchvision model without pathssl::

    sd = torch.load("last.pt", map_location="cpu")["trunk"]
    torchvision.models.resnet50().load_state_dict(sd, strict=False)  # missing: fc.* only
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pathssl.models.pretrained import KINDS, CheckpointError, checkpoint_kind, read_checkpoint
from tiling.atomic import atomic_file

CHECKPOINT_NAME = "last.pt"


def rng_state(augment_generator: torch.Generator | None = None) -> dict[str, Any]:
    """Python, NumPy, torch (CPU and every CUDA device) and augmentation generator states."""
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)  # noqa: NPY002
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(np.asarray(keys).copy()), pos, has_gauss, cached),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    if augment_generator is not None:
        state["augment"] = augment_generator.get_state()
    return state


def set_rng_state(state: dict[str, Any], augment_generator: torch.Generator | None = None) -> None:
    """Restore what :func:`rng_state` captured."""
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy(), pos, has_gauss, cached))  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if augment_generator is not None and "augment" in state:
        augment_generator.set_state(state["augment"])


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` to ``path`` through the one atomic writer (:mod:`tiling.atomic`: a
    temporary file beside it, fsync, ``os.replace``, folder fsync): a crash leaves either the old
    or the new checkpoint, never half."""
    with atomic_file(path) as f:
        torch.save(payload, f)
    return Path(path)


RESUME_FIX = "delete it or set train.resume=false to start over"


def load_checkpoint(path: str | Path, fix: str = RESUME_FIX, lazy: bool = False) -> dict[str, Any]:
    """Load a checkpoint onto the CPU (tensors only: ``weights_only`` loading; ``lazy``:
    memory-mapped). An empty or damaged file raises
    :class:`~pathssl.models.pretrained.CheckpointError` naming it and ``fix`` (what to do)."""
    return read_checkpoint(path, fix=fix, lazy=lazy)


RUN_KEYS = ("kind", "method", "backbone")


def run_identity(meta: dict[str, Any]) -> dict[str, Any]:
    """What makes two runs the same for resuming: training mode, method and backbone (a
    checkpoint without a ``kind`` but with a ``method`` is pretraining's, as before kinds)."""
    ident = {k: meta.get(k) for k in RUN_KEYS if meta.get(k) is not None}
    if "kind" not in ident and "method" in ident:
        ident = {"kind": "pretrain", **ident}
    return ident


def describe_run(identity: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v!r}" for k, v in identity.items()) or "no recorded method"


def check_same_run(old_meta: dict[str, Any], new_meta: dict[str, Any], path: Path) -> None:
    """Refuse a checkpoint ``path`` written by another kind of run (another method, backbone or
    training mode) than ``new_meta``'s: resuming it or replacing it would be wrong."""
    old, new = run_identity(old_meta), run_identity(new_meta)
    if old != new:
        raise ValueError(
            f"{path} belongs to another run ({describe_run(old)}), this run is "
            f"{describe_run(new)}: use another train.out_dir, or delete {path} to start over"
        )


def check_resumable(ckpt: dict[str, Any], new_meta: dict[str, Any], path: Path) -> None:
    """A checkpoint to resume from: a training loop's ``last.pt`` (optimiser and method state)
    of the same kind of run as ``new_meta`` (:func:`check_same_run`); one-line errors otherwise."""
    if "optimizer" not in ckpt or "method" not in ckpt:
        raise CheckpointError(
            f"checkpoint {path} is {KINDS[checkpoint_kind(ckpt)]}, not a training loop's "
            f"last.pt; {RESUME_FIX}"
        )
    check_same_run(ckpt.get("meta") or {}, new_meta, path)
