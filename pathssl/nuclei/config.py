"""Nuclei training configuration: dataclasses from YAML plus ``key=value`` overrides.

``load_config("configs/nuclei/hgsc_resnet18_cpu.yaml", ["train.max_steps=50"])``. Parsing and
checking are the package's one config system (:mod:`pathssl.config`): unknown keys and wrong
types fail with a ``ConfigError`` (a ``ValueError``) naming the key and the valid ones. The
``optim`` and ``train`` sections are pretraining's (:class:`~pathssl.train.config.OptimConfig`,
:class:`~pathssl.train.config.LoopConfig`) with the head's defaults: the same key for the same
setting everywhere.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pathssl.config import ConfigError, from_dict, load
from pathssl.nuclei.postprocess import PostProcessConfig
from pathssl.train.config import LoopConfig, OptimConfig

SOURCE_FORMATS = ("imagescope", "geojson", "mask", "mat", "npz", "pannuke")
SPLITS = ("image", "organ", "patient")


@dataclass
class SourceConfig:
    """One labelled dataset of ``data.sources`` (read by :mod:`pathssl.nuclei.sources`).

    ``format``: ``imagescope`` (Aperio XML polygons), ``geojson`` (QuPath polygons), ``mask``
    (binary masks: instances = connected components), ``mat`` (HoVer-Net/CoNSeP), ``npz`` (one
    image + instance ``labels`` + ``types`` .npz), ``pannuke`` (a fold folder). ``path``: the
    folder (or one label file; npz: the image). ``labels`` / ``images``: globs under ``path``,
    paired by file stem (defaults per format: :data:`pathssl.nuclei.sources.LAYOUTS`).
    ``mpp``: micrometres per pixel of images whose files record none (a file's own value wins).
    ``type_map``: class name (polygons) or stored type id (mat, npz, pannuke) -> type id
    1..len(data.type_names); empty: every nucleus type 1. ``weight``: the source's share of the
    training crops (relative to the other sources'; within a source by image area).
    ``licence``: recorded in ``nuclei.pt`` with the images used. ``organ``: for images whose
    name does not tell it (TCGA names do). Held apart: whole images grouped by ``split``
    (``image`` name, ``organ``, ``patient``): the groups listed in ``val``, else a seeded
    ``val_fraction`` of the groups (1.0: an evaluation-only source). ``limit``: first N images.
    """

    format: str = ""
    path: str = ""
    labels: str = ""
    images: str = ""
    types: str = ""
    mpp: float | None = None
    type_map: dict[str, int] = field(default_factory=dict)
    weight: float = 1.0
    licence: str = ""
    organ: str = ""
    split: str = "image"
    val: list[str] = field(default_factory=list)
    val_fraction: float = 0.0
    limit: int | None = None

    def __post_init__(self) -> None:
        self.type_map = {str(k): v for k, v in (self.type_map or {}).items()}

    def check(self, where: str, n_types: int) -> None:
        if self.format not in SOURCE_FORMATS:
            raise ConfigError(
                f"{where}.format: {self.format!r} is not one of {', '.join(SOURCE_FORMATS)}"
            )
        if not self.path:
            raise ConfigError(f"{where}.path is not set")
        if self.split not in SPLITS:
            raise ConfigError(f"{where}.split: {self.split!r} is not one of {', '.join(SPLITS)}")
        if not 0 <= self.val_fraction <= 1:
            raise ConfigError(f"{where}.val_fraction must be in [0, 1], got {self.val_fraction}")
        if self.val and self.val_fraction:
            raise ConfigError(f"{where}: set val (the groups held apart) or val_fraction, not both")
        if not self.weight > 0:
            raise ConfigError(f"{where}.weight must be > 0, got {self.weight}")
        if self.mpp is not None and not self.mpp > 0:
            raise ConfigError(f"{where}.mpp must be > 0 micrometres per pixel, got {self.mpp}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"{where}.limit must be >= 1 or null, got {self.limit}")
        for k, v in self.type_map.items():
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= n_types:
                raise ConfigError(
                    f"{where}.type_map[{k!r}]: {v!r} is not a type id 1..{n_types} "
                    "(one per data.type_names)"
                )


# the one-dataset keys, which data.sources replaces
LEGACY_KEYS = (
    "format", "image", "inst", "types", "labels", "folder", "val_folder", "train_region",
    "val_region", "val_fraction", "type_lut", "mpp", "limit",
)  # fmt: skip


@dataclass
class DataConfig:
    """Many datasets: ``sources``, a mapping of names to :class:`SourceConfig` (override one
    key with ``data.sources.NAME.KEY=VALUE``), held apart per source, split with ``seed``.

    One dataset (the older keys, when ``sources`` is empty): ``format``: ``npz`` (image +
    instance/type .npz), ``pannuke`` (a fold folder) or ``mat``
    (CoNSeP/Lizard: ``image`` + ``labels`` .mat, or a ``folder`` with ``Images/`` + ``Labels/``).

    Held-apart images: ``val_folder`` (a second PanNuke fold or CoNSeP-style folder, e.g. the
    official test split), else for one image ``train_region``/``val_region`` (``[x, y, w, h]``
    pixel boxes, both required, must not overlap), else for PanNuke / a mat folder
    ``val_fraction`` of the images (seeded, stratified by tissue). ``type_names``: one per type id
    1..T; ``type_lut``: optional map of the stored type ids to 0..T (CoNSeP's 7 types to
    HoVer-Net's 4: ``[0, 1, 2, 3, 3, 4, 4, 4]``). ``mpp``: the images' micrometres per pixel
    (no default: a wrong value would silently train the head at the wrong scale).
    Loading: ``batch_size`` random ``crop`` x ``crop`` training crops per step, made by
    ``num_workers`` DataLoader workers."""

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
    mpp: float | None = None
    batch_size: int = 4
    crop: int = 256
    num_workers: int = 0
    sources: dict[str, SourceConfig] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.sources = {
            str(name): src if isinstance(src, SourceConfig) else _source(name, src)
            for name, src in (self.sources or {}).items()
        }


def _source(name: str, values: Any) -> SourceConfig:
    src: SourceConfig = from_dict(SourceConfig, values, f"data.sources.{name}")
    return src


@dataclass
class ModelConfig:
    """``backbone``: registered name; ``checkpoint``: a pretraining checkpoint whose ``trunk``
    initialises it (empty: random init); ``finetune``: frozen | partial | full. ``mpp``: the
    resolution the model works at, recorded in ``nuclei.pt`` for prediction (None: the
    checkpoint's ``tile_mpp`` when ``checkpoint`` is set, else ``data.mpp``); training images
    at another mpp are resampled to it. ``stain_norm``: ``none`` | ``macenko`` | ``reinhard``: fit a
    stain reference on the training images once, store it in ``nuclei.pt``, and normalise
    prediction inputs to it (``predict.stain_norm``).

    ``checkpoint`` may also be an external encoder file (torchvision ImageNet weights, a timm /
    DINO / DINOv2 / published pathology encoder, BiT ``.npz``: :mod:`pathssl.models.external`);
    ``encoder_mean`` / ``encoder_std`` / ``encoder_tile_mpp`` then give what such a file does not
    record (mean/std required unless its layout defines them; ``encoder_tile_mpp`` required
    unless ``model.mpp`` is set). A pathssl checkpoint's recorded values win over them."""

    backbone: str = "resnet18"
    mpp: float | None = None
    params: dict[str, Any] = field(default_factory=dict)
    checkpoint: str = ""
    finetune: str = "full"
    trainable_stages: int = 2
    widths: list[int] = field(default_factory=lambda: [32, 64, 96, 128, 256])
    shared_decoder: bool = False
    mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: list[float] = field(default_factory=lambda: [0.25, 0.25, 0.25])
    stain_norm: str = "none"
    encoder_mean: list[float] | None = None
    encoder_std: list[float] | None = None
    encoder_tile_mpp: float | None = None


@dataclass
class NucleiOptimConfig(OptimConfig):
    """Pretraining's ``optim`` section with the head's defaults: AdamW at 1e-3 (not scaled by
    batch size), weight decay 1e-4, 20 warm-up steps then cosine decay, gradients clipped at 5."""

    name: str = "adamw"
    lr: float = 1e-3
    lr_scaling: str = "none"
    weight_decay: float = 1e-4
    warmup_steps: int = 20
    clip_grad: float | None = 5.0


MONITORS = ("pq", "mpq_plus", "f1_detection")


@dataclass
class TrainConfig(LoopConfig):
    """The shared loop keys (:class:`~pathssl.train.config.LoopConfig`: ``max_steps``, ``seed``,
    ``device``, ``out_dir``, ``ckpt_every``, ``log_every``, ``precision``, ``resume``, ...) with
    the head's defaults, and the head's own.

    ``stain_jitter``: HED jitter half-width of the training crops (0: off; 0.05 light, 0.2
    strong): for heads meant for other labs' stains.
    ``val_every``: steps between validations on the held-apart images (``data.val_region`` /
    ``val_fraction``; 0: none). With validation the saved model is the one of the best ``monitor``
    (``pq`` binary PQ, ``mpq_plus`` CoNIC aggregated mPQ+, ``f1_detection``), and ``patience``
    validations without improvement stop training early (null: never). Model selection uses the
    validation images: report accuracy on images that took no part in it.
    ``label_fraction`` / ``label_tile``: train on that fraction of the labelled area, in tiles of
    that size (label-efficiency runs)."""

    max_steps: int = 300
    out_dir: str = "runs/nuclei"
    resume: bool = False
    lambda_hv_mse: float = 2.0  # MONAI's weights (2, 1); the paper's are (1, 2)
    lambda_hv_grad: float = 1.0
    label_tile: int = 256
    label_fraction: float = 1.0
    stain_jitter: float = 0.0
    val_every: int = 0
    monitor: str = "pq"
    patience: int | None = None

    def check(self, where: str = "train") -> None:
        super().check(where)
        if self.monitor not in MONITORS:
            raise ConfigError(
                f"{where}.monitor: {self.monitor!r} is not one of {', '.join(MONITORS)}"
            )
        if not 0 < self.label_fraction <= 1:
            raise ConfigError(
                f"{where}.label_fraction must be in (0, 1], got {self.label_fraction}"
            )
        for key in ("label_tile",):
            if getattr(self, key) < 1:
                raise ConfigError(f"{where}.{key} must be >= 1, got {getattr(self, key)}")
        for key in ("val_every", "stain_jitter", "lambda_hv_mse", "lambda_hv_grad"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{where}.{key} must be >= 0, got {getattr(self, key)}")
        if self.patience is not None and self.patience < 1:
            raise ConfigError(f"{where}.patience must be >= 1 or null, got {self.patience}")


@dataclass
class PredictConfig:
    """Sliding-window inference. ``tta``: merge the 8 dihedral flips/rotations of each window
    before post-processing. ``stain_norm``: normalise inputs to the training data's stain
    reference stored in ``nuclei.pt`` (when the model has one, see ``model.stain_norm``)."""

    window: int = 256
    overlap: int = 96
    batch_size: int = 4
    tta: bool = False
    stain_norm: bool = True


@dataclass
class NucleiConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: NucleiOptimConfig = field(default_factory=NucleiOptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    postprocess: PostProcessConfig = field(default_factory=PostProcessConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    fractions: list[float] = field(default_factory=lambda: [0.1, 0.3, 1.0])


RENAMED = {
    "train.steps": "train.max_steps",
    "train.lr": "optim.lr",
    "train.weight_decay": "optim.weight_decay",
    "train.warmup_steps": "optim.warmup_steps",
    "train.clip_grad": "optim.clip_grad",
    "train.batch_size": "data.batch_size",
    "train.crop": "data.crop",
    "train.num_workers": "data.num_workers",
}


def config_from_dict(values: dict[str, Any], migrate: bool = False) -> NucleiConfig:
    """A config from nested dicts; every key, type and value range checked. ``migrate``: move
    the keys of the older layout (:data:`RENAMED`) first (configs stored in older checkpoints);
    without it an old key fails with its new name."""
    values = _migrated(values) if migrate else values
    cfg: NucleiConfig = from_dict(NucleiConfig, values or {}, renamed=RENAMED)
    check(cfg)
    return cfg


def _migrated(values: dict[str, Any]) -> dict[str, Any]:
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in (values or {}).items()}
    for old, new in RENAMED.items():
        o_sec, o_key = old.split(".")
        n_sec, n_key = new.split(".")
        section = out.get(o_sec)
        if isinstance(section, dict) and o_key in section:
            out.setdefault(n_sec, {})[n_key] = section.pop(o_key)
    return out


def check(cfg: NucleiConfig) -> None:
    """Value ranges of every section (types are the parser's); raises ``ConfigError``."""
    cfg.optim.check("optim")
    cfg.train.check("train")
    d = cfg.data
    for key in ("batch_size", "crop"):
        if getattr(d, key) < 1:
            raise ConfigError(f"data.{key} must be >= 1, got {getattr(d, key)}")
    if d.num_workers < 0:
        raise ConfigError(f"data.num_workers must be >= 0, got {d.num_workers}")
    if cfg.model.stain_norm not in ("none", "macenko", "reinhard"):
        raise ConfigError(
            f"model.stain_norm: {cfg.model.stain_norm!r} is not one of none, macenko, reinhard"
        )
    m = cfg.model
    for key, value in (
        ("data.mpp", d.mpp), ("model.mpp", m.mpp), ("model.encoder_tile_mpp", m.encoder_tile_mpp)
    ):  # fmt: skip
        if value is not None and not value > 0:
            raise ConfigError(f"{key} must be > 0 micrometres per pixel, got {value}")
    for key, rgb in (("model.encoder_mean", m.encoder_mean), ("model.encoder_std", m.encoder_std)):
        if rgb is not None and len(rgb) != 3:
            raise ConfigError(f"{key}: give 3 values (R, G, B), got {rgb}", key)
    if d.sources:
        defaults = DataConfig()
        mixed = [k for k in LEGACY_KEYS if getattr(d, k) != getattr(defaults, k)]
        if mixed:
            raise ConfigError(
                f"data.{mixed[0]} is a key of the one-dataset layout; with data.sources set it "
                "in each source (data.sources.NAME.*) and the model's mpp in model.mpp",
                f"data.{mixed[0]}",
            )
        for name, src in d.sources.items():
            src.check(f"data.sources.{name}", len(d.type_names))


def load_config(path: str | Path, overrides: list[str] | None = None) -> NucleiConfig:
    """YAML file (``defaults`` composed) + ``section.key=value`` overrides (values parsed as
    YAML); errors name the file and line (:func:`pathssl.config.load`)."""
    cfg: NucleiConfig = load(NucleiConfig, path, overrides or (), validate=check, renamed=RENAMED)
    return cfg


def as_dict(cfg: NucleiConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
