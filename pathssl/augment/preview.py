"""Pictures of what a view recipe does: a grid of original + views (``pathssl augment-preview``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .recipes import ViewRecipe


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
    bgr = cv2.imread(str(p), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"cannot read image {p}")
    return [cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)]


def preview_grid(
    images: list[np.ndarray], recipe: ViewRecipe, rows: int = 4, seed: int = 0, cell: int = 160
) -> np.ndarray:
    """Grid of ``rows`` rows: the original tile, then every view of one draw of ``recipe``.

    With fewer images than rows, images are reused (each row is a fresh draw). Returns an
    (rows * (cell + 4), (1 + n_views) * (cell + 4), 3) uint8 RGB picture; masked patches of
    MAE-style recipes are greyed out.
    """
    run = recipe.cpu(seed=seed)
    gap = 4
    n_cols = 1 + recipe.n_views
    out = np.full((rows * (cell + gap), n_cols * (cell + gap), 3), 255, dtype=np.uint8)
    for r in range(rows):
        img = images[r % len(images)]
        res = run(img)
        tiles = [img, *res["views"]]
        if res["patch_mask"] is not None:
            tiles[1] = _grey_patches(tiles[1], res["patch_mask"], recipe.patch_size)
        for c, t in enumerate(tiles):
            side = cell if c == 0 or t.shape[0] >= recipe.views[0][0].size else cell // 2
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
