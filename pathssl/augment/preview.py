"""Pictures of what a view recipe does: a grid of original + views (``pathssl augment-preview``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .stain_inputs import read_rgb
from .view_recipe import ViewRecipe


def load_preview_images(
    source: str | Path, n: int = 4, min_tissue: float = 0.5
) -> list[np.ndarray]:
    """(H, W, 3) uint8 RGB images from a PNG/JPEG file (one image) or a tile store folder
    (up to ``n`` tiles, evenly spaced among tiles with ``qc["tissue"] >= min_tissue``)."""
    p = Path(source)
    if p.is_dir():
        from tiling import open_store

        store: Any = open_store(str(p))
        idx = np.arange(len(store))
        qc = getattr(store, "qc", None)
        if qc is not None and "tissue" in qc:
            keep = idx[np.asarray(qc["tissue"]) >= min_tissue]
            idx = keep if len(keep) else idx
        if len(idx) == 0:
            raise ValueError(f"{p} holds no tiles")
        pick = idx[np.linspace(0, len(idx) - 1, min(n, len(idx))).round().astype(int)]
        return [np.asarray(store[int(i)]) for i in pick]
    return [read_rgb(p)]


def preview_grid(
    images: list[np.ndarray], recipe: ViewRecipe, rows: int = 4, seed: int = 0, cell: int = 160
) -> np.ndarray:
    """Grid of ``rows`` rows: the original tile, then every view of one draw of ``recipe``.

    With fewer images than rows, images are reused (each row is a fresh draw). Returns an
    (rows * (cell + 4), (1 + n_views) * (cell + 4), 3) uint8 RGB picture; masked patches of
    MAE-style recipes are greyed out.
    """
    run = recipe.cpu(seed=seed)
    drawn = []
    for r in range(rows):
        img = images[r % len(images)]
        res = run(img)
        drawn.append((img, res["views"], res["patch_mask"]))
    return draw_grid(drawn, recipe.patch_size, recipe.views[0][0].size, cell)


def draw_grid(
    rows: list[tuple[np.ndarray, list[np.ndarray], np.ndarray | None]],
    patch_size: int,
    full_size: int,
    cell: int = 160,
) -> np.ndarray:
    """The picture of :func:`preview_grid` from views already drawn: per row the original
    (H, W, 3) uint8 tile, its (s, s, 3) uint8 views and the first view's (num_patches,) bool
    patch mask (or None). Views smaller than ``full_size`` get half a cell."""
    gap = 4
    n_cols = 1 + max(len(views) for _, views, _ in rows)
    out = np.full((len(rows) * (cell + gap), n_cols * (cell + gap), 3), 255, dtype=np.uint8)
    for r, (img, views, mask) in enumerate(rows):
        tiles = [img, *views]
        if mask is not None:
            tiles[1] = _grey_patches(tiles[1], mask, patch_size)
        for c, t in enumerate(tiles):
            side = cell if c == 0 or t.shape[0] >= full_size else cell // 2
            small = cv2.resize(t, (side, side), interpolation=cv2.INTER_AREA)
            y, x = r * (cell + gap), c * (cell + gap)
            out[y : y + side, x : x + side] = small
    return out


def _grey_patches(view: np.ndarray, mask: np.ndarray, patch: int) -> np.ndarray:
    v = view.copy()
    per_row = view.shape[1] // patch
    for i in np.flatnonzero(mask):
        y, x = divmod(int(i), per_row)
        v[y * patch : (y + 1) * patch, x * patch : (x + 1) * patch] = 128
    return v


def write_preview(path: str | Path, grid: np.ndarray) -> Path:
    """Write an RGB grid as PNG/JPEG (by suffix) atomically; returns the path."""
    from tiling.atomic import atomic_path

    p = Path(path)
    with atomic_path(p) as tmp:
        if not cv2.imwrite(str(tmp), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR)):
            raise OSError(f"could not write {p}; give --out a .png or .jpg name")
    return p
