"""Typed pretraining configuration: dataclasses parsed from YAML plus ``key=value`` overrides.

Unknown keys and values of the wrong type fail with a :class:`ConfigError` that names the key
and, for unknown keys, the nearest valid ones::

    cfg = load_config("configs/pretrain/simclr.yaml", ["optim.lr=0.1", "data.batch_size=64"])
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration key is unknown, or its value has the wrong type."""


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
class DataConfig:
    """Tile stores (stores or folders of stores), QC filters, sampling and loading.

    ``batch_size`` is per process (global batch = ``batch_size * world size``). ``decode``:
    ``cpu`` (DataLoader workers), ``device`` (nvJPEG on the GPU) or ``auto`` (device on CUDA).
    ``norm_tiles``: tiles sampled to compute the normalisation mean/std."""

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


@dataclass
class OptimConfig:
    """Optimiser and schedule. ``lr`` is the base rate for a global batch of 256, scaled
    linearly (``lr_scaling: linear``), by square root (``sqrt``) or not (``none``).
    Warmup-cosine: linear warmup over ``warmup_steps`` to the peak, cosine to
    ``min_lr_ratio * peak`` at ``max_steps``. ``clip_grad``: max gradient norm (None = off)."""

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


@dataclass
class TrainConfig:
    """The loop. ``precision``: ``auto`` (bf16 autocast on CUDA, fp32 on CPU), ``bf16`` or
    ``fp32``. ``max_bad_steps``: consecutive NaN/inf steps before stopping."""

    max_steps: int = 1000
    seed: int = 0
    out_dir: str = "runs/pretrain"
    ckpt_every: int = 500
    log_every: int = 10
    precision: str = "auto"
    compile: bool = False
    channels_last: bool = True
    max_bad_steps: int = 10
    device: str = "auto"
    progress: bool = True
    resume: bool = True
    threads: int | None = None


@dataclass
class PretrainConfig:
    method: MethodConfig = field(default_factory=MethodConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (ints are accepted as floats)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(exc)
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of settings, got {value!r}")
        return from_dict(tp, value, key)  # type: ignore[arg-type]
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp) or (Any,)
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp in (str, bool) and type(value) is tp:
        return value
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")


def from_dict(cls: type[Any], data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a nested mapping, checking every key and type."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            near = difflib.get_close_matches(str(key), names, n=3, cutoff=0.5)
            hint = f"; did you mean {' or '.join(repr(n) for n in near)}?" if near else ""
            raise ConfigError(
                f"unknown config key {full!r}{hint} (valid keys"
                f"{' under ' + repr(prefix) if prefix else ''}: {', '.join(names)})"
            )
        kwargs[key] = _coerce(value, hints[key], full)
    return cls(**kwargs)


def apply_override(data: dict[str, Any], override: str) -> None:
    """Apply one ``a.b.c=value`` override (value parsed as YAML) to the nested dict ``data``."""
    if "=" not in override:
        raise ConfigError(f"override {override!r} is not of the form key=value")
    key, raw = override.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {override!r}: empty key")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {override!r}: {part!r} is not a section")
        node = child
    node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None


def load_config(
    path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()
) -> PretrainConfig:
    """Parse a YAML config file (or defaults if ``path`` is None) plus overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} not found")
        loaded = yaml.safe_load(p.read_text())
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of sections")
        data = loaded or {}
    for ov in overrides:
        apply_override(data, ov)
    cfg: PretrainConfig = from_dict(PretrainConfig, data)
    validate(cfg)
    return cfg


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
    for key in ("data.batch_size", "train.max_steps", "train.ckpt_every", "train.log_every"):
        section, name = key.split(".")
        if d[section][name] < 1:
            raise ConfigError(f"{key} must be >= 1, got {d[section][name]}")
    if cfg.train.max_bad_steps < 1:
        raise ConfigError(f"train.max_bad_steps must be >= 1, got {cfg.train.max_bad_steps}")


def to_dict(cfg: PretrainConfig) -> dict[str, Any]:
    """The config as plain nested dicts (for checkpoints and logs)."""
    return dataclasses.asdict(cfg)
