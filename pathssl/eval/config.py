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
      bit_hyperrule: {batch_size: 512, base_lr: 0.003, steps: null, mixup: null}
      finetune: {epochs: 10, lr: 1.0e-4, weight_decay: 1.0e-4, batch_size: 32,
                 warmup_epochs: 1, val_fraction: 0.1, patience: 3, hed_jitter: 0.05,
                 label_smoothing: 0.0}
    train: {out_dir: runs/eval, device: auto, seed: 0, precision: auto}

``train.seed`` seeds the random initialisation of a backbone without checkpoint and the
fine-tuning run; ``train.precision`` applies to fine-tuning.

A config with ``encoders:`` and ``tasks:`` lists is a benchmark (:class:`BenchmarkConfig`, run by
:mod:`pathssl.eval.benchmark`; ``configs/eval/encoders.yaml`` is annotated)::

    encoders:                    # each: name, backbone and/or checkpoint, optional mean/std/tile_mpp
      - {name: random, backbone: resnet18}
      - {name: ssl, backbone: resnet18, checkpoint: runs/simclr/last.pt}
      - {name: imagenet, backbone: resnet18, checkpoint: weights.pth, optional: true}
    tasks:
      - {name: crops, kind: tile, data: {...as above...}, protocols: {knn: {k: 20}}, note: ""}
      - {name: nuclei, kind: nuclei, config: configs/nuclei/manual_cpu.yaml,
         overrides: [train.max_steps=200]}
    fractions: [0.01, 0.1, 1.0]  # of the training labels (the one sweep: pathssl.data.sweep)
    seeds: [0, 1, 2]             # subsets (and seeded training) per fraction below 1
    train: {out_dir: runs/benchmark, device: auto, seed: 0, precision: auto}

Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pathssl.config import ConfigError, compose, from_dict, load, setting

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
    at the encoder's ``tile_mpp`` when it differs by more than 10 %. ``group_column`` (csv,
    store): the column naming each tile's patient or slide; the train/test split then holds
    whole groups apart."""

    format: str = setting("", choices=("folder", "csv", "store"))
    mpp: float | None = setting(None, gt=0.0)
    root: str | None = None
    csv: str = ""
    path_column: str = "path"
    label_column: str = "label"
    store: str = ""
    labels: str = ""
    index_column: str = "index"
    group_column: str = ""


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
    holds). ``checkpoint`` may also be an encoder file of another program
    (:mod:`pathssl.models.external`: torchvision, timm, DINO(v2), BiT ``.npz``, ``.safetensors``);
    ``mean``/``std``/``tile_mpp`` then give what such a file does not record."""

    backbone: str | None = None
    checkpoint: str | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    tile_mpp: float | None = setting(None, gt=0.0)


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
class BitHyperRuleConfig:
    """BiT-HyperRule fine-tuning (Kolesnikov et al. 2020; :mod:`pathssl.eval.hyperrule`): SGD
    momentum 0.9 at ``base_lr * batch_size / 512`` (linear scaling for small CPU batches),
    schedule length from the training set's size (``dataset_size``: another size's rule; null:
    the training tiles) or ``steps``, warm-up and decays by 10 at 30/60/90 %, MixUp from 20k
    examples on (``mixup``: alpha instead of the rule's; null: the rule's), zero-initialised
    head, random crops (tiles under 96 px: resize 160, crop 128), dihedral transforms,
    ``hed_jitter`` (0: off). ``val_fraction`` > 0: the best validated weights are kept."""

    batch_size: int = setting(512, ge=1)
    base_lr: float = setting(0.003, gt=0.0)
    steps: int | None = setting(None, ge=1)
    dataset_size: int | None = setting(None, ge=1)
    mixup: float | None = setting(None, ge=0.0)
    hed_jitter: float = setting(0.0, ge=0.0)
    val_fraction: float = setting(0.0, ge=0.0, lt=1.0)


@dataclass
class ProtocolsConfig:
    """The protocols to run; a protocol set to null (or left out) does not run. With none set,
    ``linear`` and ``knn`` run with their defaults."""

    linear: LinearConfig | None = None
    knn: KnnConfig | None = None
    fewshot: FewShotConfig | None = None
    finetune: FinetuneConfig | None = None
    bit_hyperrule: BitHyperRuleConfig | None = None


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
    if all(x is None for x in (p.linear, p.knn, p.fewshot, p.finetune, p.bit_hyperrule)):
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


# ------------------------------------------------------------------------------- benchmark

NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.+-]*"
NAME_EXPECT = "a name of letters, digits and _ . + - (it names output folders)"
TASK_KINDS = ("tile", "nuclei")


@dataclass
class EncoderEntry:
    """One encoder of a benchmark: ``backbone`` (random init, seeded by ``train.seed``) and/or a
    ``checkpoint`` (``~`` expanded); ``mean``/``std``/``tile_mpp`` are passed to
    :func:`pathssl.eval.encoder.load_encoder` only when set (for files that do not record them).
    ``optional``: a missing checkpoint skips the entry with a message instead of failing."""

    name: str = setting("", pattern=NAME_PATTERN, expect=NAME_EXPECT)
    backbone: str | None = None
    checkpoint: str | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    tile_mpp: float | None = setting(None, gt=0.0)
    optional: bool = False


@dataclass
class TaskEntry:
    """One task of a benchmark. ``kind: tile``: tile classification, ``data`` (the ``data``
    section of an eval config) and ``protocols`` (none listed: linear and kNN). ``kind:
    nuclei``: a frozen-encoder nuclei head trained on the nuclei ``config`` (+ ``overrides``),
    scored on its held-apart images. ``fractions``: this task's label fractions (null: the
    benchmark's). ``note``: printed under the table and the figure (e.g. how labels were made)."""

    name: str = setting("", pattern=NAME_PATTERN, expect=NAME_EXPECT)
    kind: str = setting("tile", choices=TASK_KINDS)
    data: DataConfig | None = None
    protocols: ProtocolsConfig = field(default_factory=ProtocolsConfig)
    config: str = ""
    overrides: list[str] = field(default_factory=list)
    fractions: list[float] | None = None
    note: str = ""


@dataclass
class BenchmarkConfig:
    """Every encoder on every task, at each label fraction (:mod:`pathssl.data.sweep`)."""

    encoders: list[EncoderEntry] = field(default_factory=list)
    tasks: list[TaskEntry] = field(default_factory=list)
    fractions: list[float] = setting(default_factory=lambda: [1.0], gt=0.0, le=1.0)
    seeds: list[int] = field(default_factory=lambda: [0])
    train: TrainConfig = field(default_factory=lambda: TrainConfig(out_dir="runs/benchmark"))


def _unique(names: list[str], what: str) -> None:
    seen = {n for n in names if names.count(n) > 1}
    if seen:
        raise ConfigError(f"{what}: names repeat ({', '.join(sorted(seen))})", what)


def validate_benchmark(cfg: BenchmarkConfig) -> None:
    """Cross-field rules of a benchmark: encoders and tasks listed, unique names, an encoder
    with a backbone or checkpoint, 3 values of mean/std, a tile task with a data source, a
    nuclei task with a config, fractions in (0, 1] without repeats, seeds without repeats."""
    if not cfg.encoders or not cfg.tasks:
        raise ConfigError("a benchmark lists encoders: [...] and tasks: [...]", "encoders")
    _unique([e.name for e in cfg.encoders], "encoders")
    _unique([t.name for t in cfg.tasks], "tasks")
    for i, enc in enumerate(cfg.encoders):
        where = f"encoders[{i}]"
        if enc.backbone is None and not enc.checkpoint:
            raise ConfigError(f"{where} ({enc.name}): set backbone and/or checkpoint", where)
        for key in ("mean", "std"):
            value = getattr(enc, key)
            if value is not None and len(value) != 3:
                raise ConfigError(f"{where}.{key}: give 3 values (R, G, B)", f"{where}.{key}")
    for i, task in enumerate(cfg.tasks):
        where = f"tasks[{i}]"
        if task.kind == "tile":
            if task.data is None:
                raise ConfigError(f"{where} ({task.name}): a tile task needs data", where)
            validate(EvalConfig(data=task.data, model=ModelConfig(backbone="x")))
            with_default_protocols(EvalConfig(protocols=task.protocols))
        elif not task.config:
            raise ConfigError(f"{where} ({task.name}): a nuclei task needs config", where)
        for fractions, key in (
            (task.fractions, f"{where}.fractions"),
            (cfg.fractions, "fractions"),
        ):
            if fractions is not None and (
                not fractions
                or len(set(fractions)) != len(fractions)
                or not all(0.0 < f <= 1.0 for f in fractions)
            ):
                raise ConfigError(f"{key}: give distinct fractions in (0, 1]", key)
    if not cfg.seeds or len(set(cfg.seeds)) != len(cfg.seeds):
        raise ConfigError("seeds: give one or more distinct seeds", "seeds")


def is_benchmark(path: str | Path) -> bool:
    """Whether the YAML ``path`` (``defaults`` composed) is a benchmark config (it lists
    ``encoders`` or ``tasks``)."""
    data, _ = compose(Path(path))
    return "encoders" in data or "tasks" in data


def load_benchmark_config(
    path: str | Path, overrides: list[str] | tuple[str, ...] = ()
) -> BenchmarkConfig:
    """A :class:`BenchmarkConfig` from YAML + ``key=value`` overrides, checked; one-line
    :class:`ConfigError` naming file, line and key otherwise."""
    return load(BenchmarkConfig, path, overrides, validate=validate_benchmark, renamed=RENAMED)
