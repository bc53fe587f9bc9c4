"""The benchmark's nuclei task, and the task registry ``pathssl eval`` runs benchmarks with.

:mod:`pathssl.eval.benchmark` runs encoders x tasks but sits below the nuclei layer, so the
``nuclei`` task kind lives here: for each (fraction, seed) cell a HoVer-Net style head is trained
on a **frozen** encoder (``model.finetune: frozen``) on the cell's label tiles
(:func:`pathssl.nuclei.label_efficiency.sweep_subset`, the package's one sweep) of a nuclei
config (e.g. ``configs/nuclei/manual_cpu.yaml``: hand-drawn MoNuSeg + TNBC), and scored on that
config's held-apart images (:func:`pathssl.nuclei.label_efficiency.held_apart_scores`: binary
PQ, AJI, detection F1; per source too). :data:`TASK_KINDS` is the registry of every task kind
(``tile`` from :mod:`pathssl.eval.benchmark`, ``nuclei`` from here); :func:`run_config` runs a
:class:`~pathssl.eval.config.BenchmarkConfig` with it.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pathssl.eval.benchmark import (
    TILE,
    CellResult,
    TaskContext,
    TaskKind,
    checkpoint_path,
    load_entry,
    run_benchmark,
)
from pathssl.eval.config import BenchmarkConfig, EncoderEntry, TaskEntry

SCORE_KEYS = ("pq", "dq", "sq", "aji", "f1_detection")
PROTOCOL = "frozen_head"


def nuclei_config(entry: EncoderEntry, task: TaskEntry, seed: int) -> Any:
    """The task's nuclei config with this encoder, frozen: ``model.backbone`` /
    ``model.checkpoint`` from the entry (the backbone as :func:`load_entry` finds it),
    ``model.mean``/``std`` as the loaded encoder normalises, ``model.mpp`` = the encoder's
    ``tile_mpp`` when the config sets none; ``model.finetune: frozen``, ``train.val_every: 0``."""
    from pathssl.nuclei.config import load_config

    cfg = load_config(task.config, list(task.overrides))
    encoder = load_entry(entry, cfg.data.crop, seed)  # checks it loads; names its backbone
    ckpt = checkpoint_path(entry)
    cfg.model.backbone = encoder.name
    cfg.model.checkpoint = str(ckpt) if ckpt is not None else ""
    cfg.model.mean, cfg.model.std = list(encoder.mean), list(encoder.std)
    if cfg.model.mpp is None and encoder.tile_mpp is not None:
        cfg.model.mpp = encoder.tile_mpp
    cfg.model.finetune = "frozen"
    cfg.train.val_every = 0
    return cfg


def _scores(scores: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    out = {PROTOCOL: {k: scores.get(k) for k in SCORE_KEYS}}
    for name, part in (scores.get("per_source") or {}).items():
        out[f"{PROTOCOL}_{name}"] = {k: part.get(k) for k in SCORE_KEYS}
    return out


def nuclei_task(
    entry: EncoderEntry, task: TaskEntry, cells: list[tuple[float, int]], ctx: TaskContext
) -> Iterator[CellResult]:
    """Train the frozen-encoder head per cell (seeded by the cell's seed, in
    ``ctx.out_dir/<fraction>_<seed>``) and score it on the held-apart images."""
    from pathssl.nuclei.label_efficiency import held_apart_scores, sweep_subset
    from pathssl.nuclei.splits import load_training_data
    from pathssl.nuclei.train import model_mpp, train_nuclei

    cfg = nuclei_config(entry, task, ctx.seed)
    mpp, _ = model_mpp(cfg)
    data = load_training_data(cfg.data, target_mpp=mpp)
    if not data.val:
        raise ValueError(f"task {task.name}: {task.config} holds no images apart to score on")
    for fraction, seed in cells:
        t0 = time.perf_counter()
        subset = sweep_subset(data.train, fraction, cfg.train.label_tile, seed)
        run_cfg = copy.deepcopy(cfg)
        run_cfg.train.out_dir = str(Path(ctx.out_dir) / f"{fraction:g}_{seed}")
        run_cfg.train.seed = seed
        run_cfg.train.label_fraction = fraction
        run_cfg.train.device = ctx.device
        if ctx.precision != "auto":
            run_cfg.train.precision = ctx.precision
        res = train_nuclei(run_cfg, subset, progress=ctx.progress, sources=data.sources)
        scores = held_apart_scores(
            res.model, run_cfg, mpp, stain_reference=res.meta.get("stain_reference"), baseline=False
        )
        assert scores is not None  # data.val is not empty
        info = {
            "label_tiles": len(subset),
            "steps": run_cfg.train.max_steps,
            "train_seconds": round(res.seconds, 1),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        yield CellResult(fraction, seed, _scores(scores), info)


NUCLEI = TaskKind(nuclei_task, "pq", lambda t: True)
TASK_KINDS: dict[str, TaskKind] = {"tile": TILE, "nuclei": NUCLEI}


def run_config(
    cfg: BenchmarkConfig, out_dir: str | Path | None = None, device: str | None = None
) -> dict[str, Any]:
    """Run a benchmark config with every registered task kind; ``out_dir``/``device`` replace
    ``train.out_dir``/``train.device``. Returns the report it wrote
    (:func:`pathssl.eval.benchmark.run_benchmark`)."""
    from pathssl.train.distributed import pick_device

    return run_benchmark(
        cfg.encoders,
        cfg.tasks,
        TASK_KINDS,
        out_dir if out_dir is not None else cfg.train.out_dir,
        fractions=cfg.fractions,
        seeds=cfg.seeds,
        device=str(pick_device(device or cfg.train.device)),
        seed=cfg.train.seed,
        precision=cfg.train.precision,
    )
