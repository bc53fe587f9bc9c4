"""SSL losses as plain functions (shapes in each docstring). Those that need the global batch
gather across DDP ranks themselves and reduce to the single-process formula otherwise."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from pathssl.ssl import dist


def nt_xent(z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    """NT-Xent (SimCLR, Chen et al. 2020) over the global batch.

    ``z1, z2``: ``(B, D)`` projections of two views on this rank. Each of the ``2B`` local
    anchors is contrasted with its positive against all other ``2WB - 2`` embeddings of the
    global batch (gathered with gradient). Returns the mean over the local anchors.
    """
    z1, z2 = F.normalize(z1, dim=-1), F.normalize(z2, dim=-1)
    b = z1.shape[0]
    a1, a2 = dist.gather_with_grad(z1), dist.gather_with_grad(z2)
    n = a1.shape[0]  # global batch
    candidates = torch.cat([a1, a2])  # (2n, D)
    anchors = torch.cat([z1, z2])  # (2b, D)
    logits = anchors @ candidates.T / temperature  # (2b, 2n)
    offset = dist.rank() * b
    local = torch.arange(b, device=z1.device) + offset
    self_idx = torch.cat([local, local + n])
    pos_idx = torch.cat([local + n, local])
    rows = torch.arange(2 * b, device=z1.device)
    is_self = torch.zeros_like(logits, dtype=torch.bool)
    is_self[rows, self_idx] = True
    logits = logits.masked_fill(is_self, float("-inf"))
    return F.cross_entropy(logits, pos_idx)


def info_nce_queue(q: Tensor, k: Tensor, queue: Tensor, temperature: float) -> Tensor:
    """InfoNCE with a memory queue (MoCo, He et al. 2020).

    ``q, k``: ``(B, D)`` L2-normalised queries and keys (positives), ``queue``: ``(K, D)``
    L2-normalised negatives. Logits ``[q.k, q.queue^T] / T``, target index 0; mean over B.
    """
    pos = (q * k).sum(-1, keepdim=True)
    neg = q @ queue.T
    logits = torch.cat([pos, neg], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


def moco_v3_contrastive(q: Tensor, k: Tensor, temperature: float) -> Tensor:
    """MoCo v3 (Chen, Xie, He 2021) InfoNCE: local queries ``q`` ``(B, D)`` against the keys of
    the global batch (``k`` ``(B, D)`` gathered without gradient), scaled by ``2T``."""
    q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    k_all = dist.gather_no_grad(k)
    logits = q @ k_all.T / temperature
    labels = torch.arange(q.shape[0], device=q.device) + dist.rank() * q.shape[0]
    return F.cross_entropy(logits, labels) * (2 * temperature)


def byol_loss(p: Tensor, z: Tensor) -> Tensor:
    """BYOL (Grill et al. 2020): ``2 - 2 cos(p, z)`` averaged over the batch; ``p`` online
    predictions ``(B, D)``, ``z`` target projections ``(B, D)`` (treated as constants)."""
    return (2 - 2 * F.cosine_similarity(p, z.detach(), dim=-1)).mean()


def barlow_twins_loss(z1: Tensor, z2: Tensor, lambd: float) -> Tensor:
    """Barlow Twins (Zbontar et al. 2021).

    ``z1, z2``: ``(B, D)``. Each is standardised over the global batch (biased variance, as
    BatchNorm); ``C = z1n^T z2n / N`` ``(D, D)``; loss ``sum_i (1 - C_ii)^2 + lambd *
    sum_{i != j} C_ij^2``.
    """
    a1, a2 = dist.gather_with_grad(z1), dist.gather_with_grad(z2)
    n = a1.shape[0]

    def standardise(z: Tensor) -> Tensor:
        return (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + 1e-5)

    c = standardise(a1).T @ standardise(a2) / n
    on_diag = (torch.diagonal(c) - 1).pow(2).sum()
    off_diag = c.pow(2).sum() - torch.diagonal(c).pow(2).sum()
    return on_diag + lambd * off_diag


@torch.no_grad()
def sinkhorn_knopp(scores: Tensor, epsilon: float, iterations: int) -> Tensor:
    """SwAV's equipartitioned soft assignments (Caron et al. 2020), over the global batch.

    ``scores``: ``(B, K)`` sample-prototype similarities. ``Q = exp(scores / eps)`` is
    alternately normalised so that each prototype gets mass ``1/K`` and each sample ``1/N``
    (``N`` = global batch); returns ``N * Q`` ``(B, K)``: each row (sample) sums to 1 and each
    column (prototype) sums to about ``N / K`` over the global batch.
    """
    s = scores.to(torch.promote_types(scores.dtype, torch.float32)) / epsilon
    s = s - dist.all_reduce_max(s.max())  # a constant shift: invariant, avoids overflow
    q = torch.exp(s).T  # (K, B)
    k = q.shape[0]
    n = q.shape[1] * dist.world_size()
    q = q / dist.all_reduce_sum(q.sum())
    for _ in range(iterations):
        q = q / dist.all_reduce_sum(q.sum(dim=1, keepdim=True)) / k  # prototypes: 1/K each
        q = q / q.sum(dim=0, keepdim=True) / n  # samples: 1/N each
    return (q * n).T


def dino_loss(
    student: list[Tensor],
    teacher: list[Tensor],
    center: Tensor,
    student_temp: float,
    teacher_temp: float,
) -> Tensor:
    """DINO (Caron et al. 2021) cross-entropy between centred, sharpened teacher outputs on the
    global crops and student outputs on every other crop.

    ``student``: one ``(B, K)`` logit tensor per crop; ``teacher``: one per global crop;
    ``center``: ``(1, K)``. Mean over the ``(teacher, student)`` pairs with different crops.
    """
    total = student[0].new_zeros(())
    pairs = 0
    for iq, t in enumerate(teacher):
        p_t = F.softmax((t.detach() - center) / teacher_temp, dim=-1)
        for v, s in enumerate(student):
            if v == iq:
                continue
            total = total + (-p_t * F.log_softmax(s / student_temp, dim=-1)).sum(-1).mean()
            pairs += 1
    return total / pairs


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """``(B, C, H, W) -> (B, N, p * p * C)`` with patches in row-major order and each patch
    flattened as ``(p, p, C)``."""
    b, c, h, w = images.shape
    p = patch_size
    x = images.reshape(b, c, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)


def masked_patch_loss(pred: Tensor, target: Tensor, mask: Tensor, norm_target: bool) -> Tensor:
    """MAE (He et al. 2022) loss: mean squared error per patch, averaged over masked patches.

    ``pred, target``: ``(B, N, P)``; ``mask``: ``(B, N)``, 1 = masked (predicted). With
    ``norm_target`` each target patch is standardised by its own mean and variance
    (``var + 1e-6``, unbiased variance as in the MAE reference).
    """
    if norm_target:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1e-6).sqrt()
    per_patch = (pred - target).pow(2).mean(dim=-1)
    mask = mask.to(per_patch.dtype)
    return (per_patch * mask).sum() / mask.sum().clamp_min(1)
