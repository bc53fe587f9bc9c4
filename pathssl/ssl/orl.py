"""ORL, stage 3: Xie et al., "Unsupervised Object-Level Representation Learning from Scene
Images", NeurIPS 2021, arXiv:2106.11952.

ORL runs in three stages. Stage 1 is image-level BYOL (the ``byol`` method). Stage 2
(:mod:`pathssl.orl`, ``pathssl orl proposals`` / ``pathssl orl pairs``) finds object proposals in
every tile (nuclei, nuclear clusters, selective-search regions), retrieves each tile's image-level
nearest neighbours with the stage-1 encoder and pairs RoIs across neighbours by embedding
similarity, keeping the top-ranked pairs: the *pairs file* this module reads (:class:`PairsFile`).
Stage 3 (:class:`ORL`, registered as ``orl``) is BYOL on three kinds of pairs, each with its own
predictor (the paper's Eq. 1-3 and its released code):

- image-level: the two global views of a tile (``views[0]``, ``views[1]``);
- intra-RoI: a proposal of the tile and a jittered copy of the same box (centre shift
  U(-0.5, 0.5) of its side, area x U(0.5, 2), log-uniform aspect in (0.5, 2), IoU > 0.5 with the
  box, inside the tile; else the box itself);
- inter-RoI: a stage-2 pair, one box in the tile and its match in a neighbour tile.

RoI crops are made with ``torchvision.ops.roi_align`` (bilinear, adaptive sampling: a large box is
averaged, not aliased) from the stored tiles to ``patch_size`` px, then each crop of a pair gets one
of BYOL's two patch augmentations (flips/rotations, HED and colour jitter; blur p = 1 / p = 0.1 with
solarisation p = 0.2), as the paper's patch pipelines (no crop). Random draws use the global torch
generator, which the training loop checkpoints: resume is exact.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import roi_align

from pathssl.augment.torch_views import BatchView
from pathssl.augment.view_spec import ViewSpec
from pathssl.models.backbones import Backbone
from pathssl.ssl.base import METHODS, collapse_std
from pathssl.ssl.byol import BYOL
from pathssl.ssl.heads import MLPHead
from pathssl.ssl.losses import byol_loss
from tiling.store import TileStore, open_store

#: version of the pairs file (``pairs.npz``) written by :func:`pathssl.orl.pairs.build_pairs`
PAIRS_FORMAT = 1
#: arrays every pairs file holds (see :class:`PairsFile`)
PAIRS_ARRAYS = (
    "format_version",
    "info",
    "stores",
    "store_index",
    "tile_index",
    "box_start",
    "boxes",
    "box_kind",
    "pair_start",
    "pair_box",
    "pair_knn",
    "pair_knn_box",
    "pair_score",
    "knn",
    "knn_score",
)


class PairsFile:
    """Stage 2's output (``pairs.npz``), indexed like the training dataset (a
    :class:`pathssl.data.TileDataset` over ``stores`` with the QC filters in ``info``).

    Tile ``i`` of ``N``: ``store_index[i]``, ``tile_index[i]`` (its store and tile number);
    proposals ``boxes[box_start[i]:box_start[i + 1]]`` ``(A, 4)`` float32 ``x0, y0, x1, y1`` in
    tile pixels (``box_kind``: :data:`pathssl.orl.proposals.KINDS` index); RoI pairs
    ``pair_start[i]:pair_start[i + 1]`` of ``pair_box`` (in tile i), ``pair_knn`` (the neighbour
    tile j), ``pair_knn_box`` (in tile j), ``pair_score`` (cosine similarity); ``knn`` ``(N, K)``
    image neighbours and ``knn_score``. ``info``: JSON (checkpoint, filters, parameters)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        fix = "run `pathssl orl pairs` and set method.params.pairs to its pairs.npz"
        if not self.path.is_file():
            raise FileNotFoundError(f"ORL pairs file {self.path} not found: {fix}")
        with np.load(self.path, allow_pickle=False) as z:
            missing = [k for k in PAIRS_ARRAYS if k not in z.files]
            if missing or int(z["format_version"]) != PAIRS_FORMAT:
                raise ValueError(f"{self.path} is not an ORL pairs file (format {PAIRS_FORMAT})")
            arrays = {k: np.asarray(z[k]) for k in PAIRS_ARRAYS}
        self.info: dict[str, Any] = json.loads(str(arrays.pop("info")))
        self.stores = [str(s) for s in arrays.pop("stores")]
        self.a = arrays
        self.n = int(len(arrays["store_index"]))
        self._open: dict[int, TileStore] = {}
        for k in range(len(self.stores)):  # a missing or damaged store: an error now
            self.store(k)

    def store(self, k: int) -> TileStore:
        if k not in self._open:
            self._open[k] = open_store(self.stores[k])
        return self._open[k]

    def tiles(self, index: np.ndarray) -> Tensor:
        """Dataset tiles ``index`` ``(B,)`` -> ``(B, 3, S, S)`` uint8 (read from the stores)."""
        s, t = self.a["store_index"], self.a["tile_index"]
        out = np.stack([self.store(int(s[i]))[int(t[i])] for i in index])
        return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()

    def check_index(self, index: np.ndarray) -> None:
        if len(index) and (index.min() < 0 or index.max() >= self.n):
            raise IndexError(
                f"tile index {int(index.max())} beyond the {self.n} tiles of {self.path}: "
                "data.stores and the QC filters must be those `pathssl orl pairs` used"
            )

    def draw(self, index: np.ndarray) -> tuple[Tensor, Tensor, np.ndarray, Tensor]:
        """One random proposal and one random RoI pair per tile (global torch generator):
        ``(box (B, 4), pair box (B, 4), neighbour tile (B,), neighbour box (B, 4))``."""
        a = self.a
        u = torch.rand(2, len(index), dtype=torch.float64).numpy()

        def pick(start: np.ndarray, v: np.ndarray) -> np.ndarray:
            lo, hi = start[index], start[index + 1]
            if np.any(hi <= lo):
                raise ValueError(f"{self.path}: a tile without proposals or pairs")
            return np.asarray(lo + np.minimum(np.floor(v * (hi - lo)), hi - lo - 1), np.int64)

        b, p = pick(a["box_start"], u[0]), pick(a["pair_start"], u[1])
        box = torch.from_numpy(a["boxes"][b].astype(np.float32))
        pair_box = torch.from_numpy(a["pair_box"][p].astype(np.float32))
        knn_box = torch.from_numpy(a["pair_knn_box"][p].astype(np.float32))
        return box, pair_box, a["pair_knn"][p].astype(np.int64), knn_box


def box_iou_pairwise(a: Tensor, b: Tensor) -> Tensor:
    """IoU of boxes ``a[..., 4]`` and ``b[..., 4]`` (``x0, y0, x1, y1``), elementwise."""
    iw = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0])).clamp_min(0)
    ih = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1])).clamp_min(0)
    inter = iw * ih
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return inter / (area_a + area_b - inter).clamp_min(1e-9)


def jitter_boxes(
    boxes: Tensor,
    height: int,
    width: int,
    shift: tuple[float, float] = (-0.5, 0.5),
    scale: tuple[float, float] = (0.5, 2.0),
    ratio: tuple[float, float] = (0.5, 2.0),
    iou_thr: float = 0.5,
    attempts: int = 50,
) -> Tensor:
    """ORL's intra-RoI box augmentation: for each box ``(B, 4)`` the first of ``attempts``
    candidates (centre moved by U(``shift``) x its width/height, area x U(``scale``), aspect
    log-uniform in ``ratio``) that lies inside the ``height x width`` tile with IoU >
    ``iou_thr`` to the box; the box itself when none does. Draws ``(B, attempts, 4)`` uniforms
    from the global torch generator."""
    u = torch.rand(boxes.shape[0], attempts, 4, dtype=torch.float64)
    b = boxes.double()[:, None]
    w, h = b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]
    area = w * h * (scale[0] + u[..., 0] * (scale[1] - scale[0]))
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    r = torch.exp(lo + u[..., 1] * (hi - lo))
    nw, nh = torch.sqrt(area * r), torch.sqrt(area / r)
    cx = (b[..., 0] + b[..., 2]) / 2 + (shift[0] + u[..., 2] * (shift[1] - shift[0])) * w
    cy = (b[..., 1] + b[..., 3]) / 2 + (shift[0] + u[..., 3] * (shift[1] - shift[0])) * h
    cand = torch.stack([cx - nw / 2, cy - nh / 2, cx + nw / 2, cy + nh / 2], -1)
    inside = (cand[..., 0] >= 0) & (cand[..., 1] >= 0)
    inside &= (cand[..., 2] <= width) & (cand[..., 3] <= height)
    ok = inside & (box_iou_pairwise(cand, b.expand_as(cand)) > iou_thr)
    first = ok.int().argmax(1)
    chosen = cand[torch.arange(len(first)), first]
    return torch.where(ok.any(1)[:, None], chosen, boxes.double()).to(boxes.dtype)


def crop_rois(tiles: Tensor, which: Tensor, boxes: Tensor, size: int) -> Tensor:
    """RoI crops: ``tiles`` ``(M, 3, S, S)`` uint8, ``which`` ``(K,)`` the tile of each box,
    ``boxes`` ``(K, 4)`` ``x0, y0, x1, y1`` -> ``(K, 3, size, size)`` uint8
    (``torchvision.ops.roi_align``, pixel centres aligned, adaptive sampling)."""
    rois = torch.cat([which[:, None].to(boxes), boxes], 1).to(tiles.device, torch.float32)
    out = roi_align(tiles.float(), rois, (size, size), 1.0, -1, aligned=True)
    return out.round().clamp(0, 255).to(torch.uint8)


def pair_loss(p: Tensor, z: Tensor) -> Tensor:
    """Symmetrised BYOL loss of a pair: ``p`` online predictions ``(2B, D)`` of views 1 then 2,
    ``z`` target projections ``(2B, D)`` in the same order: ``L(p1, z2) + L(p2, z1)``."""
    p1, p2 = p.chunk(2)
    z1, z2 = z.chunk(2)
    return byol_loss(p1, z2) + byol_loss(p2, z1)


@METHODS.register("orl")
class ORL(BYOL):
    """ORL stage 3 (module docstring): BYOL's online network (backbone ``(B, E)`` -> projector
    ``(B, D)``) and EMA target, with three predictors ``(B, D)``: ``predictor`` (image pairs,
    named as BYOL's so ``train.init_from`` a stage-1 checkpoint fills it), ``intra_predictor``
    and ``inter_predictor``. Loss: ``global_weight * L_image + intra_weight * L_intra +
    inter_weight * L_inter``, each a symmetrised ``2 - 2 cos``.

    ``pairs``: stage 2's ``pairs.npz``; the method reads the tiles it crops from the stores that
    file names. Without one (None) only the image-level term is trained (BYOL) and a warning
    says so. Views: 2 global ``(B, 3, H, W)``; ``index`` ``(B,)``: the tiles' dataset indices."""

    needs_index = True
    default_recipe = "byol"  # the paper's image views are BYOL's

    def __init__(
        self,
        backbone: Backbone,
        pairs: str | None = None,
        proj_hidden_dim: int = 4096,
        proj_dim: int = 256,
        momentum: float = 0.99,
        patch_size: int = 96,
        global_weight: float = 1.0,
        intra_weight: float = 1.0,
        inter_weight: float = 1.0,
    ) -> None:
        super().__init__(backbone, proj_hidden_dim, proj_dim, momentum)
        self.intra_predictor = MLPHead(proj_dim, proj_hidden_dim, proj_dim, num_layers=2)
        self.inter_predictor = MLPHead(proj_dim, proj_hidden_dim, proj_dim, num_layers=2)
        self.weights = (global_weight, intra_weight, inter_weight)
        self.patch_size = patch_size
        self.pairs = PairsFile(pairs) if pairs else None
        if self.pairs is None:
            warnings.warn(
                "orl without method.params.pairs trains only the image-level term (BYOL): run "
                "`pathssl orl pairs` for the object-level pairs",
                stacklevel=2,
            )
        view = ViewSpec(size=patch_size, scale=(1.0, 1.0), ratio=(1.0, 1.0))
        # BYOL's two augmentations without the crop; a tuple, not submodules: they hold no state
        self._patch_views = (
            BatchView(replace(view, blur_p=1.0)),
            BatchView(replace(view, blur_p=0.1, solarize_p=0.2)),
        )

    def object_views(self, index: Tensor) -> tuple[Tensor, Tensor]:
        """The RoI crops of tiles ``index`` ``(B,)``, augmented and normalised like the views:
        ``(intra (2B, 3, P, P), inter (2B, 3, P, P))``, view 1 of every pair then view 2."""
        assert self.pairs is not None
        idx = index.detach().cpu().numpy().astype(np.int64)
        self.pairs.check_index(idx)
        box, pair_box, knn, knn_box = self.pairs.draw(idx)
        tiles = self.pairs.tiles(np.concatenate([idx, knn])).to(self.input_mean.device)
        n, s = len(idx), tiles.shape[-1]
        jittered = jitter_boxes(box, s, s)
        own, other = torch.arange(n), torch.arange(n, 2 * n)
        which = torch.cat([own, own, own, other])
        crops = crop_rois(
            tiles, which, torch.cat([box, jittered, pair_box, knn_box]), self.patch_size
        )
        i1, i2, k1, k2 = crops.chunk(4)
        v1, v2 = self._patch_views
        first, second = v1(torch.cat([i1, k1])), v2(torch.cat([i2, k2]))
        first = (first - self.input_mean) / self.input_std
        second = (second - self.input_mean) / self.input_std
        (a1, b1), (a2, b2) = first.chunk(2), second.chunk(2)
        return torch.cat([a1, a2]), torch.cat([b1, b2])

    def forward(self, views: list[Tensor], index: Tensor | None = None) -> dict[str, Tensor]:
        self.check_views(views, 2)
        objects = None
        if self.pairs is not None:
            if index is None:
                raise ValueError("orl with a pairs file needs each tile's dataset index")
            objects = self.object_views(index)
        x = torch.cat(views[:2])
        h = self.backbone(x)
        with torch.no_grad():
            z = self.target(x)
        loss_global = pair_loss(self.predictor(self.projector(h)), z)
        out = {"embed_std": collapse_std(h), "loss_global": loss_global.detach()}
        loss = self.weights[0] * loss_global
        if objects is not None:
            intra, inter = objects
            patches = torch.cat([intra, inter]).to(x.dtype)
            g = self.projector(self.backbone(patches))
            with torch.no_grad():
                zi, zk = self.target(patches).chunk(2)
            gi, gk = g.chunk(2)
            loss_intra = pair_loss(self.intra_predictor(gi), zi)
            loss_inter = pair_loss(self.inter_predictor(gk), zk)
            loss = loss + self.weights[1] * loss_intra + self.weights[2] * loss_inter
            out.update(loss_intra=loss_intra.detach(), loss_inter=loss_inter.detach())
        return {"loss": loss, **out}
