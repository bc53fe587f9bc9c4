"""S4L against supervised-only on the same labels, at 1 %, 10 % and 100 % of them (issue 14).

For each method (``s4l_rotation``, ``s4l_exemplar``, ``supervised``) and each (fraction, seed) of
the package's one label-fraction sweep (:mod:`pathssl.data.sweep`: a stratified, seeded, nested
subset of the training labels; fractions below 1 with every seed, 1 once): pretrain a ResNet-18
for ``--steps`` steps on the CMU-1 tiles of ``benchmarks/all_methods.py`` with that subset as the
labelled stream, then score the trunk as ``pathssl eval``'s benchmark scores a tile task (the
linear probe and kNN trained on the SAME label subset, scored on all test crops:
:func:`pathssl.eval.benchmark.tile_task`). The table and the figure are ``pathssl eval``'s
benchmark report (:func:`pathssl.eval.report.write_benchmark`).

The labelled set is the hgsc_nest nucleus-type crops of the demo (left half trains, right half
scores). Their labels were made by a segmentation model, not drawn by hand: the figure's notes
say so. Every run is recorded in ``--out/cells.jsonl`` (an interrupted run resumes).

    python benchmarks/s4l_labels.py                  # bench_out/s4l_labels/benchmark.{md,png}
    python benchmarks/s4l_labels.py --steps 20 --seeds 0   # a quick look
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import all_methods as am  # noqa: E402  (the table's tiles, crops and CPU settings)

METHODS = ("s4l_rotation", "s4l_exemplar", "supervised")
TASK = "hgsc_crops"
NOTE = (
    "hgsc_nest nucleus-type crops (3 classes; labels made by a segmentation model, not drawn "
    "by hand), left half trains, right half scores; the trunk's labelled stream and the probes "
    "see the same label subset"
)


def pretrain(
    method: str,
    fraction: float,
    seed: int,
    steps: int,
    store: Path,
    crops: tuple[Path, Path],
    out: Path,
) -> Path:
    """``steps`` steps of ``method`` on a fresh ``out`` with ``fraction`` of the labels."""
    extra, _ = am.run_inputs(method, seed, 0.0, store, crops, out.parent, [])
    extra = [e for e in extra if not e.startswith("data.labelled.fraction")]
    extra.append(f"data.labelled.fraction={fraction}")
    shutil.rmtree(out, ignore_errors=True)
    trainer = am.build(method, "resnet18", store, out, steps, seed, extra)
    trainer.fit()
    return Path(trainer.checkpoint_path)


def main(argv: list[str] | None = None) -> int:
    from pathssl.data.sweep import sweep_cells
    from pathssl.eval.benchmark import TaskContext, append_cell, read_cells, tile_task
    from pathssl.eval.config import (
        DataConfig,
        EncoderEntry,
        KnnConfig,
        LinearConfig,
        ProtocolsConfig,
        SourceConfig,
        TaskEntry,
    )
    from pathssl.eval.report import benchmark_report, write_benchmark

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=150, help="pretraining steps per run")
    p.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.1, 1.0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--out", type=Path, default=REPO / "bench_out" / "s4l_labels")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    cells_file = args.out / "cells.jsonl"
    done = {(r["encoder"], r["fraction"], r["seed"]) for r in read_cells(cells_file)}

    store = am.tile_store(REPO / "bench_out" / "all_methods")
    crops = am.knn_crops(args.out)
    train_csv, test_csv = crops
    data = DataConfig(
        source=SourceConfig(format="csv", csv=str(train_csv)),
        test=SourceConfig(format="csv", csv=str(test_csv)),
        image_size=am.VIEW,
    )
    protocols = ProtocolsConfig(linear=LinearConfig(), knn=KnnConfig(k=20))
    task = TaskEntry(name=TASK, data=data, protocols=protocols, note=NOTE)
    for method in args.methods:
        for fraction, seed in sweep_cells(args.fractions, args.seeds):
            if (method, fraction, seed) in done:
                continue
            t0 = time.perf_counter()
            run = args.out / f"{method}_{fraction:g}_{seed}"
            ckpt = pretrain(method, fraction, seed, args.steps, store, crops, run)
            seconds = time.perf_counter() - t0
            ctx = TaskContext(out_dir=run / "eval", device="cpu", seed=seed, log=lambda _: None)
            entry = EncoderEntry(name=method, backbone="resnet18", checkpoint=str(ckpt))
            for cell in tile_task(entry, task, [(fraction, seed)], ctx):
                record = {
                    "encoder": method,
                    "task": TASK,
                    "fraction": fraction,
                    "seed": seed,
                    "scores": cell.scores,
                    "info": {**cell.info, "pretrain_s": round(seconds, 1), "steps": args.steps},
                }
                append_cell(cells_file, record)
                print(json.dumps(record), flush=True)
    records = [r for r in read_cells(cells_file) if r["encoder"] in args.methods]
    report = benchmark_report(records, args.methods, [(TASK, "balanced_accuracy", NOTE)])
    report["notes"].append(
        f"ResNet-18, {args.steps} steps of batch {am.BATCH} tiles + {am.BATCH} labelled crops "
        f"({am.VIEW} px), AdamW 1e-3; CMU-1 tiles at 0.5 um/px"
    )
    paths = write_benchmark(args.out, report)
    print(Path(paths["md"]).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
