"""HoVer-Net post-processing (Graham et al. 2019, sec. 3.3) through MONAI.

NP probabilities and the Sobel gradients of the HV maps give an "energy" landscape; markers are
the confident nucleus pixels away from HV edges, and a marker-controlled watershed splits
touching nuclei (MONAI ``HoVerNetInstanceMapPostProcessing``). Each instance's type is the
majority of its pixels' argmax types, background votes ignored, and 0 when every pixel votes
background (MONAI ``HoVerNetNuclearTypePostProcessing``, HoVer-Net); its probability here is the
mean softmax probability of that type over the instance's pixels (MONAI reports the fraction of
voting pixels instead).

MONAI's Sobel kernel defaults to 5; HoVer-Net's reference code uses 21. ``sobel_kernel_size``
picks it (tests check both recover ground-truth instances).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from numpy.typing import NDArray
from scipy import ndimage as ndi
from torch import Tensor


@dataclass
class PostProcessConfig:
    """Watershed parameters (MONAI names). ``min_object_size`` in pixels."""

    sobel_kernel_size: int = 21
    marker_threshold: float = 0.4
    marker_radius: int = 2
    min_object_size: int = 10
    mask_threshold: float | None = None


@dataclass
class Instances:
    """One image's nuclei. ``inst``: ``(H, W)`` int32 ids 1..N (0 background); ``types``:
    ``(H, W)`` int32; per nucleus (row ``i`` is id ``i + 1``): ``centroid`` ``(N, 2)`` float
    (x, y), ``type`` ``(N,)`` (0: unclassified), ``prob`` ``(N,)`` mean type probability,
    ``area`` ``(N,)`` px."""

    inst: NDArray[np.int32]
    types: NDArray[np.int32]
    centroid: NDArray[np.float64] = field(default_factory=lambda: np.zeros((0, 2)))
    type: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))
    prob: NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))
    area: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))

    def __len__(self) -> int:
        return int(self.area.shape[0])


def _as_tensor(x: Tensor | NDArray[np.floating]) -> Tensor:
    return (x if isinstance(x, Tensor) else torch.from_numpy(np.asarray(x))).detach().float().cpu()


def describe(inst: NDArray[np.integer], tp_prob: Tensor | None) -> Instances:
    """Relabel ``inst`` to 1..N and measure each nucleus; ``tp_prob``: ``(T + 1, H, W)``
    softmax type probabilities (None: every nucleus type 1, probability 1)."""
    ids, dense = np.unique(inst, return_inverse=True)
    dense = dense.reshape(inst.shape).astype(np.int32)
    if ids[0] != 0:  # no background pixel at all
        dense += 1
    n = int(dense.max())
    if n == 0:
        return Instances(dense, np.zeros_like(dense))
    idx = np.arange(1, n + 1)
    area = np.bincount(dense.ravel(), minlength=n + 1)[1:].astype(np.int64)
    cy, cx = np.asarray(ndi.center_of_mass(np.ones_like(dense), dense, idx)).T
    if tp_prob is None:
        typ, prob = np.ones(n, np.int64), np.ones(n)
    else:
        p = tp_prob.numpy()
        votes = np.stack(
            [
                np.bincount(dense.ravel(), (p.argmax(0) == c).ravel(), n + 1)[1:]
                for c in range(1, p.shape[0])
            ]
        )  # (T, N) pixels voting for each nucleus type (background votes ignored)
        # MONAI / HoVer-Net: a nucleus whose pixels all vote background gets type 0
        typ = np.where(votes.sum(0) > 0, votes.argmax(0) + 1, 0).astype(np.int64)
        mean_p = np.stack([ndi.mean(p[c], dense, idx) for c in range(p.shape[0])])
        prob = mean_p[typ, np.arange(n)]
    lut = np.concatenate([[0], typ]).astype(np.int32)
    return Instances(dense, lut[dense], np.stack([cx, cy], 1), typ, prob, area)


def postprocess(
    np_logits: Tensor | NDArray[np.floating],
    hv: Tensor | NDArray[np.floating],
    tp_logits: Tensor | NDArray[np.floating] | None = None,
    cfg: PostProcessConfig | None = None,
    use_monai_types: bool = False,
) -> Instances:
    """One image's branch outputs -> :class:`Instances`.

    ``np_logits`` ``(2, H, W)``, ``hv`` ``(2, H, W)``, ``tp_logits`` ``(T + 1, H, W)`` (logits,
    softmax applied here). ``use_monai_types``: assign types with MONAI's transform (slower,
    per-instance loop; same rule, used in tests to check :func:`describe` against it).
    """
    from monai.apps.pathology.transforms.post.array import (
        HoVerNetInstanceMapPostProcessing,
        HoVerNetNuclearTypePostProcessing,
    )

    cfg = cfg or PostProcessConfig()
    npl, hvt = _as_tensor(np_logits), _as_tensor(hv)
    tp_prob = None if tp_logits is None else torch.softmax(_as_tensor(tp_logits), 0)
    if not bool((npl.argmax(0) == 1).any()) or float(hvt.amax() - hvt.amin()) == 0:
        return describe(np.zeros(npl.shape[-2:], np.int32), tp_prob)
    inst_pp = HoVerNetInstanceMapPostProcessing(
        activation="softmax",
        mask_threshold=cfg.mask_threshold,
        min_object_size=cfg.min_object_size,
        sobel_kernel_size=cfg.sobel_kernel_size,
        marker_threshold=cfg.marker_threshold,
        marker_radius=cfg.marker_radius,
    )
    try:  # MONAI's steps without its per-instance contour loop (O(N * H * W), unused here)
        mask = inst_pp.generate_watershed_mask(npl)
        border = inst_pp.generate_instance_border(mask, hvt)
        dist = inst_pp.generate_distance_map(mask, border)
        markers = inst_pp.generate_watershed_markers(mask, border)
        inst_map = inst_pp.watershed(dist, mask, markers)
    except ValueError:  # MONAI refuses constant HV / gradient maps: nothing to split
        return describe(np.zeros(npl.shape[-2:], np.int32), tp_prob)
    inst = np.asarray(inst_map).reshape(npl.shape[-2:]).astype(np.int32)
    if cfg.min_object_size > 0:
        sizes = np.bincount(inst.ravel())
        inst = np.where(sizes[inst] >= cfg.min_object_size, inst, 0)
    out = describe(inst, tp_prob)
    if use_monai_types and tp_logits is not None and len(out):
        info2 = {i: {"bounding_box": _bbox(out.inst == i)} for i in range(1, len(out) + 1)}
        typed, _ = HoVerNetNuclearTypePostProcessing(activation="softmax", return_type_map=False)(
            _as_tensor(tp_logits), info2, torch.from_numpy(out.inst[None])
        )
        out.type = np.array([typed[i]["type"] for i in range(1, len(out) + 1)], np.int64)
        lut = np.concatenate([[0], out.type]).astype(np.int32)
        out.types = lut[out.inst]
    return out


def _bbox(mask: NDArray[np.bool_]) -> NDArray[np.int64]:
    rows, cols = np.nonzero(mask)
    return np.array([[rows.min(), rows.max() + 1, cols.min(), cols.max() + 1]])
