"""Supervised training of the HoVer-Net style nuclei head (``pathssl nuclei train CONFIG``).

The SSL loop (:mod:`pathssl.train.loop`) is built around unlabelled tile stores, view recipes and
``method(views)``; supervised crops with targets do not fit it, so this module has its own small
loop: random crops (+ one dihedral draw shared by image and maps) -> ``NucleiModel`` -> MONAI
``HoVerNetLoss`` -> AdamW with linear warm-up and cosine decay, gradient clipping, a
``metrics.jsonl`` log and a checkpoint ``{"model", "meta"}`` (``nuclei.pt``).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pathssl.heads.datasets import (
    LabelledImage,
    NucleiCropDataset,
    load_mat_image,
    load_npz_pair,
    load_pannuke,
)
from pathssl.heads.hovernet import NucleiModel, build_nuclei_model
from pathssl.heads.loss import HoVerNetCriterion
from pathssl.models.pretrained import read_pretrained
from pathssl.nuclei.config import DataConfig, ModelConfig, NucleiConfig, as_dict

CHECKPOINT = "nuclei.pt"


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_data(cfg: DataConfig) -> tuple[list[LabelledImage], list[LabelledImage]]:
    """(training images, held-apart validation images) as the config describes."""
    if cfg.format == "pannuke":
        images = [_map_types(im, cfg.type_lut) for im in load_pannuke(cfg.folder, cfg.limit)]
        n_val = int(round(len(images) * cfg.val_fraction))
        return images[n_val:], images[:n_val]
    if cfg.format == "npz":
        full = load_npz_pair(cfg.image, cfg.inst, cfg.types or None)
    elif cfg.format == "mat":
        full = load_mat_image(cfg.image, cfg.labels)
    else:
        raise ValueError(f"data.format must be npz, pannuke or mat, got {cfg.format!r}")
    full = _map_types(full, cfg.type_lut)
    n_types = int(full.types.max())
    if n_types > len(cfg.type_names):
        raise ValueError(
            f"labels hold type ids up to {n_types} but data.type_names has "
            f"{len(cfg.type_names)} names (set data.type_lut to merge types)"
        )
    train = full.region(*cfg.train_region) if cfg.train_region else full
    val = [full.region(*cfg.val_region)] if cfg.val_region else []
    return [train], val


def _map_types(im: LabelledImage, lut: list[int] | None) -> LabelledImage:
    if lut is None:
        return im
    table = np.asarray(lut, np.int32)
    return LabelledImage(im.image, im.inst, table[im.types], im.name, im.tissue)


def subset_labels(
    images: list[LabelledImage], fraction: float, tile: int, seed: int = 0
) -> list[LabelledImage]:
    """Keep ``fraction`` of the labelled area: images cut into ``tile`` px tiles (the last row and
    column moved back to end at the border, so the whole image is covered; an image smaller than
    two tiles is one tile), a seeded shuffle, the first ``ceil(fraction * n)``. Subsets are
    nested: 10% is inside 30% is inside 100% for one seed."""
    if not 0 < fraction <= 1:
        raise ValueError(f"label fraction must be in (0, 1], got {fraction}")
    tiles: list[LabelledImage] = []
    for im in images:
        h, w = im.image.shape[:2]
        if (h < 2 * tile and w < 2 * tile) or min(h, w) < tile:
            tiles.append(im)
            continue
        for y in _starts(h, tile):
            for x in _starts(w, tile):
                tiles.append(im.region(x, y, tile, tile))
    order = np.random.default_rng(seed).permutation(len(tiles))
    keep = max(1, math.ceil(fraction * len(tiles)))
    return [tiles[i] for i in sorted(order[:keep].tolist())]


def _starts(length: int, tile: int) -> list[int]:
    starts = list(range(0, length - tile + 1, tile))
    return starts if starts[-1] + tile == length else [*starts, length - tile]


def build_model(cfg: ModelConfig, num_types: int) -> NucleiModel:
    """The model a config describes; a pretraining checkpoint supplies trunk and mean/std."""
    trunk, mean, std = None, cfg.mean, cfg.std
    if cfg.checkpoint:
        trunk, meta = read_pretrained(cfg.checkpoint, expect_backbone=cfg.backbone)
        mean, std = meta.get("mean", mean), meta.get("std", std)
    return build_nuclei_model(
        cfg.backbone,
        num_types,
        backbone_params=cfg.params,
        trunk_state=trunk,
        mean=mean,
        std=std,
        finetune=cfg.finetune,  # type: ignore[arg-type]
        trainable_stages=cfg.trainable_stages,
        widths=cfg.widths,
        shared_decoder=cfg.shared_decoder,
    )


@dataclass
class TrainResult:
    model: NucleiModel
    checkpoint: Path
    last: dict[str, float]
    seconds: float


def _save(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def train_nuclei(
    cfg: NucleiConfig,
    train_images: list[LabelledImage] | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train per ``cfg``; ``train_images`` overrides the config's data (label-efficiency runs).
    Writes ``out_dir/nuclei.pt`` and ``out_dir/metrics.jsonl``."""
    from tqdm import tqdm

    t_start = time.perf_counter()
    tc = cfg.train
    torch.manual_seed(tc.seed)
    device = pick_device(tc.device)
    if train_images is None:
        train_images, _ = load_data(cfg.data)
        if tc.label_fraction < 1:
            train_images = subset_labels(train_images, tc.label_fraction, tc.label_tile, tc.seed)
    num_types = len(cfg.data.type_names)
    model = build_model(cfg.model, num_types).to(device)
    criterion = HoVerNetCriterion(tc.lambda_hv_mse, use_types=num_types > 1)
    ds = NucleiCropDataset(train_images, tc.crop, tc.steps * tc.batch_size, seed=tc.seed)
    loader = torch.utils.data.DataLoader(
        ds, batch_size=tc.batch_size, num_workers=tc.num_workers, drop_last=True
    )
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay)

    def lr_at(step: int) -> float:
        if step < tc.warmup_steps:
            return (step + 1) / tc.warmup_steps
        t = (step - tc.warmup_steps) / max(tc.steps - tc.warmup_steps, 1)
        return 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    out_dir = Path(tc.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log = open(out_dir / "metrics.jsonl", "w")  # noqa: SIM115 - closed in finally
    model.train()
    sums: dict[str, float] = {}
    last: dict[str, float] = {}
    bar = tqdm(total=tc.steps, unit="step", disable=not progress, dynamic_ncols=True)
    try:
        for step, batch in enumerate(loader, start=1):
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            out = model(batch.pop("image"))
            logs = criterion(out, batch)
            opt.zero_grad(set_to_none=True)
            logs["loss"].backward()
            gn = torch.nn.utils.clip_grad_norm_(params, tc.clip_grad or math.inf)
            if torch.isfinite(logs["loss"]) and torch.isfinite(gn):
                opt.step()
            sched.step()
            for k, v in logs.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            bar.update(1)
            if step % tc.log_every == 0 or step == tc.steps:
                n = tc.log_every if step % tc.log_every == 0 else step % tc.log_every
                last = {k: v / n for k, v in sums.items()}
                sums = {}
                log.write(json.dumps({"step": step, **last, "lr": sched.get_last_lr()[0]}) + "\n")
                log.flush()
                bar.set_postfix(loss=f"{last['loss']:.3f}")
    finally:
        bar.close()
        log.close()
    meta = {
        "kind": "nuclei",
        "backbone": cfg.model.backbone,
        "num_types": num_types,
        "type_names": list(cfg.data.type_names),
        "mpp": cfg.data.mpp,
        "config": as_dict(cfg),
    }
    ckpt = out_dir / CHECKPOINT
    _save(ckpt, {"model": model.state_dict(), "meta": meta})
    return TrainResult(model.eval(), ckpt, last, time.perf_counter() - t_start)


def load_nuclei_model(path: str | Path, device: str = "cpu") -> tuple[NucleiModel, dict[str, Any]]:
    """A trained nuclei checkpoint -> (model in eval mode on ``device``, meta)."""
    from pathssl.nuclei.config import config_from_dict

    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    meta = ckpt["meta"]
    cfg = config_from_dict(meta["config"])
    cfg.model.checkpoint = ""  # the weights come from this checkpoint
    model = build_model(cfg.model, int(meta["num_types"]))
    model.load_state_dict(ckpt["model"])
    return model.to(pick_device(device)).eval(), meta
