"""Write a picture of what an augmentation recipe does.

Each row shows an original tile followed by the views one draw of the recipe makes from it
(masked patches greyed out for MAE-style recipes). IMAGE_OR_STORE is a PNG/JPEG file or a tile
store folder. Two ways to name the recipe:

* ``--recipe`` a registered name (simclr, moco, byol, barlow_twins, dino, swav, mae, maskfeat)
  or a YAML file of configs/augment/: drawn on the CPU (albumentations). Library function:
  ``pathssl.augment.preview_grid(images, recipe)``.
* ``--config`` a pretraining config (configs/pretrain/*.yaml, which composes its recipe as the
  ``augment`` section; ``--set KEY=VALUE`` overrides as for ``pathssl pretrain``): the exact views
  the training loop makes. The recipe is built by the training's own functions
  (``pathssl.train.build``: ``build_views``, ``build_method``, ``align_mask``), run as its
  batched torch module with the generator of the training step seeded from ``train.seed``
  (``--seed`` replaces it), on a batch of ``--rows`` tiles: the tiles of IMAGE_OR_STORE, or
  without it tiles of the config's ``data.stores`` after its QC filters (``build_dataset``). The
  training step given the same batch and seed makes the same views. Library function:
  ``training_views(cfg, images, tile_mpp)``.

The line printed names each view's resolution (tile mpp times its scale) when the tiles have one.
An existing --out is replaced only when it is a picture and --force is given, never when it is an
input.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source",
        metavar="IMAGE_OR_STORE",
        nargs="?",
        help="PNG/JPEG file or tile store (with --config: default, tiles of data.stores)",
    )
    how = parser.add_mutually_exclusive_group()
    how.add_argument("--recipe", help="recipe name or YAML config (default: simclr)")
    how.add_argument("--config", help="pretraining config: the views its training loop makes")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override in --config (repeatable), e.g. --set augment.params.size=112",
    )
    parser.add_argument("--out", default="augment_preview.png", help="output picture")
    parser.add_argument("--rows", type=int, default=4, help="rows (tiles) in the picture (4)")
    parser.add_argument(
        "--seed", type=int, default=None, help="seed (default: 0, or train.seed with --config)"
    )
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


def training_views(cfg: Any, images: np.ndarray, tile_mpp: float | None = None) -> dict[str, Any]:
    """The views the training step of ``cfg`` (a ``PretrainConfig``) makes from ``images``.

    Args:
        cfg: the composed pretraining config (its ``augment``, ``method``, ``model`` and
            ``train.seed`` are used).
        images: (B, H, W, 3) uint8 tiles, the batch.
        tile_mpp: the tiles' micrometres per pixel (recorded per view as ``mpp``), or None.

    Returns:
        the recipe module's output, ``{"views": [(B, 3, s, s) float in [0, 1]], "patch_mask",
        "scale", "mpp"}`` plus ``"recipe"``: the :class:`~pathssl.augment.ViewRecipe`.
    """
    import torch

    from pathssl.train.build import align_mask, build_method, build_views, view_generator

    recipe = build_views(cfg)
    recipe.check_inputs()
    recipe = align_mask(recipe, build_method(cfg, recipe))  # the backbone's patch grid
    recipe.check_tile(images.shape[1], images.shape[2])
    module = recipe.torch(tile_mpp=tile_mpp)
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
        out: dict[str, Any] = module(x, view_generator(cfg.train.seed))
    return {**out, "recipe": recipe}


def _config_images(args: argparse.Namespace, cfg: Any) -> tuple[np.ndarray, float | None]:
    """A batch of ``--rows`` tiles for --config, and their mpp."""
    from pathssl.augment.preview import load_preview_images

    if args.source is not None:
        images = load_preview_images(args.source, n=args.rows)
        mpp = None
        if Path(args.source).is_dir():
            from tiling import open_store

            mpp = float(open_store(args.source).mpp)
    else:
        from pathssl.train.build import build_dataset

        dataset = build_dataset(cfg)
        pick = np.linspace(0, len(dataset) - 1, min(args.rows, len(dataset))).round()
        images, mpp = [dataset.image(int(i)) for i in pick], dataset.tile_mpp
    if len({im.shape for im in images}) > 1:
        raise ValueError(f"{args.source}: tiles of different sizes cannot form one batch")
    return np.stack([images[r % len(images)] for r in range(args.rows)]), mpp


def run(args: argparse.Namespace) -> int:
    from pathssl.augment import load_recipe
    from pathssl.augment.preview import (
        draw_grid,
        load_preview_images,
        preview_grid,
        write_preview,
    )
    from tiling.errors import UsageError
    from tiling.outputs import check_output_file

    if args.rows < 1:
        raise UsageError(f"--rows must be >= 1, got {args.rows}")
    if args.cell < 16:
        raise UsageError(f"--cell must be >= 16 px, got {args.cell}")
    if Path(args.out).suffix.lower() not in (".png", ".jpg", ".jpeg"):
        raise UsageError(f"--out {args.out}: give a .png or .jpg file name")
    if args.source is None and args.config is None:
        raise UsageError("give an IMAGE_OR_STORE, or --config to use the config's data.stores")
    if args.source is not None and not Path(args.source).exists():
        raise UsageError(f"{args.source}: no such image or tile store; check the path")
    if args.set and args.config is None:
        raise UsageError("--set overrides a --config; give --config")
    named = args.config or args.recipe
    out = check_output_file(
        args.out,
        inputs=[args.source, named if named and Path(named).exists() else None],
        force=args.force,
        is_ours=is_picture,
        command="augment-preview",
    )
    if args.config is not None:
        from pathssl.train.config import load_config

        seed_set = [] if args.seed is None else [f"train.seed={args.seed}"]
        cfg = load_config(args.config, [*args.set, *seed_set])
        images, tile_mpp = _config_images(args, cfg)
        res = training_views(cfg, images, tile_mpp)
        recipe = res["recipe"]
        mask = res["patch_mask"]
        rows = [
            (
                images[r],
                [
                    (v[r].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
                    for v in res["views"]
                ],
                None if mask is None else mask[r].numpy(),
            )
            for r in range(len(images))
        ]
        grid = draw_grid(rows, recipe.patch_size, recipe.views[0][0].size, args.cell)
        mpp = res["mpp"]
    else:
        try:
            recipe = load_recipe(args.recipe or "simclr")
        except KeyError as exc:  # an unknown recipe name: a bad argument
            raise UsageError(f"--recipe: {exc.args[0]}") from None
        images_list = load_preview_images(args.source, n=args.rows)
        seed = 0 if args.seed is None else args.seed
        grid = preview_grid(images_list, recipe, rows=args.rows, seed=seed, cell=args.cell)
        mpp = None
    where = write_preview(out, grid)
    res_line = (
        ""
        if mpp is None
        else ", views at " + ", ".join(f"{float(m.median()):.3g}" for m in mpp) + " um/px (median)"
    )
    print(f"recipe {recipe.name}: {recipe.n_views} views{res_line} -> {where}")
    return 0
