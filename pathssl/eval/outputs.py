"""The output folder of ``pathssl eval``, checked before any feature is computed.

``check_eval_output(out, cfg)`` refuses (``tiling.errors.OutputError``, exit code 2) a folder
that is, holds or lies inside one of the config's inputs (label CSVs, image folders, tile stores,
the checkpoint), or that exists, is not empty and is not an earlier eval output (``metrics.json``
or ``finetune/`` in it). An earlier eval output is reused: its files are replaced and the
fine-tune run resumes. ``check_benchmark_output`` does the same for a benchmark's folder (an
earlier one holds ``cells.jsonl``: a rerun resumes it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tiling.outputs import check_output_dir

__all__ = [
    "benchmark_inputs",
    "check_benchmark_output",
    "check_eval_output",
    "eval_inputs",
    "is_eval_output",
]


def is_eval_output(out: Path) -> bool:
    """Whether the folder ``out`` is an earlier ``pathssl eval`` output."""
    return any((out / name).exists() for name in ("metrics.json", "finetune", "bit_hyperrule"))


def _strings(value: Any) -> list[str]:
    """Every string inside a config value (dataclasses, mappings and lists walked)."""
    if isinstance(value, str | Path):
        return [str(value)]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [s for f in dataclasses.fields(value) for s in _strings(getattr(value, f.name))]
    if isinstance(value, Mapping):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list | tuple):
        return [s for v in value for s in _strings(v)]
    return []


def _section(cfg: Any, name: str) -> Any:
    return cfg.get(name) if isinstance(cfg, Mapping) else getattr(cfg, name, None)


def eval_inputs(cfg: Any) -> list[Path]:
    """The existing files and folders an eval config reads: every path named in its ``data``
    and ``model`` sections (an :class:`~pathssl.eval.config.EvalConfig` or nested dicts)."""
    found: list[Path] = []
    for section in ("data", "model"):
        for text in _strings(_section(cfg, section)):
            if text and ("/" in text or "." in text) and Path(text).exists():
                found.append(Path(text))
    return found


def check_eval_output(out: str | Path, cfg: Any) -> Path:
    """Check the eval output folder ``out`` against ``cfg``'s inputs (see the module docstring);
    returns ``out`` as a Path."""
    return check_output_dir(out, inputs=eval_inputs(cfg), is_ours=is_eval_output, command="eval")


def benchmark_inputs(encoders: Any, tasks: Any) -> list[Path]:
    """The existing files and folders a benchmark reads: encoder checkpoints, the paths of the
    tile tasks' ``data`` and the nuclei tasks' ``config`` files."""
    texts = [str(Path(e.checkpoint).expanduser()) for e in encoders if e.checkpoint]
    for task in tasks:
        texts += _strings(task.data) + ([task.config] if task.config else [])
    return [Path(t) for t in texts if t and ("/" in t or "." in t) and Path(t).exists()]


def is_benchmark_output(out: Path) -> bool:
    """Whether the folder ``out`` is an earlier benchmark output of ``pathssl eval``."""
    return (out / "cells.jsonl").is_file() or (out / "benchmark.json").is_file()


def check_benchmark_output(out: str | Path, inputs: list[Path]) -> Path:
    """Check a benchmark's output folder ``out`` against its ``inputs`` (never one of them, nor
    inside one; empty, new or an earlier benchmark output); returns ``out`` as a Path."""
    return check_output_dir(out, inputs=inputs, is_ours=is_benchmark_output, command="eval")
