"""The one patch-mask sampler: every masked path (the masked view recipes on both backends, MAE,
MaskFeat) draws its mask here.

``random_patch_mask(batch, num_patches, ratio, generator)`` returns a ``(B, N)`` bool mask,
True = masked, with exactly ``round(ratio * N)`` masked patches per sample, uniformly chosen
(every subset of that size equally likely), reproducible under a seeded ``torch.Generator``.
Patches are numbered row-major over the ``(H // p, W // p)`` grid of a view.
``block_patch_mask`` draws BEiT-style blocks instead (MaskFeat's masking, Wei et al. 2022, after
Bao et al. 2022), with the same exact count; ``patch_mask`` picks one of the two by name.
"""

from __future__ import annotations

import torch


def num_masked(num_patches: int, ratio: float) -> int:
    """How many of ``num_patches`` patches a mask with ``ratio`` covers: ``round(ratio * N)``
    (Python rounding); ``ratio`` must lie in [0, 1]."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"patch mask ratio {ratio} is outside [0, 1]; set a mask_ratio in [0, 1]")
    return round(ratio * num_patches)


def random_patch_mask(
    batch: int,
    num_patches: int,
    ratio: float,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Per-sample uniform random patch mask.

    Args:
        batch: ``B``, the number of samples.
        num_patches: ``N``, patches per sample.
        ratio: fraction to mask; exactly ``round(ratio * N)`` patches are masked per sample.
        generator: the random source (``None``: torch's global one). Draws are made on the
            generator's device, so a CPU generator gives the same mask whatever ``device`` is.
        device: where the returned mask lives (default: the generator's device, else the CPU).

    Returns:
        ``(B, N)`` bool, True = masked. The masked patches of a sample are those whose uniform
        noise is among its ``round(ratio * N)`` smallest.
    """
    k = num_masked(num_patches, ratio)
    draw_on = generator.device if generator is not None else device
    noise = torch.rand(batch, num_patches, generator=generator, device=draw_on)
    ranks = noise.argsort(dim=1).argsort(dim=1)  # (B, N): rank of each patch's noise
    mask = ranks < k
    return mask if device is None else mask.to(device)


def block_patch_mask(
    batch: int,
    grid: tuple[int, int],
    ratio: float,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    min_block: int = 16,
    max_aspect: float = 1 / 0.3,
) -> torch.Tensor:
    """Block-wise patch mask (BEiT's masking generator, used by MaskFeat).

    Per sample, rectangles of ``area ~ U[min_block, remaining]`` patches and aspect ratio
    log-uniform in ``[1 / max_aspect, max_aspect]`` are placed at random (10 tries each; a try
    counts when it masks between 1 and ``remaining`` new patches) until no rectangle fits;
    random single patches then top the mask up, so exactly ``round(ratio * N)`` patches of the
    ``grid = (h, w)`` (``N = h * w``) are masked, as with :func:`random_patch_mask`.

    Returns ``(B, N)`` bool, True = masked, row-major over the grid. Draws come from
    ``generator`` (seedable), on the CPU; ``device`` is where the mask is returned.
    """
    import math
    import random

    import numpy as np

    h, w = grid
    n = h * w
    target = num_masked(n, ratio)
    lo_aspect, hi_aspect = math.log(1 / max_aspect), math.log(max_aspect)
    # one draw from the (seedable) torch generator seeds plain-Python draws: the per-block
    # choices stay cheap on the augmentation path (no torch call per scalar)
    rng = random.Random(int(torch.randint(2**62, (), generator=generator)))
    out = np.zeros((batch, h, w), dtype=bool)
    for mask in out:
        count = 0
        while count < target:
            remaining = target - count
            lo = min(min_block, remaining)
            added = 0
            for _ in range(10):
                area = rng.uniform(lo, remaining)
                aspect = math.exp(rng.uniform(lo_aspect, hi_aspect))
                bh = int(round(math.sqrt(area * aspect)))
                bw = int(round(math.sqrt(area / aspect)))
                if not (1 <= bh <= h and 1 <= bw <= w):
                    continue
                top, left = rng.randrange(h - bh + 1), rng.randrange(w - bw + 1)
                block = mask[top : top + bh, left : left + bw]
                new = int(block.size - block.sum())
                if 0 < new <= remaining:
                    block[:] = True
                    added = new
                    break
            if added == 0:
                break
            count += added
        if count < target:  # top up with random single patches: the exact count
            free = np.flatnonzero(~mask)
            mask.reshape(-1)[rng.sample(free.tolist(), target - count)] = True
    flat = torch.from_numpy(out.reshape(batch, n))
    return flat if device is None else flat.to(device)


def patch_mask(
    batch: int,
    grid: tuple[int, int],
    ratio: float,
    mode: str = "random",
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``(B, h * w)`` bool mask of ``round(ratio * N)`` patches: ``mode`` ``random``
    (:func:`random_patch_mask`) or ``block`` (:func:`block_patch_mask`)."""
    if mode == "random":
        return random_patch_mask(batch, grid[0] * grid[1], ratio, generator, device)
    if mode == "block":
        cpu = generator if generator is None or generator.device.type == "cpu" else None
        mask = block_patch_mask(batch, grid, ratio, cpu)
        return mask if device is None else mask.to(device)
    raise ValueError(f"mask mode must be 'random' or 'block', got {mode!r}")


def split_by_mask(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Index form of a mask with the same number of visible patches ``K`` in every row.

    Args:
        mask: ``(B, N)`` bool, True = masked (e.g. from :func:`random_patch_mask`).

    Returns:
        ``ids_keep`` ``(B, K)``: the visible patches in increasing order; ``ids_restore``
        ``(B, N)``: the permutation that takes ``[visible..., masked...]`` (each part in
        increasing patch order) back to patch order (MAE's decoder un-shuffle).
    """
    visible = (~mask).sum(dim=1)  # (B,)
    k = int(visible[0]) if mask.shape[0] else 0  # one host sync: K sets the output shape
    if bool((visible != k).any()):
        raise ValueError(
            "patch mask rows hide different numbers of patches; draw masks with "
            "pathssl.augment.masking.random_patch_mask"
        )
    ids_shuffle = mask.to(torch.uint8).argsort(dim=1, stable=True)  # (B, N), visible first
    return ids_shuffle[:, :k], ids_shuffle.argsort(dim=1)
