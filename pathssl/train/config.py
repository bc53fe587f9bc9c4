"""Typed pretraining configuration: the schema (dataclass sections) of ``pathssl pretrain``.

Loading is the package's one config loader (:mod:`pathssl.config`): YAML composed from base
files (``defaults: [base, augment: ../augment/simclr]``), ``key=value`` overrides, and one-line
:class:`ConfigError` messages naming the file, line and key (unknown keys with the nearest valid
ones)::

    cfg = load_config("configs/pretrain/simclr.yaml", ["optim.lr=0.1", "data.batch_size=64"])
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# the generic machinery lives in pathssl.config; re-exported here for existing callers
from pathssl.config import ConfigError, apply_override, from_dict, load, setting


@dataclass
class MethodConfig:
    """``name``: a registered SSL method; ``params``: its keyword arguments (heads, loss)."""

    name: str = "simclr"
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelConfig:
    """``backbone``: a registered backbone; ``params``: its keyword arguments."""

    backbone: str = "resnet50"
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class AugmentConfig:
    """``recipe``: a registered view recipe (``None``: the method's own); ``params``: its
    keyword arguments (``size``, scales, stain jitter, ...)."""

    recipe: str | None = None
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class LabelledConfig:
    """Labelled images for the methods that train on labels (S4L, ``supervised``):
    ``config`` a ``pathssl eval`` config whose ``data`` section names them (any of its formats:
    image folder, CSV of images, tile store + label CSV); its *training* side is used (the same
    split as ``pathssl eval``: its test images are never trained on), read at the tiles' mpp
    and ``image_size``. ``fraction``: the share of it kept, per class (stratified, at least one
    image of each class), drawn with ``seed``; ``batch_size`` labelled images per step and
    process; ``num_workers`` loader processes. Empty ``config``: no labelled stream."""

    config: str = ""
    fraction: float = setting(1.0, gt=0.0, le=1.0)
    batch_size: int = setting(256, ge=1)
    seed: int = 0
    num_workers: int = setting(2, ge=0)


@dataclass
class DataConfig:
    """Tile stores (stores or folders of stores), QC filters, sampling and loading.

    ``batch_size`` is per process (global batch = ``batch_size * world size``). ``decode``:
    ``cpu`` (DataLoader workers), ``device`` (nvJPEG on the GPU) or ``auto`` (device on CUDA).
    ``norm_tiles``: tiles sampled to compute the normalisation mean/std. ``labelled``: the
    labelled stream (:class:`LabelledConfig`)."""

    stores: list[str] = field(default_factory=list)
    min_tissue: float | None = None
    max_pen: float | None = None
    max_white: float | None = None
    min_blur: float | None = None
    balance_slides: bool = False
    batch_size: int = 256
    num_workers: int = 8
    decode: str = "auto"
    norm_tiles: int = 256
    labelled: LabelledConfig = field(default_factory=LabelledConfig)


@dataclass
class OptimConfig:
    """Optimiser and schedule. ``lr`` is the base rate for a global batch of 256, scaled
    linearly (``lr_scaling: linear``), by square root (``sqrt``) or not (``none``).

    ``schedule``: ``cosine`` (linear warmup over ``warmup_steps`` to the peak, cosine to
    ``min_lr_ratio * peak`` at ``max_steps``) or ``step`` (the same warmup, then the rate times
    ``gamma`` at each of ``milestones``, step numbers). ``weight_decay_end``: when set, the
    weight decay of every group that has one follows a cosine from its value to
    ``weight_decay_end * (its value / weight_decay)`` at ``max_steps`` (DINO: 0.04 -> 0.4).
    ``groups``: per parameter group options by group name (``decay`` / ``no_decay`` for SSL
    methods, ``all`` for the supervised heads): ``lr_scale`` (times the peak rate), ``lr`` (an
    explicit peak rate, not scaled by batch size) and ``weight_decay``; e.g. Barlow Twins'
    ``{no_decay: {lr_scale: 0.024}}``. ``clip_grad``: max gradient norm (None or 0 = off)."""

    name: str = "lars"
    lr: float = 0.3
    lr_scaling: str = "linear"
    weight_decay: float = 1e-6
    momentum: float = 0.9
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    lars_eta: float = 0.001
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    clip_grad: float | None = None
    schedule: str = "cosine"
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1
    weight_decay_end: float | None = None
    groups: dict[str, dict[str, float]] = field(default_factory=dict)

    def check(self, where: str = "optim") -> None:
        """Value ranges (types are checked by the parser); raises :class:`ConfigError`."""
        _choice(f"{where}.name", self.name, OPTIMIZERS)
        _choice(f"{where}.lr_scaling", self.lr_scaling, ("linear", "sqrt", "none"))
        _choice(f"{where}.schedule", self.schedule, ("cosine", "step"))
        _at_least(f"{where}.lr", self.lr, 0.0, strict=True)
        _at_least(f"{where}.weight_decay", self.weight_decay, 0.0)
        if self.weight_decay_end is not None:
            _at_least(f"{where}.weight_decay_end", self.weight_decay_end, 0.0)
        _at_least(f"{where}.warmup_steps", self.warmup_steps, 0)
        _at_least(f"{where}.lars_eta", self.lars_eta, 0.0, strict=True)
        _at_least(f"{where}.gamma", self.gamma, 0.0, strict=True)
        if self.clip_grad is not None:
            _at_least(f"{where}.clip_grad", self.clip_grad, 0.0)
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"{where}.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"{where}.momentum must be in [0, 1), got {self.momentum}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"{where}.betas: expected 2 numbers in [0, 1), got {self.betas}")
        if any(m < 1 for m in self.milestones) or self.milestones != sorted(self.milestones):
            raise ConfigError(
                f"{where}.milestones must be increasing step numbers >= 1, got {self.milestones}"
            )
        for name, opts in self.groups.items():
            if not isinstance(opts, dict):
                raise ConfigError(f"{where}.groups.{name}: expected a mapping, got {opts!r}")
            for key, value in opts.items():
                if key not in GROUP_OPTIONS:
                    raise ConfigError(
                        f"unknown config key '{where}.groups.{name}.{key}' "
                        f"(valid: {', '.join(GROUP_OPTIONS)})"
                    )
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise ConfigError(f"{where}.groups.{name}.{key}: expected float, got {value!r}")
                _at_least(f"{where}.groups.{name}.{key}", value, 0.0, strict=key != "weight_decay")


OPTIMIZERS = ("sgd", "lars", "adamw")
GROUP_OPTIONS = ("lr_scale", "lr", "weight_decay")


def _choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(choices)}")


def _at_least(key: str, value: float, low: float, strict: bool = False) -> None:
    """``value > low`` (``strict``) or ``value >= low``, else a one-line ConfigError."""
    if value < low or (strict and value == low) or value != value:
        rel = ">" if strict else ">="
        raise ConfigError(f"{key} must be {rel} {low:g}, got {value}: set {key} to a valid value")


@dataclass
class LoopConfig:
    """The keys every training mode shares (pretraining, the nuclei head, fine-tuning).

    ``precision``: ``auto`` (bf16 autocast on CUDA, fp32 on CPU), ``bf16`` or ``fp32``.
    ``max_bad_steps``: consecutive NaN/inf steps before stopping. ``resume``: continue from
    ``out_dir/last.pt`` when it exists (false: start over, replacing it). ``init_from``: a
    previous stage's checkpoint whose weights (every parameter and buffer of the same name and
    shape) start this run; recorded in the checkpoints' ``meta["init_from"]``."""

    max_steps: int = 1000
    seed: int = 0
    out_dir: str = "runs/pretrain"
    ckpt_every: int = 500
    log_every: int = 10
    precision: str = "auto"
    max_bad_steps: int = 10
    device: str = "auto"
    progress: bool = True
    resume: bool = True
    threads: int | None = None
    init_from: str = ""

    def check(self, where: str = "train") -> None:
        """Value ranges; raises :class:`ConfigError`."""
        for key in ("max_steps", "ckpt_every", "log_every", "max_bad_steps"):
            _at_least(f"{where}.{key}", getattr(self, key), 1)
        if self.threads is not None:
            _at_least(f"{where}.threads", self.threads, 1)
        _choice(f"{where}.precision", self.precision, ("auto", "bf16", "fp32"))
        if not self.out_dir:
            raise ConfigError(f"{where}.out_dir is empty: set it to the run's output folder")


@dataclass
class TrainConfig(LoopConfig):
    """Pretraining's loop (:class:`LoopConfig`) plus ``compile`` (``torch.compile`` of the
    backbone) and ``channels_last`` (CNNs on CUDA)."""

    compile: bool = False
    channels_last: bool = True


@dataclass
class OnlineEvalConfig:
    """Online evaluation while pretraining: a kNN probe on frozen features of the encoder being
    trained (the backbone checkpoints keep as ``trunk``: DINO's EMA teacher, the online backbone
    of the other methods), run every ``every`` steps and after the last one.

    ``knn``: a ``pathssl eval`` config (``configs/eval/*.yaml``); its ``data`` section names the
    labelled set (image folder per class, CSV of images, or tile store + label CSV), its split
    and ``image_size``; its ``model`` is ignored. Empty: no probe. ``k``: neighbours (null: the
    eval config's ``protocols.knn.k``, 20 when it lists none). ``temperature``: null for a
    majority vote, else similarity-weighted votes ``exp(sim / temperature)`` (DINO: 0.07). ``select_best``: keep
    ``best.pt`` = the weights of the best kNN top-1 so far. ``batch_size``: images per forward
    pass. ``max_images``: at most this many labelled images (train + test, a seeded random
    subset of each side in proportion; null: all), decoded once and held in memory as uint8
    (3 x image_size^2 bytes each)."""

    knn: str = ""
    every: int = setting(1000, ge=1)
    k: int | None = setting(None, ge=1)
    temperature: float | None = setting(None, gt=0)
    select_best: bool = True
    batch_size: int = setting(256, ge=1)
    max_images: int | None = setting(5000, ge=2)

    def check(self, where: str = "eval") -> None:
        """The fields' value rules (also applied when parsed); raises :class:`ConfigError`."""
        for f in dataclasses.fields(self):
            rule = f.metadata.get("check")
            if rule is not None:
                rule(getattr(self, f.name), f"{where}.{f.name}")


@dataclass
class PretrainConfig:
    method: MethodConfig = field(default_factory=MethodConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: OnlineEvalConfig = field(default_factory=OnlineEvalConfig)


__all__ = ["ConfigError", "PretrainConfig", "apply_override", "from_dict", "load_config"]


def load_config(
    path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()
) -> PretrainConfig:
    """Compose a YAML config file (``defaults`` included; None: the schema's defaults), apply
    ``key=value`` overrides, parse and :func:`validate` it (see :mod:`pathssl.config`)."""
    return load(PretrainConfig, path, overrides, validate=validate)


CHOICES: dict[str, tuple[str, ...]] = {
    "optim.name": ("sgd", "lars", "adamw"),
    "optim.lr_scaling": ("linear", "sqrt", "none"),
    "data.decode": ("auto", "cpu", "device"),
    "train.precision": ("auto", "bf16", "fp32"),
}


def validate(cfg: PretrainConfig) -> None:
    """Value checks beyond types (choices, positive sizes)."""
    d = to_dict(cfg)
    for key, choices in CHOICES.items():
        section, name = key.split(".")
        if d[section][name] not in choices:
            raise ConfigError(f"{key}: {d[section][name]!r} is not one of {', '.join(choices)}")
    for key in ("data.batch_size", "data.norm_tiles"):
        section, name = key.split(".")
        _at_least(key, d[section][name], 1)
    _at_least("data.num_workers", cfg.data.num_workers, 0)
    cfg.optim.check("optim")
    cfg.train.check("train")
    cfg.eval.check("eval")


def to_dict(cfg: PretrainConfig) -> dict[str, Any]:
    """The config as plain nested dicts (for checkpoints and logs)."""
    return dataclasses.asdict(cfg)
