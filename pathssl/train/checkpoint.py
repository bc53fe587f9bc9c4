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

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

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
    """Write ``payload`` to ``path`` atomically: a temporary file in the same folder, fsync,
    then ``os.replace``; a crash leaves either the old or the new checkpoint, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint onto the CPU (tensors only: ``weights_only`` loading)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    ckpt: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    return ckpt
