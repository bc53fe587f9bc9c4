"""The one patch-mask sampler: every masked path (the masked view recipes on both backends, MAE,
MaskFeat) draws its mask here.

``random_patch_mask(batch, num_patches, ratio, generator)`` returns a ``(B, N)`` bool mask,
True = masked, with exactly ``round(ratio * N)`` masked patches per sample, uniformly chosen
(every subset of that size equally likely), reproducible under a seeded ``torch.Generator``.
Patches are numbered row-major over the ``(H // p, W // p)`` grid of a view.
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
