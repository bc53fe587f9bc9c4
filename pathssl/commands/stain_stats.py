"""Compute RandStainNA colour statistics (Shen et al. 2022) from tile stores.

Per-tile channel means and standard deviations in LAB, HSV or HED are gathered from the stores
(tiles with a tissue fraction below --min-tissue are skipped) and summarised as the per-channel
average and spread of each, optionally with a Gaussian mixture over the joint (mean, std) vector
(--gmm K). The YAML output feeds ``pathssl.augment.RandStainNA(stats=PATH)``. Library function:
``pathssl.augment.compute_stain_stats(stores, space=...)``.
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("stores", nargs="+", help="tile store folders (<slide_id>.zarr)")
    parser.add_argument("--out", required=True, help="output YAML file")
    parser.add_argument("--space", choices=["lab", "hsv", "hed"], default="lab")
    parser.add_argument(
        "--gmm",
        type=int,
        default=0,
        metavar="K",
        help="also fit a K-component Gaussian mixture (default: none)",
    )
    parser.add_argument(
        "--max-tiles",
        type=int,
        default=2000,
        help="at most this many random tiles per store (0: all)",
    )
    parser.add_argument("--min-tissue", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    from pathssl.augment import compute_stain_stats

    try:
        stats = compute_stain_stats(
            args.stores,
            space=args.space,
            n_components=args.gmm,
            max_tiles=args.max_tiles or None,
            min_tissue=args.min_tissue,
            seed=args.seed,
        )
    except (ValueError, FileNotFoundError) as exc:
        print(f"stain-stats: {exc}", file=sys.stderr)
        return 1
    stats.save(args.out)
    print(
        f"{stats.n_tiles} tiles, space {stats.space}: mean {stats.mean_avg.round(3).tolist()}"
        f" std {stats.std_avg.round(3).tolist()} -> {args.out}"
    )
    return 0
