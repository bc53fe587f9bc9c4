"""Features of every tile of a store from a pretraining checkpoint's trunk (or an external
encoder file, :mod:`pathssl.models.external`).

``embed_store(store, checkpoint, out)`` writes a zarr v3 group (atomically: a temporary folder
renamed into place by ``tiling.atomic.replace_dir``) with ``features`` ``(N, D)`` float32 (tile ``i`` -> row ``i``, tiles at
their stored size, normalised by the checkpoint's mean/std) and ``coords`` ``(N, 2)`` int64
level-0 x, y, plus attributes naming the checkpoint, method, backbone and slide.

Before anything is computed the output is checked (:func:`check_embed_output`): it may not be,
hold or lie inside the store or the checkpoint, and an existing ``out`` is replaced only when it
is an earlier ``pathssl embed`` output and ``force`` is given.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pathssl.data import TileDataset, collate_uint8
from pathssl.models.backbones import Backbone
from pathssl.models.external import resolve
from pathssl.models.pretrained import load_pretrained
from tiling.atomic import replace_dir
from tiling.errors import UsageError
from tiling.outputs import check_output_file
from tiling.store import read_attrs


def load_trunk(
    checkpoint: str | Path,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    tile_mpp: float | str | None = None,
) -> tuple[Backbone, dict[str, Any]]:
    """The pretrained backbone (eval mode, CPU) and the checkpoint's ``meta``; ``checkpoint``
    may be an external encoder file, whose ``mean``/``std``/``tile_mpp`` are then arguments
    (:mod:`pathssl.models.external`)."""
    return load_pretrained(checkpoint, mean=mean, std=std, tile_mpp=tile_mpp)


@torch.no_grad()
def embed_tiles(
    backbone: torch.nn.Module, images: Tensor, mean: list[float], std: list[float]
) -> Tensor:
    """``(B, 3, S, S)`` uint8 tiles -> ``(B, D)`` float32 features."""
    m = torch.tensor(mean, device=images.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=images.device).view(1, 3, 1, 1)
    x = (images.float() / 255.0 - m) / s
    out: Tensor = backbone(x)
    return out.float()


def is_embed_output(path: Path) -> bool:
    """Whether ``path`` is a features group that :func:`embed_store` wrote."""
    attrs = read_attrs(path)
    return attrs is not None and {"checkpoint", "store", "slide_id"} <= set(attrs)


def check_embed_output(
    store: str | Path, checkpoint: str | Path, out: str | Path, force: bool = False
) -> Path:
    """Refuse (``tiling.errors.OutputError``) an ``out`` that is, holds or lies in the store or
    the checkpoint, that exists and is not an earlier embed output, or that exists without
    ``force``; returns ``out`` as a Path."""
    return check_output_file(
        out,
        inputs=[store, checkpoint],
        force=force,
        is_ours=is_embed_output,
        command="embed",
    )


def embed_store(
    store: str | Path,
    checkpoint: str | Path,
    out: str | Path,
    batch_size: int = 64,
    device: str = "auto",
    num_workers: int = 0,
    force: bool = False,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    tile_mpp: float | str | None = None,
) -> Path:
    """Write features of every tile of ``store`` to the zarr group ``out``; returns ``out``.

    ``out`` is checked before any work (:func:`check_embed_output`); ``force`` replaces an
    earlier embed output. ``checkpoint``: a pretraining checkpoint or an external encoder file
    (``mean``/``std``/``tile_mpp`` for files that do not record them, :func:`load_trunk`)."""
    import zarr

    if batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {batch_size}")
    if num_workers < 0:
        raise UsageError(f"--num-workers must be >= 0, got {num_workers}")
    dev = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    )
    dataset = TileDataset([store])
    if len(dataset.paths) != 1:
        raise ValueError(f"{store}: expected one tile store, found {len(dataset.paths)}")
    checkpoint = resolve(checkpoint)  # torchvision:NAME -> the hub cache's file
    out = check_embed_output(store, checkpoint, out, force)
    backbone, meta = load_trunk(checkpoint, mean=mean, std=std, tile_mpp=tile_mpp)
    backbone.to(dev)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_uint8
    )
    feats = np.empty((len(dataset), backbone.embed_dim), dtype=np.float32)
    for batch in loader:
        idx = batch["index"].numpy()
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            f = embed_tiles(backbone, batch["image"].to(dev), meta["mean"], meta["std"])
        feats[idx] = f.cpu().numpy()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)  # ours: left by a killed run of this process id
    group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
    group.create_array("features", data=feats, chunks=(min(len(feats), 4096), feats.shape[1]))
    group.create_array("coords", data=dataset.coords(), chunks=(min(len(feats), 65536), 2))
    group.attrs.update(
        {
            "checkpoint": str(Path(checkpoint).resolve()),
            "store": str(dataset.paths[0].resolve()),
            "slide_id": dataset.slide_ids[0],
            "tile_mpp": dataset.tile_mpp,
            "method": meta["method"],
            "encoder_tile_mpp": meta.get("tile_mpp"),
            "backbone": meta["backbone"],
            "mean": meta["mean"],
            "std": meta["std"],
            "pathssl_version": meta.get("pathssl_version"),
        }
    )
    if out.exists() and not (force and is_embed_output(out)):  # appeared while computing
        shutil.rmtree(tmp, ignore_errors=True)
        check_embed_output(store, checkpoint, out, force)
    replace_dir(tmp, out)
    return out
