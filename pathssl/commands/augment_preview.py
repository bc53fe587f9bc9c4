"""Write a picture of what an augmentation recipe does.

Each row shows an original tile followed by the views one draw of the recipe makes from it
(masked patches greyed out for MAE-style recipes). IMAGE_OR_STORE is a PNG/JPEG file or a tile
store folder. --recipe takes a registered name (simclr, moco, byol, barlow_twins, dino, swav,
mae, maskfeat) or a YAML config (configs/augment/*.yaml). An existing --out is replaced only
when it is a picture and --force is given, never when it is the input. Library function:
``pathssl.augment.preview_grid(images, recipe)``.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="IMAGE_OR_STORE", help="PNG/JPEG file or tile store")
    parser.add_argument("--recipe", default="simclr", help="recipe name or YAML config")
    parser.add_argument("--out", default="augment_preview.png", help="output picture")
    parser.add_argument("--rows", type=int, default=4, help="rows (tiles) in the picture (4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cell", type=int, default=160, help="cell side in pixels (160)")
    parser.add_argument("--force", action="store_true", help="replace an existing --out picture")


IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")


def is_picture(path: Path) -> bool:
    """Whether ``path`` is a PNG or JPEG file (what augment-preview writes)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError:
        return False
    return head.startswith(IMAGE_MAGIC)


def run(args: argparse.Namespace) -> int:
    from pathssl.augment import load_recipe
    from pathssl.augment.preview import load_preview_images, preview_grid, write_preview
    from tiling.errors import UsageError
    from tiling.outputs import check_output_file

    if args.rows < 1:
        raise UsageError(f"--rows must be >= 1, got {args.rows}")
    if args.cell < 16:
        raise UsageError(f"--cell must be >= 16 px, got {args.cell}")
    if Path(args.out).suffix.lower() not in (".png", ".jpg", ".jpeg"):
        raise UsageError(f"--out {args.out}: give a .png or .jpg file name")
    if not Path(args.source).exists():
        raise UsageError(f"{args.source}: no such image or tile store; check the path")
    try:
        recipe = load_recipe(args.recipe)
    except KeyError as exc:  # an unknown recipe name: a bad argument
        raise UsageError(f"--recipe: {exc.args[0]}") from None
    out = check_output_file(
        args.out,
        inputs=[args.source, args.recipe if Path(args.recipe).exists() else None],
        force=args.force,
        is_ours=is_picture,
        command="augment-preview",
    )
    images = load_preview_images(args.source, n=args.rows)
    grid = preview_grid(images, recipe, rows=args.rows, seed=args.seed, cell=args.cell)
    print(f"recipe {recipe.name}: {recipe.n_views} views -> {write_preview(out, grid)}")
    return 0
