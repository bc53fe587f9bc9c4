"""Run the whole pipeline on the sample data and write one HTML report.

``pathssl demo --out demo_out --data ../shared/data`` tiles the sample slides, draws the SimCLR
augmentation preview, pretrains SimCLR (ResNet-18) on CMU-1, probes nucleus crops with
``pathssl eval``'s kNN protocol, trains and scores the nuclei head, predicts CMU-1's nuclei as
QuPath GeoJSON and writes ``OUT/report.html``; one line per stage (its name, then its time).
Stages whose outputs exist are skipped (``--force`` reruns them). Exit code 1 when a slide
failed tiling (as ``pathssl tile``; the sample folder holds a deliberately broken slide and one
without a resolution), 2 for bad arguments or data. Library function: ``pathssl.demo.run_demo``.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    parser.add_argument(
        "--data",
        default=None,
        help="sample data folder with slides/ and nuclei/ "
        "(default: ../shared/data next to the project)",
    )
    parser.add_argument("--pretrain-steps", type=int, default=150, help="SimCLR steps")
    parser.add_argument("--nuclei-steps", type=int, default=200, help="nuclei head steps")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--workers", type=int, default=2, help="tiling processes")
    parser.add_argument("--force", action="store_true", help="rerun stages that are done")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from pathssl.demo import DEFAULT_DATA, run_demo

    result = run_demo(  # a ValueError (bad --data, --out): one line, exit 2 (pathssl.cli)
        args.out,
        args.data or DEFAULT_DATA,
        args.pretrain_steps,
        args.nuclei_steps,
        device=args.device,
        workers=args.workers,
        progress=not args.no_progress,
        force=args.force,
        log=lambda line: print(line, flush=True),
    )
    print(f"Open {result.report}")
    if result.failed_slides:
        print(
            f"{len(result.failed_slides)} slides failed tiling "
            f"({', '.join(result.failed_slides)}; the sample folder holds such slides on "
            "purpose): see the report's tiling table"
        )
        return 1
    return 0
