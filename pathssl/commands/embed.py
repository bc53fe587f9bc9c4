"""Write one feature vector per tile of a store with a pretrained checkpoint's encoder.

``pathssl embed tiles/SLIDE.zarr --checkpoint runs/simclr/last.pt --out SLIDE-feats.zarr``
writes a zarr v3 group with ``features`` (N, D) float32 and ``coords`` (N, 2) int64 (level-0
x, y), row ``i`` for tile ``i`` of the store, atomically. Tiles are used at their stored size
and normalised with the mean/std recorded in the checkpoint. OUT may not be, hold or lie inside
the store or the checkpoint; an existing OUT is replaced only when it is an earlier embed output
and --force is given (checked before anything is computed). The checkpoint may be an external
encoder file (torchvision ImageNet weights, a timm / DINO / DINOv2 / published pathology
encoder, BiT .npz): give its --mean/--std and --tile-mpp (``pathssl.models.external``).
Library function:
``pathssl.train.embed.embed_store(store, checkpoint, out)``.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("store", help="a tile store (<slide_id>.zarr)")
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="pretraining checkpoint (last.pt), or an external encoder file (.pth, .bin, "
        ".safetensors, BiT .npz) or torchvision:NAME (the torch hub cache's ImageNet weights)",
    )
    parser.add_argument("--out", required=True, help="output zarr group (feats.zarr)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument(
        "--force", action="store_true", help="replace OUT when it is an earlier embed output"
    )
    parser.add_argument(
        "--mean",
        type=float,
        nargs=3,
        metavar=("R", "G", "B"),
        help="normalisation of an external encoder file (pathssl checkpoints record theirs)",
    )
    parser.add_argument("--std", type=float, nargs=3, metavar=("R", "G", "B"))
    parser.add_argument(
        "--tile-mpp",
        help="um/px of an external encoder's pretraining tiles, or 'none' (unknown)",
    )


def _mpp(text: str | None) -> float | str | None:
    if text is None or text.strip().lower() == "none":
        return text
    from tiling.errors import UsageError

    try:
        return float(text)
    except ValueError:
        raise UsageError(f"--tile-mpp: a number or 'none', got {text!r}") from None


def run(args: argparse.Namespace) -> int:
    from pathssl.train.embed import embed_store

    out = embed_store(
        args.store,
        args.checkpoint,
        args.out,
        batch_size=args.batch_size,
        device=args.device,
        num_workers=args.num_workers,
        force=args.force,
        mean=args.mean,
        std=args.std,
        tile_mpp=_mpp(args.tile_mpp),
    )
    print(f"features -> {out}")
    return 0
