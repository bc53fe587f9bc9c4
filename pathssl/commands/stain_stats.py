"""Compute RandStainNA colour statistics (Shen et al. 2022) from tile stores.

Per-tile channel means and standard deviations in LAB, HSV or HED are gathered from the stores
(tiles with a tissue fraction below --min-tissue are skipped) and summarised as the per-channel
average and spread of each, optionally with a Gaussian mixture over the joint (mean, std) vector
(--gmm K). The YAML output feeds ``pathssl.augment.RandStainNA(stats=PATH)`` and view recipes
(``augment.params.randstain_stats: PATH``; or ``stain_norm: reinhard`` with
``stain_norm_target: PATH`` to normalise tiles to the dataset's average). STORES are stores
or folders of stores (``pathssl stain-stats tiles/``). The output is checked before anything is
computed: its folder must be writable, it may not lie inside an input, and an existing file is
replaced only when it is an earlier stain-stats output and --force is given. Library function:
``pathssl.augment.compute_stain_stats(stores, space=...)``.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "stores", nargs="+", help="tile stores (<slide_id>.zarr) or folders of stores (tiles/)"
    )
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
    parser.add_argument(
        "--force", action="store_true", help="replace --out when it is an earlier stats file"
    )


def is_stats_file(path: Path) -> bool:
    """Whether ``path`` is a statistics YAML that ``pathssl stain-stats`` wrote."""
    import yaml

    try:
        d = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return isinstance(d, dict) and {"space", "mean", "std", "n_tiles"} <= set(d)


def run(args: argparse.Namespace) -> int:
    import yaml

    from pathssl.augment import compute_stain_stats
    from tiling.atomic import atomic_write
    from tiling.errors import UsageError
    from tiling.outputs import check_output_file
    from tiling.store import find_stores

    if args.gmm < 0:
        raise UsageError(f"--gmm must be >= 0 (0: no mixture), got {args.gmm}")
    if args.max_tiles < 0:
        raise UsageError(f"--max-tiles must be >= 0 (0: all tiles), got {args.max_tiles}")
    if not 0 <= args.min_tissue <= 1:
        raise UsageError(f"--min-tissue must be in [0, 1], got {args.min_tissue}")
    stores = find_stores(args.stores)
    if not stores:
        raise UsageError(
            f"no tile store (*.zarr) in {' '.join(args.stores)}; run pathssl tile first"
        )
    out = check_output_file(
        args.out, inputs=args.stores, force=args.force, is_ours=is_stats_file, command="stain-stats"
    )
    stats = compute_stain_stats(
        stores,
        space=args.space,
        n_components=args.gmm,
        max_tiles=args.max_tiles or None,
        min_tissue=args.min_tissue,
        seed=args.seed,
    )
    atomic_write(out, yaml.safe_dump(stats.to_dict(), sort_keys=False))
    print(
        f"{stats.n_tiles} tiles, space {stats.space}: mean {stats.mean_avg.round(3).tolist()}"
        f" std {stats.std_avg.round(3).tolist()} -> {out}"
    )
    return 0
