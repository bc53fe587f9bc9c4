"""The one config loader of every command: YAML files composed from base files, ``key=value``
overrides, typed dataclass schemas, and one-line errors naming the file, the line and the key.

Loading ``load(Schema, "configs/pretrain/simclr.yaml", ["optim.lr=0.1"])`` runs four steps:

1. **Composition.** A YAML file may start with a ``defaults`` list of other files, paths relative
   to the file, ``.yaml`` optional::

       defaults: [base, augment: ../augment/simclr]
       method: {name: simclr}

   Each entry is loaded (with its own ``defaults``, recursively; a cycle is an error), then
   merged in order, and the file itself is merged last: later values win, mappings merge key by
   key (deep merge), anything else (lists included) is replaced whole. A plain entry (``base``)
   merges at the top level; a one-key mapping (``augment: ../augment/simclr``) puts the file's
   content under that section (a dotted key nests deeper). That is how a view recipe file of
   ``configs/augment/`` (``{recipe: simclr, params: {...}}``, the format
   ``pathssl.augment.load_recipe`` reads) becomes a pretraining config's ``augment`` section.
2. **Overrides** ``section.key=value`` (the value parsed as YAML) apply after composition.
3. **Schema.** The merged mapping becomes the dataclass ``Schema``: every key must be a field
   (unknown keys fail with the nearest valid names), every value must have the field's type
   (ints are accepted as floats), and fields declared with :func:`setting` check choices and
   ranges; ``checks`` adds such rules from outside the dataclass and ``validate`` cross-field
   rules.
4. **Errors.** Every problem is one :class:`ConfigError` (a ``ValueError``) line that says where
   the offending key was set: ``config configs/x.yaml line 12: unknown config key 'optim.lrr';
   did you mean 'optim.lr'?``, ``override 'optim.lr=-1': optim.lr must be > 0, got -1.0``.
   Malformed YAML gives ``config X line N: <the YAML problem>``.

:func:`dump` writes a loaded config back as YAML (``--print-config``); loading that text gives
the same config. Torch-free.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")
KeyPath = tuple[str, ...]
# where each key was set: key path -> (file name or override text, line number or None)
Origins = dict[KeyPath, tuple[str, int | None]]

__all__ = [
    "Check",
    "ConfigError",
    "apply_override",
    "check_values",
    "compose",
    "dump",
    "from_dict",
    "load",
    "read_yaml",
    "setting",
    "to_plain",
]


class ConfigError(ValueError):
    """A config is malformed, names an unknown key, or holds a value of the wrong type or out of
    range. ``key``: the dotted key at fault (None when the whole file is)."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


# ---------------------------------------------------------------------------------- value checks


@dataclass(frozen=True)
class Check:
    """Value rules beyond the type: ``choices``, bounds (``ge`` >=, ``gt`` >, ``le`` <=, ``lt``
    <) and a regular expression ``pattern`` that the whole value must match. ``None`` values
    pass (optional settings); a list is checked item by item."""

    choices: tuple[Any, ...] | None = None
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    pattern: str | None = None
    expect: str | None = None  # how a pattern's values look, for the message

    def __call__(self, value: Any, key: str) -> None:
        if value is None:
            return
        if isinstance(value, list | tuple):
            for i, item in enumerate(value):
                self(item, f"{key}[{i}]")
            return
        if self.choices is not None and value not in self.choices:
            names = ", ".join(str(c) for c in self.choices)
            if value == "":
                raise ConfigError(f"{key} is not set; set it to one of {names}", key)
            near = difflib.get_close_matches(str(value), [str(c) for c in self.choices], n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise ConfigError(f"{key}: {value!r} is not one of {names}{hint}", key)
        if self.pattern is not None and not re.fullmatch(self.pattern, str(value)):
            expect = self.expect or f"a value matching {self.pattern!r}"
            raise ConfigError(f"{key}: {value!r} is not {expect}", key)
        for bound, ok, sign in (
            (self.ge, lambda v, b: v >= b, ">="),
            (self.gt, lambda v, b: v > b, ">"),
            (self.le, lambda v, b: v <= b, "<="),
            (self.lt, lambda v, b: v < b, "<"),
        ):
            if bound is not None and not ok(value, bound):
                raise ConfigError(f"{key} must be {sign} {bound:g}, got {value!r}", key)


def setting(
    default: Any = dataclasses.MISSING,
    *,
    default_factory: Callable[[], Any] | None = None,
    choices: Sequence[Any] | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    pattern: str | None = None,
    expect: str | None = None,
) -> Any:
    """A dataclass field whose value :func:`from_dict` checks (see :class:`Check`)::

    lr: float = setting(1e-4, gt=0)
    precision: str = setting("auto", choices=("auto", "bf16", "fp32"))
    """
    check = Check(tuple(choices) if choices is not None else None, ge, gt, le, lt, pattern, expect)
    if default_factory is not None:
        return field(default_factory=default_factory, metadata={"check": check})
    return field(default=default, metadata={"check": check})


def check_values(cfg: Any, checks: Mapping[str, Check]) -> None:
    """Apply ``checks`` (dotted key -> :class:`Check`) to the config object ``cfg``."""
    for key, check in checks.items():
        value = cfg
        for part in key.split("."):
            value = getattr(value, part)
        check(value, key)


# ------------------------------------------------------------------------- mapping -> dataclass


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str, renamed: Mapping[str, str] | None = None) -> Any:
    """Check ``value`` against the annotation ``tp`` (ints are accepted as floats)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, renamed)
            except ConfigError:
                if dataclasses.is_dataclass(arg) and isinstance(value, dict):
                    raise  # a mapping for a settings section: its own error is the useful one
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}", key)
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        Check(choices=choices)(value, key)
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of settings, got {value!r}", key)
        return from_dict(tp, value, key, renamed)  # type: ignore[arg-type]
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}", key)
        (item,) = typing.get_args(tp) or (Any,)
        return [_coerce(v, item, f"{key}[{i}]", renamed) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}", key)
        return dict(value)
    if tp is Any:
        return value
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp in (str, bool) and type(value) is tp:
        return value
    got = "null" if value is None else f"{type(value).__name__} {value!r}"
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {got}", key)


def _unknown_key(full: str, prefix: str, names: list[str], renamed: Mapping[str, str]) -> str:
    if full in renamed:
        return f"config key {full!r} is now {renamed[full]!r}; rename it"
    near = difflib.get_close_matches(full.rsplit(".", 1)[-1], names, n=3, cutoff=0.5)
    qualified = [f"{prefix}.{n}" if prefix else n for n in near]
    if qualified:
        return f"unknown config key {full!r}; did you mean {' or '.join(map(repr, qualified))}?"
    where = f" under {prefix!r}" if prefix else ""
    return f"unknown config key {full!r} (valid keys{where}: {', '.join(names)})"


def from_dict(
    cls: type[T],
    data: Mapping[str, Any],
    prefix: str = "",
    renamed: Mapping[str, str] | None = None,
) -> T:
    """Build the dataclass ``cls`` from a nested mapping, checking every key, type and the
    :func:`setting` rules. ``renamed``: old dotted key -> new one, for a helpful error."""
    renamed = renamed or {}
    if not isinstance(data, Mapping):
        what = repr(prefix) if prefix else "the top level"
        raise ConfigError(f"{what} must be a mapping of settings, got {data!r}", prefix or None)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            raise ConfigError(_unknown_key(full, prefix, list(fields), renamed), full)
        kwargs[key] = _coerce(value, hints[key], full, renamed)
        check = fields[key].metadata.get("check")
        if check is not None:
            check(kwargs[key], full)
    for name, f in fields.items():  # defaults are checked too (a schema's own mistake shows)
        check = f.metadata.get("check")
        if name not in kwargs and check is not None and f.default is not dataclasses.MISSING:
            check(f.default, f"{prefix}.{name}" if prefix else name)
    return cls(**kwargs)


def to_plain(cfg: Any) -> Any:
    """A config object as plain nested dicts and lists (for YAML, JSON, checkpoints)."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: to_plain(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, Mapping):
        return {k: to_plain(v) for k, v in cfg.items()}
    if isinstance(cfg, list | tuple):
        return [to_plain(v) for v in cfg]
    if isinstance(cfg, Path):
        return str(cfg)
    return cfg


def dump(cfg: Any) -> str:
    """``cfg`` as YAML text, in the schema's key order; :func:`load` of it gives ``cfg`` back."""
    text: str = yaml.safe_dump(to_plain(cfg), sort_keys=False, default_flow_style=None)
    return text


# ------------------------------------------------------------------------ files and composition


def _yaml_problem(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError):
        context = exc.context
        cm, pm = exc.context_mark, exc.problem_mark
        if context and cm is not None and (pm is None or cm.line != pm.line):
            context = f"{context} (opened on line {cm.line + 1})"
        text = ", ".join(p for p in (context, exc.problem) if p) or "malformed YAML"
    else:
        text = str(exc) or "malformed YAML"
    return " ".join(text.split())


def _record_lines(node: yaml.Node, path: KeyPath, name: str, out: Origins) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                key = (*path, str(key_node.value))
                out[key] = (name, key_node.start_mark.line + 1)
                _record_lines(value_node, key, name, out)


def read_yaml(path: str | Path) -> tuple[dict[str, Any], Origins]:
    """One YAML file (no composition): its top-level mapping and the line of every key."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config {path} not found; check the path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config {path}: cannot read it ({exc})") from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config {path}{line}: {_yaml_problem(exc)}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {path}: {_yaml_problem(exc)}") from None
    finally:
        loader.dispose()
    if node is None or data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config {path} line 1: the top level must be a mapping of sections "
            f"(section: {{key: value}}), got a {type(data).__name__}"
        )
    origins: Origins = {}
    _record_lines(node, (), str(path), origins)
    return data, origins


def _under(path: KeyPath, origins: Origins) -> list[KeyPath]:
    return [p for p in origins if p[: len(path)] == path]


def _merge(base: dict[str, Any], base_origins: Origins, top: Mapping[str, Any], top_origins: Origins,
           prefix: KeyPath = ()) -> None:  # fmt: skip
    """Deep-merge ``top`` into ``base`` (in place), keeping the origin of every key."""
    for key, value in top.items():
        path = (*prefix, str(key))
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], base_origins, value, top_origins, path)
        else:
            for p in _under(path, base_origins):
                del base_origins[p]
            base[key] = copy.deepcopy(value)
            base_origins.update({p: top_origins[p] for p in _under(path, top_origins)})
        if path in top_origins:
            base_origins[path] = top_origins[path]


def _resolve(entry: str, parent: Path) -> Path:
    path = parent.parent / entry
    if not path.is_file() and path.suffix not in (".yaml", ".yml"):
        path = path.with_name(path.name + ".yaml")
    return path


def compose(path: str | Path, _stack: tuple[Path, ...] = ()) -> tuple[dict[str, Any], Origins]:
    """The file's mapping with its ``defaults`` merged in (see the module doc), and the file and
    line where each key was last set."""
    path = Path(path)
    real = path.resolve()
    if real in _stack:
        chain = " -> ".join(p.name for p in (*_stack[_stack.index(real) :], real))
        raise ConfigError(f"config {path}: defaults form a cycle ({chain}); remove one entry")
    data, origins = read_yaml(path)
    defaults = data.pop("defaults", None)
    where = f"config {path} line {origins.pop(('defaults',), (None, '?'))[1]}"
    for p in _under(("defaults",), origins):
        del origins[p]
    if defaults is None:
        return data, origins
    if isinstance(defaults, str | dict):
        defaults = [defaults]
    if not isinstance(defaults, list):
        raise ConfigError(f"{where}: defaults must be a list of files, got {defaults!r}")
    merged: dict[str, Any] = {}
    merged_origins: Origins = {}
    for entry in defaults:
        section: KeyPath = ()
        if isinstance(entry, dict) and len(entry) == 1:
            ((key, entry),) = entry.items()
            section = tuple(str(key).split("."))
        if not isinstance(entry, str) or not entry:
            raise ConfigError(
                f"{where}: defaults entry {entry!r} is neither a file name nor 'section: file name'"
            )
        sub = _resolve(entry, path)
        if not sub.is_file():
            raise ConfigError(f"{where}: defaults entry {entry!r}: {sub} not found")
        sub_data, sub_origins = compose(sub, (*_stack, real))
        for part in reversed(section):
            sub_data = {part: sub_data}
        sub_origins = {(*section, *k): v for k, v in sub_origins.items()}
        _merge(merged, merged_origins, sub_data, sub_origins)
    _merge(merged, merged_origins, data, origins)
    return merged, merged_origins


# --------------------------------------------------------------------------------- overrides


def apply_override(data: dict[str, Any], override: str, origins: Origins | None = None) -> None:
    """Apply one ``a.b.c=value`` override (value parsed as YAML) to the nested dict ``data``;
    ``origins`` (if given) then records the override as where those keys were set."""
    if "=" not in override:
        raise ConfigError(f"override {override!r} is not of the form key=value, e.g. optim.lr=0.1")
    key, raw = override.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {override!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"override {override!r}: value is not YAML: {_yaml_problem(exc)}"
        ) from None
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(
                f"override {override!r}: {'.'.join(parts[: i + 1])!r} is not a section"
            )
        node = child
    node[parts[-1]] = value
    if origins is not None:
        path = tuple(parts)
        for p in _under(path, origins):
            del origins[p]
        here: Origins = {}
        if isinstance(value, dict):
            _mark(value, path, f"override {override!r}", here)
        origins.update(here)
        origins[path] = (f"override {override!r}", None)


def _mark(value: dict[str, Any], path: KeyPath, name: str, out: Origins) -> None:
    for k, v in value.items():
        out[(*path, str(k))] = (name, None)
        if isinstance(v, dict):
            _mark(v, (*path, str(k)), name, out)


# -------------------------------------------------------------------------------------- load


def _locate(key: str | None, origins: Origins, path: Path | None) -> str:
    """Where ``key`` (``a.b[2].c``) was set: the innermost recorded key on its path."""
    parts: KeyPath = tuple(re.sub(r"\[\d+\]", "", key).split(".")) if key else ()
    while parts:
        if parts in origins:
            name, line = origins[parts]
            return name if line is None else f"config {name} line {line}"
        parts = parts[:-1]
    return f"config {path}" if path is not None else "config (defaults)"


def load(
    schema: type[T],
    path: str | Path | None,
    overrides: Sequence[str] = (),
    *,
    checks: Mapping[str, Check] | None = None,
    validate: Callable[[T], None] | None = None,
    renamed: Mapping[str, str] | None = None,
) -> T:
    """Compose the YAML file ``path`` (None: the schema's defaults), apply ``overrides``, build
    ``schema`` and check it (field :func:`setting` rules, ``checks``, then ``validate``, which
    raises :class:`ConfigError` with ``key`` set). Every error is one line naming the file and
    line (or the override) where the offending key was set."""
    p = Path(path) if path is not None else None
    data, origins = compose(p) if p is not None else ({}, {})
    for item in overrides:
        apply_override(data, item, origins)
    try:
        cfg = from_dict(schema, data, renamed=renamed)
        if checks:
            check_values(cfg, checks)
        if validate is not None:
            validate(cfg)
    except ConfigError as exc:
        key = exc.key or _key_in(str(exc))
        raise ConfigError(f"{_locate(key, origins, p)}: {exc}", key) from None
    return cfg


def _key_in(message: str) -> str | None:
    """The dotted key a message without ``ConfigError.key`` starts with or quotes
    (``optim.lr must be > 0``, ``unknown config key 'optim.groups.x.y'``)."""
    match = re.match(r"([A-Za-z_]\w*(?:\.\w+|\[\d+\])+)\b", message) or re.search(
        r"key '([\w.\[\]]+)'", message
    )
    return match.group(1) if match else None
