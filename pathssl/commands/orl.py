"""ORL (Xie et al. 2021) stage 2: object proposals and cross-tile RoI pairs. Stage 1 is
``pathssl pretrain configs/pretrain/byol.yaml``; stage 3 is ``pathssl pretrain
configs/pretrain/orl.yaml method.params.pairs=OUT/pairs.npz`` (``pairs`` prints the command).

``pathssl orl proposals STORE_OR_FOLDER... [--workers N] [--force]``
    nuclei, nuclear clusters (classical nuclei model) and selective-search regions of every
    tile, cached next to each store (``X.proposals/``, resumable: rerun after a kill) with a
    picture ``X.proposals/proposals.png``. Library: ``pathssl.orl.cache.compute_proposals``,
    ``proposals_picture``.
``pathssl orl pairs --checkpoint STAGE1/last.pt STORE_OR_FOLDER... --out DIR``
    each tile's image-level nearest neighbours under the stage-1 encoder and the top RoI pairs
    across them: ``DIR/pairs.npz`` (resumable: rerun after a kill). The tiles are those passing
    the stage-1 run's QC filters. Library: ``pathssl.orl.pairs.build_pairs``.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="orl_command", metavar="{proposals,pairs}")
    p = sub.add_parser("proposals", help="object proposals per tile, cached next to each store")
    p.add_argument("stores", nargs="+", help="tile stores or folders of them")
    p.add_argument("--workers", type=int, default=1, help="processes (default 1)")
    p.add_argument("--chunk-tiles", type=int, default=64, help="tiles per cached chunk")
    p.add_argument("--force", action="store_true", help="redo a cache of other parameters")
    p.add_argument("--no-progress", action="store_true")
    p = sub.add_parser("pairs", help="cross-tile RoI pairs from a stage-1 checkpoint")
    p.add_argument("stores", nargs="+", help="tile stores or folders of them")
    p.add_argument("--checkpoint", required=True, help="the stage-1 (byol) last.pt")
    p.add_argument("--out", required=True, help="output folder (pairs.npz, parts/)")
    p.add_argument("--knn", type=int, default=10, help="image neighbours per tile (10)")
    p.add_argument("--topk-ratio", type=float, default=0.1, help="share of RoI pairs kept (0.1)")
    p.add_argument("--roi-size", type=int, default=96, help="RoI crop side in px (96)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--workers", type=int, default=1, help="processes for missing proposals")
    p.add_argument("--force", action="store_true", help="redo an OUT made from other inputs")
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    from tiling.errors import UsageError

    if args.orl_command is None:
        raise UsageError("pathssl orl needs a subcommand: proposals or pairs")
    from pathssl.data.dataset import resolve_stores

    stores = resolve_stores(args.stores)
    if args.orl_command == "proposals":
        from pathssl.orl.cache import cache_dir, compute_proposals, proposals_picture

        for store in stores:
            folder = compute_proposals(
                store,
                chunk_tiles=args.chunk_tiles,
                workers=args.workers,
                force=args.force,
                progress=not args.no_progress,
            )
            picture = proposals_picture(store, cache_dir(store) / "proposals.png")
            print(f"proposals -> {folder} (picture {picture})")
        return 0
    from pathssl.orl.pairs import PairParams, build_pairs, stage3_command

    params = PairParams(args.knn, args.topk_ratio, args.roi_size, args.batch_size)
    path = build_pairs(
        list(stores),
        args.checkpoint,
        args.out,
        params=params,
        device=args.device,
        workers=args.workers,
        force=args.force,
        progress=not args.no_progress,
    )
    print(f"pairs -> {path}\nstage 3: {stage3_command(path)}")
    return 0
