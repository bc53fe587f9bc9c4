"""Typed ``pathssl eval`` configuration (``configs/eval/*.yaml``), loaded by :mod:`pathssl.config`.

The same key names the same setting as in pretraining and nuclei training: ``model.backbone``
and ``model.checkpoint`` (the encoder), ``data.batch_size``, ``train.out_dir``,
``train.device``, ``train.seed``, ``train.precision``::

    data:
      source: {format: csv, csv: labels.csv, path_column: path, label_column: label}
      # or format: folder + root, or format: store + store + labels (an index,label CSV)
      test: null                 # a separate test source; null: test_fraction of each class
      test_fraction: 0.3
      seed: 0                    # the train/test split
      image_size: 224
      class_names: null          # fixes the class order (default: sorted label strings)
      batch_size: 64             # feature extraction and prediction
    model: {backbone: resnet18, checkpoint: null}   # a checkpoint's trunk, or a random init
    protocols:                   # the protocols to run (none listed: linear and knn)
      linear: {l2: 1.0e-4, max_iter: 500}
      knn: {k: 20}
      fewshot: {shots: [1, 4, 16], episodes: 100}
      finetune: {epochs: 10, lr: 1.0e-4, weight_decay: 1.0e-4, batch_size: 32,
                 warmup_epochs: 1, val_fraction: 0.1, patience: 3, hed_jitter: 0.05,
                 label_smoothing: 0.0}
    train: {out_dir: runs/eval, device: auto, seed: 0, precision: auto}

``train.seed`` seeds the random initialisation of a backbone without checkpoint and the
fine-tuning run; ``train.precision`` applies to fine-tuning. Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pathssl.config import ConfigError, from_dict, load, setting

DEVICE_PATTERN = r"auto|cpu|mps|cuda(:\d+)?"

# keys of the raw-dict configs before the typed schema -> their names now
RENAMED = {
    "encoder": "model",
    "encoder.seed": "train.seed",
    "batch_size": "data.batch_size",
    "device": "train.device",
    "output": "train.out_dir",
    "protocols.finetune.precision": "train.precision",
}


@dataclass
class SourceConfig:
    """Labelled tiles. ``format``: ``folder`` (``root/<class>/*.png``), ``csv`` (a ``csv`` of
    ``path_column`` + ``label_column``, paths relative to ``root`` or to the CSV) or ``store``
    (a tile ``store`` + a ``labels`` CSV of ``index_column`` + ``label_column``). ``mpp``: the
    images' micrometres per pixel for folders and CSVs (stores record their own); tiles are read
    at the encoder's ``tile_mpp`` when it differs by more than 10 %."""

    format: str = setting("", choices=("folder", "csv", "store"))
    mpp: float | None = setting(None, gt=0.0)
    root: str | None = None
    csv: str = ""
    path_column: str = "path"
    label_column: str = "label"
    store: str = ""
    labels: str = ""
    index_column: str = "index"


@dataclass
class DataConfig:
    """``source`` (required) and an optional separate ``test`` source; without one,
    ``test_fraction`` of each class (split seeded by ``seed``) is the test set."""

    source: SourceConfig | None = None
    test: SourceConfig | None = None
    test_fraction: float = setting(0.3, gt=0.0, lt=1.0)
    seed: int = 0
    image_size: int = setting(224, ge=8)
    class_names: list[str] | None = None
    batch_size: int = setting(64, ge=1)


@dataclass
class ModelConfig:
    """``backbone``: a registered backbone (random init, seeded by ``train.seed``) or, with a
    ``checkpoint`` (a pretraining checkpoint), the backbone it must hold (null: whatever it
    holds)."""

    backbone: str | None = None
    checkpoint: str | None = None


@dataclass
class LinearConfig:
    """Multinomial logistic regression: L2 penalty ``l2``, at most ``max_iter`` iterations."""

    l2: float = setting(1e-4, ge=0.0)
    max_iter: int = setting(500, ge=1)


@dataclass
class KnnConfig:
    """Cosine kNN with ``k`` neighbours."""

    k: int = setting(20, ge=1)


@dataclass
class FewShotConfig:
    """``shots`` labelled tiles per class, ``episodes`` random draws each."""

    shots: list[int] = setting(default_factory=lambda: [1, 4, 16], ge=1)
    episodes: int = setting(100, ge=1)


@dataclass
class FinetuneConfig:
    """Trunk + linear layer through the training loop: ``val_fraction`` of the training tiles
    validate every epoch, the best weights are kept, ``patience`` epochs without improvement
    stop it (null: never)."""

    epochs: int = setting(10, ge=1)
    lr: float = setting(1e-4, gt=0.0)
    weight_decay: float = setting(1e-4, ge=0.0)
    batch_size: int = setting(32, ge=1)
    warmup_epochs: float = setting(1.0, ge=0.0)
    val_fraction: float = setting(0.1, ge=0.0, lt=1.0)
    patience: int | None = setting(3, ge=1)
    hed_jitter: float = setting(0.05, ge=0.0)
    label_smoothing: float = setting(0.0, ge=0.0, lt=1.0)


@dataclass
class ProtocolsConfig:
    """The protocols to run; a protocol set to null (or left out) does not run. With none set,
    ``linear`` and ``knn`` run with their defaults."""

    linear: LinearConfig | None = None
    knn: KnnConfig | None = None
    fewshot: FewShotConfig | None = None
    finetune: FinetuneConfig | None = None


@dataclass
class TrainConfig:
    """Where and how: ``out_dir`` (metrics.json, confusion PNGs, ``finetune/``), ``device``
    (auto | cpu | cuda | cuda:N | mps), ``seed``, ``precision`` (auto | bf16 | fp32)."""

    out_dir: str = "runs/eval"
    device: str = setting(
        "auto", pattern=DEVICE_PATTERN, expect="one of auto, cpu, cuda, cuda:N, mps"
    )
    seed: int = 0
    precision: str = setting("auto", choices=("auto", "bf16", "fp32"))


@dataclass
class EvalConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    protocols: ProtocolsConfig = field(default_factory=ProtocolsConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


REQUIRED = {"folder": ("root",), "csv": ("csv",), "store": ("store", "labels")}


def validate(cfg: EvalConfig) -> None:
    """Cross-field rules: a data source with the fields its format needs, an encoder named,
    at least one protocol (filled in by :func:`load_config` when none is listed)."""
    if cfg.data.source is None:
        raise ConfigError("data.source is required: {format: folder|csv|store, ...}", "data")
    for name, source in (("data.source", cfg.data.source), ("data.test", cfg.data.test)):
        if source is None:
            continue
        for key in REQUIRED[source.format]:
            if not getattr(source, key):
                raise ConfigError(
                    f"{name}.{key} is required for format {source.format!r}", f"{name}.{key}"
                )
    if cfg.model.backbone is None and cfg.model.checkpoint is None:
        raise ConfigError(
            "model: set model.backbone (random init) or model.checkpoint (a pretrained trunk)",
            "model",
        )


def with_default_protocols(cfg: EvalConfig) -> EvalConfig:
    """``cfg`` with ``linear`` and ``knn`` (defaults) when it lists no protocol."""
    p = cfg.protocols
    if all(x is None for x in (p.linear, p.knn, p.fewshot, p.finetune)):
        p.linear, p.knn = LinearConfig(), KnnConfig()
    return cfg


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> EvalConfig:
    """Compose the YAML ``path`` (``defaults`` allowed), apply ``key=value`` overrides, parse
    and check it; one-line :class:`ConfigError` naming file, line and key otherwise."""
    cfg = load(EvalConfig, path, overrides, validate=validate, renamed=RENAMED)
    return with_default_protocols(cfg)


def config_from_dict(values: dict[str, object]) -> EvalConfig:
    """An :class:`EvalConfig` from nested dicts (every key, type and value checked)."""
    try:
        cfg = from_dict(EvalConfig, values, renamed=RENAMED)
        validate(cfg)
    except ConfigError as exc:
        raise ConfigError(f"eval config: {exc}", exc.key) from None
    return with_default_protocols(cfg)
