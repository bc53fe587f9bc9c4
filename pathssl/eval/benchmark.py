"""One benchmark across encoders: every encoder on every task at each label fraction, one table
and one figure (the layout of eva and of Kang et al. 2023's pathology SSL benchmark report).

A benchmark is a list of :class:`~pathssl.eval.config.EncoderEntry` (each loaded by
:func:`pathssl.eval.encoder.load_encoder`) and a list of
:class:`~pathssl.eval.config.TaskEntry`; a task's ``kind`` names a registered :class:`TaskKind`
(a callable that runs one encoder on one task for a list of ``(fraction, seed)`` cells and yields
each finished cell). This module registers ``tile`` (tile classification with the ``pathssl
eval`` protocols, :func:`tile_task`); the nuclei layer adds ``nuclei``
(:mod:`pathssl.nuclei.bench`), which is how ``pathssl eval`` runs both.

Label fractions are :mod:`pathssl.data.sweep`'s: a stratified, seeded, nested subset of the
training labels per (fraction, seed); frozen features are extracted once per encoder and task.
Resumable: every finished cell is one line of ``OUT/cells.jsonl`` (with a fingerprint of the
encoder entry, its checkpoint file, the task and the seeds' settings); a rerun skips the cells it
finds and runs the rest. Outputs (:func:`pathssl.eval.report.write_benchmark`):
``benchmark.md``, ``benchmark.csv``, ``benchmark.json`` and ``benchmark.png``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pathssl.config import to_plain
from pathssl.data.sweep import check_fractions, sweep_cells
from pathssl.eval.config import EncoderEntry, TaskEntry
from pathssl.eval.encoder import Encoder

CELLS = "cells.jsonl"


@dataclass(frozen=True)
class TaskContext:
    """Where and how one encoder x task runs: ``out_dir`` (its own folder), ``device``,
    ``seed`` (random initialisation of encoders without checkpoint), ``precision`` (training),
    ``progress`` (training progress lines), ``log`` (one-line messages)."""

    out_dir: Path
    device: str
    seed: int = 0
    precision: str = "auto"
    progress: bool = False
    log: Callable[[str], None] = print


@dataclass
class CellResult:
    """The scores of one (fraction, seed) cell: ``scores[protocol][metric]`` (None: undefined)
    and ``info`` (sizes, seconds)."""

    fraction: float
    seed: int
    scores: dict[str, dict[str, float | None]]
    info: dict[str, Any] = field(default_factory=dict)


TaskRun = Callable[
    [EncoderEntry, TaskEntry, list[tuple[float, int]], TaskContext], Iterator[CellResult]
]


@dataclass(frozen=True)
class TaskKind:
    """A registered task: ``run`` yields one :class:`CellResult` per cell it is given;
    ``metric`` is the headline metric of the table and figure; ``seeded_training(task)``: the
    task trains with the seed, so fraction 1 runs once per seed (:func:`sweep_cells`)."""

    run: TaskRun
    metric: str
    seeded_training: Callable[[TaskEntry], bool]


def encoder_keywords(entry: EncoderEntry) -> dict[str, Any]:
    """The optional keywords of :func:`~pathssl.eval.encoder.load_encoder` this entry sets
    (``mean``, ``std``, ``tile_mpp``): only those given, so files that record them keep theirs."""
    out: dict[str, Any] = {}
    if entry.mean is not None:
        out["mean"] = tuple(entry.mean)
    if entry.std is not None:
        out["std"] = tuple(entry.std)
    if entry.tile_mpp is not None:
        out["tile_mpp"] = entry.tile_mpp
    return out


def checkpoint_path(entry: EncoderEntry) -> Path | None:
    """The entry's checkpoint with ``~`` expanded (None: random init)."""
    return Path(entry.checkpoint).expanduser() if entry.checkpoint else None


def load_entry(entry: EncoderEntry, image_size: int, seed: int) -> Encoder:
    """The encoder of one entry, through :func:`~pathssl.eval.encoder.load_encoder`."""
    from pathssl.eval.encoder import load_encoder

    return load_encoder(
        backbone=entry.backbone,
        checkpoint=checkpoint_path(entry),
        image_size=image_size,
        seed=seed,
        **encoder_keywords(entry),
    )


def flat_scores(results: Mapping[str, Any], keys: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``{protocol: {metric: value}}`` of :func:`~pathssl.eval.protocols.evaluate_features`'s
    results (few-shot ``n`` -> protocol ``fewshot_n``, episode means)."""
    out: dict[str, dict[str, Any]] = {}
    for name, res in results.items():
        if name == "fewshot":
            for n, summary in res.items():
                out[f"fewshot_{n}"] = {k: summary[k]["mean"] for k in keys if k in summary}
        else:
            out[name] = {k: res[k] for k in keys if k in res}
    return out


def tile_task(
    entry: EncoderEntry, task: TaskEntry, cells: list[tuple[float, int]], ctx: TaskContext
) -> Iterator[CellResult]:
    """Tile classification: the task's ``data`` split (as ``pathssl eval``), frozen features
    once, then per cell the frozen protocols on the cell's subset of the training tiles (and a
    fine-tune of a freshly loaded encoder when ``protocols.finetune`` is set)."""
    import torch
    from torch.utils.data import Subset

    from pathssl.data.sweep import fraction_subset
    from pathssl.eval.data import labelled_splits
    from pathssl.eval.encoder import extract_features, tile_dataset
    from pathssl.eval.protocols import (
        SUMMARY_KEYS,
        finetune_scores,
        hyperrule_protocol_scores,
        run_protocols,
    )

    assert task.data is not None
    size, batch = task.data.image_size, task.data.batch_size
    train, test = labelled_splits(task.data)
    classes = train.class_names
    encoder = load_entry(entry, size, ctx.seed)
    train_ds = tile_dataset(encoder, train, size, log=ctx.log)
    test_ds = tile_dataset(encoder, test, size, log=None)
    train_x, train_y = extract_features(encoder, train_ds, batch, ctx.device)
    test_x, test_y = extract_features(encoder, test_ds, batch, ctx.device)
    for fraction, seed in cells:
        t0 = time.perf_counter()
        idx = fraction_subset(train.labels, fraction, seed)
        pick = torch.from_numpy(idx)
        results: dict[str, Any] = run_protocols(
            train_x[pick], train_y[pick], test_x, test_y, len(classes), task.protocols, seed=seed
        )
        ft = task.protocols.finetune
        if ft is not None:
            results["finetune"] = finetune_scores(
                load_entry(entry, size, ctx.seed),  # fine-tuning changes the weights
                Subset(train_ds, idx.tolist()),
                train.labels[idx],
                test_ds,
                len(classes),
                ft,
                ctx.out_dir / f"finetune_{fraction:g}_{seed}",
                batch_size=batch,
                precision=ctx.precision,
                device=ctx.device,
                seed=seed,
                progress=ctx.progress,
            )
        hr = task.protocols.bit_hyperrule
        if hr is not None:  # the rule picks its schedule from the subset's size, as BiT does
            results["bit_hyperrule"] = hyperrule_protocol_scores(
                encoder,  # trains a copy
                Subset(train_ds, idx.tolist()),
                train.labels[idx],
                test_ds,
                len(classes),
                hr,
                ctx.out_dir / f"bit_hyperrule_{fraction:g}_{seed}",
                image_size=size,
                batch_size=batch,
                precision=ctx.precision,
                device=ctx.device,
                seed=seed,
                progress=ctx.progress,
            )
        info = {
            "n_train": int(idx.size),
            "n_test": len(test),
            "encoder": encoder.name,
            "seconds": round(time.perf_counter() - t0, 2),
        }
        yield CellResult(fraction, seed, flat_scores(results, SUMMARY_KEYS), info)


TILE = TaskKind(
    tile_task,
    "balanced_accuracy",
    lambda t: t.protocols.finetune is not None or t.protocols.bit_hyperrule is not None,
)


def fingerprint(entry: EncoderEntry, task: TaskEntry, seed: int, precision: str) -> str:
    """12 hex digits naming what a cell's scores depend on besides fraction and seed: the
    encoder entry (and its checkpoint file's size and modification time), the task, the
    initialisation seed and the precision."""
    ckpt = checkpoint_path(entry)
    stat = [ckpt.stat().st_size, ckpt.stat().st_mtime_ns] if ckpt and ckpt.is_file() else None
    text = json.dumps(
        [to_plain(entry), stat, to_plain(task), seed, precision], sort_keys=True, default=str
    )
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def read_cells(path: Path) -> list[dict[str, Any]]:
    """The records of ``cells.jsonl`` (a line torn by a crash is ignored)."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def append_cell(path: Path, record: dict[str, Any]) -> None:
    """Append one record to ``cells.jsonl`` and fsync it (a cell is done once it is there)."""
    from pathssl.eval.report import to_json_ready

    line = json.dumps(to_json_ready(record), allow_nan=False) + "\n"
    if path.is_file() and path.stat().st_size:
        with open(path, "rb") as fh:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":  # a line torn by a crash: end it, it stays unreadable
                line = "\n" + line
    with open(path, "a") as fh:
        fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())


def available(
    encoders: Sequence[EncoderEntry], log: Callable[[str], None]
) -> tuple[list[EncoderEntry], dict[str, str]]:
    """(encoders to run, {skipped name: why}). A missing checkpoint of an ``optional`` entry
    skips it with a message; of any other entry it is an error naming it, before any work."""
    from tiling.errors import InputNotFoundError

    keep, skipped = [], {}
    for e in encoders:
        path = checkpoint_path(e)
        if path is not None and not path.exists():
            if not e.optional:
                raise InputNotFoundError(
                    f"encoder {e.name!r}: checkpoint {path} not found (give the file, or mark "
                    "the entry optional: true to skip it when it is missing)"
                )
            skipped[e.name] = f"checkpoint {path} not found (optional entry, skipped)"
            log(f"encoder {e.name}: skipped, {skipped[e.name]}")
            continue
        keep.append(e)
    return keep, skipped


def run_benchmark(
    encoders: Sequence[EncoderEntry],
    tasks: Sequence[TaskEntry],
    kinds: Mapping[str, TaskKind],
    out_dir: str | Path,
    *,
    fractions: Sequence[float],
    seeds: Sequence[int],
    device: str,
    seed: int = 0,
    precision: str = "auto",
    progress: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run every encoder on every task at ``fractions`` (a task's own list wins) x ``seeds``,
    skipping the cells ``out_dir/cells.jsonl`` already holds; writes the table and figure and
    returns the report (:func:`pathssl.eval.report.benchmark_report`)."""
    from pathssl.eval.outputs import benchmark_inputs, check_benchmark_output
    from pathssl.eval.report import benchmark_report, write_benchmark

    out = check_benchmark_output(out_dir, benchmark_inputs(encoders, tasks))
    unknown = sorted({t.kind for t in tasks} - set(kinds))
    if unknown:
        raise ValueError(f"task kinds {unknown} are not registered (known: {sorted(kinds)})")
    runnable, skipped = available(encoders, log)
    out.mkdir(parents=True, exist_ok=True)
    cells_path = out / CELLS
    done = {
        (r.get("fingerprint"), r.get("fraction"), r.get("seed")) for r in read_cells(cells_path)
    }
    pairs = [(e, t) for e in runnable for t in tasks]
    current: set[str] = set()
    for i, (enc, task) in enumerate(pairs, start=1):
        kind = kinds[task.kind]
        fp = fingerprint(enc, task, seed, precision)
        current.add(fp)
        cells = sweep_cells(
            check_fractions(task.fractions or fractions), seeds, kind.seeded_training(task)
        )
        todo = [c for c in cells if (fp, c[0], c[1]) not in done]
        head = f"[{i}/{len(pairs)}] {enc.name} x {task.name}"
        if not todo:
            log(f"{head}: {len(cells)} cells done before, skipped")
            continue
        log(f"{head}: {len(todo)} of {len(cells)} cells to run")
        ctx = TaskContext(
            out / "runs" / enc.name / task.name, device, seed, precision, progress, log
        )
        for res in kind.run(enc, task, todo, ctx):
            record = {
                "encoder": enc.name,
                "task": task.name,
                "kind": task.kind,
                "fraction": res.fraction,
                "seed": res.seed,
                "fingerprint": fp,
                "scores": res.scores,
                "info": res.info,
            }
            append_cell(cells_path, record)
            main = {p: s.get(kind.metric) for p, s in res.scores.items()}
            shown = "  ".join(
                f"{p} {v:.3f}" if isinstance(v, float) else f"{p} -" for p, v in main.items()
            )
            log(f"{head} {res.fraction:.0%} seed {res.seed}: {kind.metric} {shown}")
    records = [r for r in read_cells(cells_path) if r.get("fingerprint") in current]
    report = benchmark_report(
        records,
        encoders=[e.name for e in runnable],
        tasks=[(t.name, kinds[t.kind].metric, t.note) for t in tasks],
        skipped=skipped,
    )
    write_benchmark(out, report)
    return report
