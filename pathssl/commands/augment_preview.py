"""Write a picture of what an augmentation recipe does.

Each row shows an original tile followed by the views one draw of the recipe makes from it
(masked patches greyed out for MAE-style recipes). IMAGE_OR_STORE is a PNG/JPEG file or a tile
store folder. --recipe takes a registered name (simclr, moco, byol, barlow_twins, dino, swav,
mae, maskfeat) or a YAML config (configs/augment/*.yaml). Library function:
``pathssl.augment.preview_grid(images, recipe)``.
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="IMAGE_OR_STORE", help="PNG/JPEG file or tile store")
    parser.add_argument("--recipe", default="simclr", help="recipe name or YAML config")
    parser.add_argument("--out", default="augment_preview.png", help="output picture")
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cell", type=int, default=160, help="cell side in pixels")


def run(args: argparse.Namespace) -> int:
    from pathssl.augment import load_recipe
    from pathssl.augment.preview import load_preview_images, preview_grid, write_preview

    try:
        recipe = load_recipe(args.recipe)
        images = load_preview_images(args.source, n=args.rows)
    except (KeyError, ValueError, FileNotFoundError) as exc:
        print(f"augment-preview: {exc}", file=sys.stderr)
        return 1
    grid = preview_grid(images, recipe, rows=args.rows, seed=args.seed, cell=args.cell)
    print(f"recipe {recipe.name}: {recipe.n_views} views -> {write_preview(args.out, grid)}")
    return 0
