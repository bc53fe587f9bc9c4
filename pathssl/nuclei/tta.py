"""Dihedral test-time augmentation of a nuclei model's branch outputs, merged before
post-processing.

Each window batch ``x`` ``(B, 3, S, S)`` goes through the model under the 8 elements of the
dihedral group D4, ``g = rot90^k o flip^f`` (``f``: mirror left-right, then ``k`` quarter turns
as ``torch.rot90(., k, dims=(-2, -1))``). Every output is taken back to the input's frame:
maps by the inverse spatial transform; the HV maps (HoVer-Net, Graham et al. 2019: channel 0
the horizontal, column-direction offset ``h`` of a pixel from its nucleus' centre, channel 1
the vertical ``v``) are a vector field, so their two channels are also mapped by the inverse of
``g``'s linear part ``M_g = R^k F`` with ``F = diag(-1, 1)`` (a mirror negates ``h``) and
``R: (h, v) -> (v, -h)`` (one quarter turn). The 8 results are averaged: NP and TP as softmax
probabilities (returned as their logarithms, so the post-processing's softmax gives the mean
probabilities back), HV as vectors. A model equivariant under D4 gives its own output back.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pathssl.nuclei.model import HV_KEY, NP_KEY, TP_KEY

#: The 8 elements of D4 as ``(k, flip)``: identity first.
DIHEDRAL: tuple[tuple[int, bool], ...] = tuple((k, f) for f in (False, True) for k in range(4))

_F = torch.tensor([[-1.0, 0.0], [0.0, 1.0]])
_R = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])


def apply(x: Tensor, k: int, flip: bool) -> Tensor:
    """``g(x)`` on the last two (spatial) dims of ``(..., H, W)``."""
    if flip:
        x = x.flip(-1)
    return torch.rot90(x, k, dims=(-2, -1)) if k % 4 else x


def invert(y: Tensor, k: int, flip: bool) -> Tensor:
    """``g^-1(y)``: undo :func:`apply` on the spatial dims of ``(..., H, W)``."""
    if k % 4:
        y = torch.rot90(y, -k, dims=(-2, -1))
    return y.flip(-1) if flip else y


def hv_matrix(k: int, flip: bool) -> Tensor:
    """``(2, 2)`` linear part of ``g`` on ``(h, v)`` column vectors: ``R^k F^flip``."""
    m = torch.linalg.matrix_power(_R, k % 4)
    return m @ _F if flip else m


def invert_hv(hv: Tensor, k: int, flip: bool) -> Tensor:
    """HV maps ``(B, 2, H, W)`` predicted on ``g(x)`` -> the frame of ``x``: positions by
    ``g^-1``, vectors by ``M_g^-1 = M_g^T`` (``M_g`` is orthogonal)."""
    back = invert(hv, k, flip)
    m_inv = hv_matrix(k, flip).T.to(back)
    return torch.einsum("ij,bjhw->bihw", m_inv, back)


def tta_forward(model: nn.Module, x: Tensor) -> dict[str, Tensor]:
    """The model's NP / HV (/ TP) outputs on ``x`` ``(B, C, S, S)`` merged over :data:`DIHEDRAL`
    (float32; NP and TP as log mean probabilities, HV mean vectors in ``x``'s frame). One
    forward pass per transform: peak memory is one batch's, compute 8x."""
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"dihedral TTA needs square windows, got {tuple(x.shape[-2:])}")
    prob_np: Tensor | None = None
    prob_tp: Tensor | None = None
    hv: Tensor | None = None
    for k, flip in DIHEDRAL:
        out = model(apply(x, k, flip))
        p = torch.softmax(invert(out[NP_KEY].float(), k, flip), 1)
        v = invert_hv(out[HV_KEY].float(), k, flip)
        prob_np = p if prob_np is None else prob_np + p
        hv = v if hv is None else hv + v
        if TP_KEY in out:
            t = torch.softmax(invert(out[TP_KEY].float(), k, flip), 1)
            prob_tp = t if prob_tp is None else prob_tp + t
    assert prob_np is not None and hv is not None
    n = len(DIHEDRAL)
    merged = {NP_KEY: torch.log((prob_np / n).clamp_min(1e-8)), HV_KEY: hv / n}
    if prob_tp is not None:
        merged[TP_KEY] = torch.log((prob_tp / n).clamp_min(1e-8))
    return merged
