"""Tile whole-slide images into zarr tile stores at a physical resolution.

Every slide in the inputs (files or folders, searched recursively; any format openslide reads)
becomes ``OUT/<slide_id>.zarr`` with tiles, level-0 coordinates, per-tile QC scores, a thumbnail
and the tissue mask. ``OUT/manifest.csv`` has one row per slide and ``OUT/report.html`` shows
them all. A rerun skips finished slides, so a killed run is simply started again.
Python API: ``tiling.tile_slides(inputs, out, mpp=0.5, size=224, workers=1)``.
"""

from __future__ import annotations

import argparse
import sys


def _shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard wants i/N (e.g. 0/8), got {text!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise argparse.ArgumentTypeError(f"--shard {text}: need 0 <= i < N")
    return i, n


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", help="slide files and/or folders (searched recursively)")
    p.add_argument("--out", required=True, help="output folder for stores, manifest and report")
    res = p.add_mutually_exclusive_group()
    res.add_argument("--mpp", type=float, default=0.5, help="tile resolution, um/px (0.5)")
    res.add_argument(
        "--magnification", type=float, help="tile resolution as magnification (mpp = 10 / M)"
    )
    p.add_argument("--assume-mpp", type=float, help="level-0 um/px for slides that record none")
    p.add_argument("--size", type=int, default=224, help="tile side in pixels (224)")
    p.add_argument("--overlap", type=int, default=0, help="overlap between tiles in pixels (0)")
    p.add_argument(
        "--min-tissue", type=float, default=0.5, help="min tissue fraction to keep a tile (0.5)"
    )
    p.add_argument(
        "--codec", choices=["jpeg", "png", "zstd"], default="jpeg", help="tile codec (jpeg)"
    )
    p.add_argument("--quality", type=int, default=90, help="JPEG quality (90)")
    p.add_argument(
        "--subsampling", choices=["420", "422", "444"], default="420", help="JPEG chroma (420)"
    )
    p.add_argument("--workers", type=int, default=1, help="worker processes (1)")
    p.add_argument("--shard", type=_shard, help="i/N: tile every N-th slide from i (array jobs)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--no-report", action="store_true", help="skip overview PNGs and report.html")


def run(args: argparse.Namespace) -> int:
    from tiling.batch import summarize, tile_slides
    from tiling.errors import TilingError
    from tiling.pipeline import TileOptions

    opts = TileOptions(
        mpp=args.mpp,
        magnification=args.magnification,
        size=args.size,
        overlap=args.overlap,
        min_tissue=args.min_tissue,
        assume_mpp=args.assume_mpp,
        codec=args.codec,
        quality=args.quality,
        subsampling=args.subsampling,
    )
    try:
        results = tile_slides(
            args.inputs,
            args.out,
            opts,
            workers=max(1, args.workers),
            shard=args.shard,
            progress=not args.no_progress,
            report=not args.no_report,
        )
    except (TilingError, FileNotFoundError) as exc:
        print(f"pathssl tile: error: {exc}", file=sys.stderr)
        return 2
    code = summarize(results)
    print(f"manifest: {args.out}/manifest.csv")
    return code
