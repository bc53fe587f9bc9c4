"""Supervised training of the HoVer-Net style nuclei head (``pathssl nuclei train CONFIG``).

Runs through the one training loop (:class:`pathssl.train.loop.Trainer`) with a
:class:`~pathssl.train.loop.SupervisedStep`: random crops (+ one dihedral draw shared by image and
maps) -> :class:`NucleiTrainModule` (``NucleiModel`` + MONAI ``HoVerNetLoss``, returning
``{"loss", **logs}``) -> AdamW with linear warm-up and cosine decay. The loop supplies bf16
autocast on CUDA, gradient clipping, the NaN guard, ``metrics.jsonl``, progress and resumable
checkpoints (``last.pt``), all assembled from the shared ``optim`` / ``train`` sections by
:mod:`pathssl.train.assemble`; the result is a checkpoint ``{"model", "meta"}`` (``nuclei.pt``,
``meta["mpp"]``: the resolution the head was trained at, :func:`model_mpp`).
With ``train.val_every`` the loop also scores the held-apart images (binary PQ, CoNIC mPQ+,
detection F1) and ``nuclei.pt`` holds the weights of the best score (:func:`validation_scores`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from pathssl.config import ConfigError
from pathssl.models.pretrained import read_checkpoint, read_pretrained
from pathssl.nuclei.config import ModelConfig, NucleiConfig, as_dict, check
from pathssl.nuclei.data import LabelledImage, NucleiCropDataset
from pathssl.nuclei.loss import HoVerNetCriterion
from pathssl.nuclei.model import NucleiModel, build_nuclei_model
from pathssl.nuclei.sources import describe_sources, sampling_weights
from pathssl.nuclei.splits import load_training_data, subset_labels
from pathssl.train.assemble import (
    assemble,
    check_out_dir,
    check_previous_run,
    setup_runtime,
    start,
)
from pathssl.train.checkpoint import save_checkpoint
from pathssl.train.distributed import pick_device
from pathssl.train.loop import SupervisedStep, Validation

CHECKPOINT = "nuclei.pt"


def read_encoder(cfg: ModelConfig) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Trunk and meta of ``model.checkpoint``: a pathssl pretraining checkpoint or an external
    encoder file (:mod:`pathssl.models.external`), ``model.encoder_*`` filling what it does not
    record. With ``model.mpp`` set the encoder's own tile_mpp may be unknown (nothing uses it)."""
    mpp: float | str | None = cfg.encoder_tile_mpp
    if mpp is None and cfg.mpp is not None:
        mpp = "none"
    return read_pretrained(
        cfg.checkpoint,
        expect_backbone=cfg.backbone,
        mean=cfg.encoder_mean,
        std=cfg.encoder_std,
        tile_mpp=mpp,
    )


def with_encoder_params(cfg: NucleiConfig) -> NucleiConfig:
    """``cfg`` with ``model.params`` completed by the encoder file's build arguments (e.g. a ViT
    variant's registers), so that the config saved in ``nuclei.pt`` rebuilds the model without
    the file; ``model.params`` set in the config win."""
    if not cfg.model.checkpoint:
        return cfg
    _, meta = read_encoder(cfg.model)
    params = {**meta.get("backbone_params", {}), **cfg.model.params}
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, params=params))


def build_model(cfg: ModelConfig, num_types: int) -> NucleiModel:
    """The model a config describes; an encoder file (``model.checkpoint``) supplies trunk,
    mean/std and its build arguments (:func:`read_encoder`)."""
    trunk, mean, std, params = None, cfg.mean, cfg.std, dict(cfg.params)
    if cfg.checkpoint:
        trunk, meta = read_encoder(cfg)
        mean, std = meta.get("mean", mean), meta.get("std", std)
        params = {**meta.get("backbone_params", {}), **params}
    return build_nuclei_model(
        cfg.backbone,
        num_types,
        backbone_params=params,
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
    meta: dict[str, Any]


class NucleiTrainModule(nn.Module):
    """Owns the head's forward and loss: ``(images, targets) -> {"loss", np_ce, hv_mse, ...}``."""

    def __init__(self, model: NucleiModel, criterion: HoVerNetCriterion) -> None:
        super().__init__()
        self.model = model
        self.criterion = criterion

    def forward(self, images: Tensor, targets: dict[str, Tensor]) -> dict[str, Tensor]:
        out: dict[str, Tensor] = self.criterion(self.model(images), targets)
        return out


class OffsetSampler(torch.utils.data.Sampler[int]):
    """``start, start + 1, ..., length - 1``: the crop dataset's items are pure functions of
    their index, so restarting at the consumed count resumes the stream exactly."""

    def __init__(self, length: int) -> None:
        self.length = length
        self.start = 0

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.length))

    def __len__(self) -> int:
        return self.length - self.start

    def state_dict(self, consumed: int) -> dict[str, Any]:
        return {"start": consumed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.start = int(state["start"])


def validation_scores(
    model: NucleiModel,
    images: Sequence[LabelledImage],
    cfg: NucleiConfig,
    device: torch.device,
    stain_reference: dict[str, Any] | None = None,
) -> dict[str, float]:
    """Predict each held-apart image (windows as ``cfg.predict``, post-processing as
    ``cfg.postprocess``) and score them together (:func:`pathssl.nuclei.scores.score_images`,
    every configured type): ``pq`` (binary PQ from counts summed over images), ``mpq_plus``
    (CoNIC aggregated), ``f1_detection`` (12 px), ``nuclei`` (how many were found)."""
    from pathssl.nuclei.predict import configured_predictor
    from pathssl.nuclei.scores import score_images

    predictor = configured_predictor(model, cfg, device, stain_reference)
    preds = [predictor.predict_image(im.image) for im in images]
    s = score_images(images, preds, classes=range(1, len(cfg.data.type_names) + 1))
    keys = ("pq", "mpq_plus", "f1_detection")
    return {**{k: float(s[k]) for k in keys}, "nuclei": float(sum(len(p) for p in preds))}


def model_mpp(cfg: NucleiConfig) -> tuple[float, str]:
    """The one place the head's resolution is decided: ``(mpp, why)``. ``model.mpp`` when set,
    else the encoder checkpoint's ``tile_mpp`` (what it was pretrained at), else ``data.mpp``."""
    if cfg.model.mpp is not None:
        return cfg.model.mpp, "model.mpp"
    if cfg.model.checkpoint:
        _, meta = read_encoder(cfg.model)
        tile_mpp = meta.get("tile_mpp")
        if tile_mpp is not None:
            return float(tile_mpp), f"the tile_mpp of the encoder checkpoint {cfg.model.checkpoint}"
    if cfg.data.sources:
        raise ConfigError(
            "model.mpp is not set and no encoder checkpoint records a tile_mpp: with "
            "data.sources set model.mpp, the resolution every source is resampled to"
        )
    if cfg.data.mpp is None:
        raise ConfigError(
            "data.mpp is not set and no encoder checkpoint records a tile_mpp: set data.mpp to "
            "the images' micrometres per pixel (or model.mpp)"
        )
    return cfg.data.mpp, "data.mpp: no encoder checkpoint with a tile_mpp"


def train_nuclei(
    cfg: NucleiConfig,
    train_images: Sequence[LabelledImage] | None = None,
    progress: bool = True,
    sources: list[dict[str, Any]] | None = None,
) -> TrainResult:
    """Train per ``cfg``; ``train_images`` overrides the config's data (label-efficiency runs;
    they must be at the model's mpp, :func:`model_mpp`; ``sources``: their records). Writes
    ``out_dir/nuclei.pt`` (``meta["sources"]``: the datasets that trained it, with their
    licences and images, :func:`pathssl.nuclei.sources.source_record`),
    ``out_dir/metrics.jsonl`` and ``out_dir/last.pt`` (every ``train.ckpt_every`` steps;
    ``train.resume=true`` continues from it). With ``data.sources`` each crop's source is drawn
    with the sources' ``weight`` s (:func:`pathssl.nuclei.sources.sampling_weights`). Inputs
    and outputs are checked before any compute."""
    t_start = time.perf_counter()
    tc, dc = cfg.train, cfg.data
    check(cfg)
    cfg = with_encoder_params(cfg)
    check_out_dir(tc.out_dir)
    check_previous_run(tc, {"kind": "nuclei", "backbone": cfg.model.backbone})
    torch.manual_seed(tc.seed)
    _, device = setup_runtime(tc)
    mpp, why = model_mpp(cfg)
    print(f"nuclei head at {mpp:g} um/px ({why})", flush=True)
    val_images: Sequence[LabelledImage] = []
    if train_images is None or tc.val_every > 0:
        data = load_training_data(cfg.data, target_mpp=mpp)
        all_train, val_images, sources = data.train, data.val, sources or data.sources
        if train_images is None:
            train_images = all_train
            if tc.label_fraction < 1:
                train_images = subset_labels(
                    train_images, tc.label_fraction, tc.label_tile, tc.seed
                )
    num_types = len(dc.type_names)
    model = build_model(cfg.model, num_types).to(device)
    criterion = HoVerNetCriterion(
        tc.lambda_hv_mse, use_types=num_types > 1, lambda_hv_grad=tc.lambda_hv_grad
    )
    module = NucleiTrainModule(model, criterion)
    weights = None
    if dc.sources:
        weights = sampling_weights(train_images, {k: s.weight for k, s in dc.sources.items()})
    ds = NucleiCropDataset(
        train_images,
        dc.crop,
        tc.max_steps * dc.batch_size,
        seed=tc.seed,
        stain_jitter=tc.stain_jitter,
        weights=None if weights is None else weights.tolist(),
    )
    sampler = OffsetSampler(len(ds))
    loader = torch.utils.data.DataLoader(
        ds,
        batch_size=dc.batch_size,
        sampler=sampler,
        num_workers=dc.num_workers,
        drop_last=True,
        pin_memory=device.type == "cuda",
    )
    groups = [{"params": [p for p in model.parameters() if p.requires_grad], "name": "all"}]
    out_dir = Path(tc.out_dir)
    meta = {
        "kind": "nuclei",
        "backbone": cfg.model.backbone,
        "num_types": num_types,
        "type_names": list(dc.type_names),
        "mpp": mpp,
        "mpp_source": why,
        "sources": sources or [],
        "config": as_dict(cfg),
    }
    for line in describe_sources(sources or []):
        print(f"trained on {line}", flush=True)
    reference = None
    if cfg.model.stain_norm != "none":
        reference = _stain_reference(train_images, cfg.model.stain_norm)
        meta["stain_reference"] = reference
    validation = _validation(cfg, model, val_images, device, reference)
    trainer = assemble(
        module,
        groups,
        loader,
        sampler,
        SupervisedStep(device),
        optim=cfg.optim,
        train=dataclasses.replace(tc, progress=progress and tc.progress),
        device=device,
        meta=meta,
        validation=validation,
    )
    start(trainer, tc)
    last = trainer.fit()
    if validation is not None:
        meta["best_step"] = trainer.restore_best()
        meta["best_score"] = {tc.monitor: trainer.best}
    ckpt = save_checkpoint(out_dir / CHECKPOINT, {"model": model.state_dict(), "meta": meta})
    return TrainResult(model.eval(), ckpt, last, time.perf_counter() - t_start, meta)


def _stain_reference(images: Sequence[LabelledImage], method: str) -> dict[str, Any]:
    """The stain reference of the training images (fitted once, stored in ``nuclei.pt``): on
    at most 64 of them, evenly spread over the list (every source is represented)."""
    from pathssl.nuclei.stain_norm import fit_reference

    picks = np.unique(np.linspace(0, len(images) - 1, min(64, len(images))).round().astype(int))
    return fit_reference([images[int(i)].image for i in picks], method)


def _validation(
    cfg: NucleiConfig,
    model: NucleiModel,
    val_images: Sequence[LabelledImage],
    device: torch.device,
    stain_reference: dict[str, Any] | None = None,
) -> Validation | None:
    tc = cfg.train
    if tc.val_every <= 0:
        return None
    if not val_images:
        raise ValueError(
            "train.val_every needs held-apart images: set data.val_region (npz/mat) or "
            "data.val_fraction > 0 (pannuke)"
        )
    return Validation(
        lambda: validation_scores(model, val_images, cfg, device, stain_reference),
        every=tc.val_every,
        monitor=tc.monitor,
        patience=tc.patience,
    )


def load_nuclei_model(path: str | Path, device: str = "cpu") -> tuple[NucleiModel, dict[str, Any]]:
    """A trained nuclei checkpoint (``nuclei.pt``) -> (model in eval mode on ``device``, meta).
    Any other checkpoint (a pretraining one, a loop's ``last.pt``) is refused with a message
    naming what it is and what was expected."""
    from pathssl.nuclei.config import config_from_dict

    fix = "pass the nuclei.pt that `pathssl nuclei train` writes in its train.out_dir"
    ckpt = read_checkpoint(path, expect="nuclei", fix=fix)
    meta = ckpt["meta"]
    cfg = config_from_dict(meta["config"], migrate=True)
    cfg.model.checkpoint = ""  # the weights come from this checkpoint
    model = build_model(cfg.model, int(meta["num_types"]))
    model.load_state_dict(ckpt["model"])
    return model.to(pick_device(device)).eval(), meta
