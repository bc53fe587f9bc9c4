"""Batched patch geometry of the pretext tasks (jigsaw, context prediction, PIRL): a square
view cut into a ``grid x grid`` lattice of cells, one patch per cell with a gap to its
neighbours and a random jitter, gathered for the whole batch in one indexing operation (no
per-sample Python loop). Random draws come from torch's global generator (checkpointed by the
training loop: exact resume).

Geometry of one view ``(B, C, H, W)``: the largest centred square of side ``grid * cell``
(``cell = min(H, W) // grid``) is used; a ``patch``-pixel patch sits centred in its cell, moved
by an integer jitter drawn uniformly in ``[-jitter, jitter]`` per axis, patch and cell. Two
neighbouring patches are then at least ``cell - patch - 2 * jitter`` pixels apart (the gap
that keeps edge and stain continuity from giving the answer away; Noroozi & Favaro 2016,
Doersch et al. 2015).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def patch_side(cell: int, fraction: float, multiple: int = 1) -> int:
    """The patch side for a ``cell``-pixel cell: ``round(fraction * cell)`` rounded down to a
    multiple of ``multiple`` (a ViT's patch size), at least ``multiple``; ``ValueError`` if it
    does not fit in the cell."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"patch fraction must lie in (0, 1], got {fraction}")
    side = max(multiple, (round(fraction * cell) // multiple) * multiple)
    if side > cell:
        raise ValueError(
            f"a {side} px patch (a multiple of {multiple}) does not fit a {cell} px cell: use "
            "larger views or a smaller grid"
        )
    return side


def max_jitter(cell: int, patch: int, fraction: float) -> int:
    """Jitter bound in pixels: ``round(fraction * cell)``, at most the slack ``(cell - patch)
    // 2`` so that a patch never leaves its cell."""
    return max(0, min(round(fraction * cell), (cell - patch) // 2))


def patch_corners(
    batch: int,
    cells: Tensor,
    cell: int,
    patch: int,
    jitter: int,
    origin: tuple[int, int] = (0, 0),
    device: torch.device | None = None,
) -> Tensor:
    """Top-left corners ``(B, K, 2)`` (row, col; long) of one patch per cell.

    ``cells``: ``(K, 2)`` or ``(B, K, 2)`` long (row, col) grid indices of the cells; ``origin``:
    the pixel of the lattice's top-left corner. Jitter ``(B, K, 2)`` is drawn from torch's global
    generator."""
    cells = cells.to(device)
    if cells.ndim == 2:
        cells = cells.unsqueeze(0).expand(batch, -1, -1)
    base = cells * cell + (cell - patch) // 2 + torch.tensor(origin, device=device)
    shift = torch.randint(-jitter, jitter + 1, base.shape, device=device) if jitter else 0
    return base + shift


def gather_patches(x: Tensor, corners: Tensor, patch: int) -> Tensor:
    """``x`` ``(B, C, H, W)``, ``corners`` ``(B, K, 2)`` -> patches ``(B, K, C, patch, patch)``
    (``x[b, :, r:r + patch, c:c + patch]`` for each corner), one advanced-indexing gather."""
    b = x.shape[0]
    offs = torch.arange(patch, device=x.device)
    rows = corners[..., 0, None] + offs  # (B, K, p)
    cols = corners[..., 1, None] + offs
    bi = torch.arange(b, device=x.device).view(b, 1, 1, 1)
    out = x[bi, :, rows[..., :, None], cols[..., None, :]]  # (B, K, p, p, C)
    return out.permute(0, 1, 4, 2, 3)


def lattice(x: Tensor, grid: int) -> tuple[int, tuple[int, int]]:
    """``(cell, origin)`` of the centred ``grid x grid`` lattice on views ``x`` ``(B, C, H, W)``."""
    h, w = x.shape[-2:]
    cell = min(h, w) // grid
    if cell < 1:
        raise ValueError(f"views of {h}x{w} px are too small for a {grid}x{grid} grid")
    return cell, ((h - grid * cell) // 2, (w - grid * cell) // 2)


def grid_cells(grid: int, device: torch.device | None = None) -> Tensor:
    """``(grid * grid, 2)`` long (row, col) of every cell, row-major."""
    r, c = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    return torch.stack([r.reshape(-1), c.reshape(-1)], dim=1).to(device)


def normalise_patches(patches: Tensor, eps: float = 1e-5) -> Tensor:
    """Per-patch, per-channel standardisation of ``(..., C, p, p)`` (Noroozi & Favaro 2016: so
    that mean colour and contrast do not tell neighbours apart)."""
    mean = patches.mean(dim=(-2, -1), keepdim=True)
    std = patches.std(dim=(-2, -1), keepdim=True)
    return (patches - mean) / (std + eps)


def grid_tiles(
    x: Tensor, grid: int, patch_fraction: float, jitter_fraction: float, multiple: int = 1
) -> Tensor:
    """Jigsaw tiles: views ``(B, C, H, W)`` -> ``(B, grid * grid, C, p, p)`` in row-major cell
    order, ``p = patch_side(cell, patch_fraction, multiple)``, jittered by up to
    ``max_jitter(cell, p, jitter_fraction)`` pixels per axis, each tile standardised on its own
    (:func:`normalise_patches`)."""
    cell, origin = lattice(x, grid)
    p = patch_side(cell, patch_fraction, multiple)
    j = max_jitter(cell, p, jitter_fraction)
    corners = patch_corners(x.shape[0], grid_cells(grid, x.device), cell, p, j, origin, x.device)
    return normalise_patches(gather_patches(x, corners, p))


def patch_multiple(backbone: nn.Module) -> int:
    """Patch sides are rounded to this: a ViT's patch size (1 for a CNN)."""
    return int(getattr(backbone, "patch_size", 1))
