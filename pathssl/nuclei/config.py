"""Nuclei training configuration: dataclasses from YAML plus ``key=value`` overrides.

``load_config("configs/nuclei/hgsc_resnet18_cpu.yaml", ["train.steps=50"])``. Parsing and
checking are pretraining's (:mod:`pathssl.train.config`): unknown keys and wrong types fail with
a ``ConfigError`` (a ``ValueError``) naming the key and the valid ones.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pathssl.nuclei.postprocess import PostProcessConfig
from pathssl.train.config import apply_override, from_dict


@dataclass
class DataConfig:
    """``format``: ``npz`` (image + instance/type .npz), ``pannuke`` (a fold folder) or ``mat``
    (CoNSeP/Lizard: ``image`` + ``labels`` .mat, or a ``folder`` with ``Images/`` + ``Labels/``).

    Held-apart images: ``val_folder`` (a second PanNuke fold or CoNSeP-style folder, e.g. the
    official test split), else for one image ``train_region``/``val_region`` (``[x, y, w, h]``
    pixel boxes, both required, must not overlap), else for PanNuke / a mat folder
    ``val_fraction`` of the images (seeded, stratified by tissue). ``type_names``: one per type id
    1..T; ``type_lut``: optional map of the stored type ids to 0..T (CoNSeP's 7 types to
    HoVer-Net's 4: ``[0, 1, 2, 3, 3, 4, 4, 4]``)."""

    format: str = "npz"
    image: str = ""
    inst: str = ""
    types: str = ""
    labels: str = ""
    folder: str = ""
    val_folder: str = ""
    limit: int | None = None
    train_region: list[int] | None = None
    val_region: list[int] | None = None
    val_fraction: float = 0.1
    seed: int = 0
    type_names: list[str] = field(default_factory=lambda: ["nucleus"])
    type_lut: list[int] | None = None
    mpp: float = 0.5


@dataclass
class ModelConfig:
    """``backbone``: registered name; ``checkpoint``: a pretraining checkpoint whose ``trunk``
    initialises it (empty: random init); ``finetune``: frozen | partial | full."""

    backbone: str = "resnet18"
    params: dict[str, Any] = field(default_factory=dict)
    checkpoint: str = ""
    finetune: str = "full"
    trainable_stages: int = 2
    widths: list[int] = field(default_factory=lambda: [32, 64, 96, 128, 256])
    shared_decoder: bool = False
    mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: list[float] = field(default_factory=lambda: [0.25, 0.25, 0.25])


@dataclass
class TrainConfig:
    """``precision``: auto (bf16 autocast on CUDA) | bf16 | fp32; ``ckpt_every``: steps between
    resumable checkpoints (``out_dir/last.pt``); ``resume``: continue from that checkpoint.

    ``stain_jitter``: HED jitter half-width of the training crops (0: off; 0.05 light, 0.2
    strong): for heads meant for other labs' stains.
    ``val_every``: steps between validations on the held-apart images (``data.val_region`` /
    ``val_fraction``; 0: none). With validation the saved model is the one of the best ``monitor``
    (``pq`` binary PQ, ``mpq_plus`` CoNIC aggregated mPQ+, ``f1_detection``), and ``patience``
    validations without improvement stop training early (null: never). Model selection uses the
    validation images: report accuracy on images that took no part in it."""

    steps: int = 300
    batch_size: int = 4
    crop: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 20
    clip_grad: float | None = 5.0
    lambda_hv_mse: float = 2.0  # MONAI's weights (2, 1); the paper's are (1, 2)
    lambda_hv_grad: float = 1.0
    seed: int = 0
    device: str = "auto"
    num_workers: int = 0
    log_every: int = 10
    out_dir: str = "runs/nuclei"
    label_tile: int = 256
    label_fraction: float = 1.0
    precision: str = "auto"
    ckpt_every: int = 500
    resume: bool = False
    stain_jitter: float = 0.0
    val_every: int = 0
    monitor: str = "pq"
    patience: int | None = None


@dataclass
class PredictConfig:
    window: int = 256
    overlap: int = 96
    batch_size: int = 4


@dataclass
class NucleiConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    postprocess: PostProcessConfig = field(default_factory=PostProcessConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    fractions: list[float] = field(default_factory=lambda: [0.1, 0.3, 1.0])


def config_from_dict(values: dict[str, Any]) -> NucleiConfig:
    """A config from nested dicts; every key and type checked (``pathssl.train.config``)."""
    cfg: NucleiConfig = from_dict(NucleiConfig, values or {})
    return cfg


def load_config(path: str | Path, overrides: list[str] | None = None) -> NucleiConfig:
    """YAML file + ``section.key=value`` overrides (values parsed as YAML)."""
    values = yaml.safe_load(Path(path).read_text()) or {}
    for item in overrides or []:
        apply_override(values, item)
    return config_from_dict(values)


def as_dict(cfg: NucleiConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
