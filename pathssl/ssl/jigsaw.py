"""Jigsaw puzzles: Noroozi & Favaro, "Unsupervised Learning of Visual Representations by Solving
Jigsaw Puzzles", ECCV 2016, arXiv:1603.09246; the permutation-set size as a hardness knob:
Goyal, Mahajan, Gupta, Misra, "Scaling and Benchmarking Self-Supervised Visual Representation
Learning", ICCV 2019, arXiv:1905.01235."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pathssl.models.backbones import Backbone
from pathssl.ssl.base import METHODS, SSLMethod, collapse_std
from pathssl.ssl.heads import MLPHead
from pathssl.ssl.patches import grid_tiles, patch_multiple
from pathssl.ssl.permutations import maxmin_hamming_permutations


class JigsawTiles(nn.Module):
    """The jigsaw input: a view cut into ``grid x grid`` jittered, per-tile normalised tiles
    (:func:`pathssl.ssl.patches.grid_tiles`), shuffled by one of the ``num_permutations``
    permutations of the set chosen by greedy maximal minimum Hamming distance from
    ``permutation_seed`` (:func:`maxmin_hamming_permutations`). The set is the buffer
    ``permutations`` ``(P, grid * grid)``: saved in the checkpoint and restored with it.

    ``forward(x)``: ``(B, C, H, W)`` -> shuffled tiles ``(B, grid * grid, C, p, p)`` (position
    ``i`` holds tile ``permutations[y][i]``) and the permutation indices ``y`` ``(B,)``, drawn
    from torch's global generator. ``multiple``: tile sides are multiples of it (a ViT's patch).
    """

    permutations: Tensor

    def __init__(
        self,
        num_permutations: int,
        grid: int,
        patch_fraction: float,
        jitter_fraction: float,
        permutation_seed: int,
        multiple: int = 1,
    ) -> None:
        super().__init__()
        self.grid = grid
        self.patch_fraction = patch_fraction
        self.jitter_fraction = jitter_fraction
        self.multiple = multiple
        perms = maxmin_hamming_permutations(num_permutations, grid * grid, permutation_seed)
        self.register_buffer("permutations", torch.from_numpy(perms))

    @property
    def n_tiles(self) -> int:
        return self.grid * self.grid

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        tiles = grid_tiles(x, self.grid, self.patch_fraction, self.jitter_fraction, self.multiple)
        y = torch.randint(len(self.permutations), (x.shape[0],), device=x.device)
        order = self.permutations.to(x.device)[y]  # (B, G*G)
        idx = order.view(*order.shape, 1, 1, 1).expand_as(tiles)
        return torch.gather(tiles, 1, idx), y


@METHODS.register("jigsaw")
class Jigsaw(SSLMethod):
    """Jigsaw: tiles ``(B, 9, 3, p, p)`` (:class:`JigsawTiles`) -> shared backbone per tile
    ``(9B, E)`` -> per-tile ``Linear + ReLU`` to ``tile_dim`` -> concatenated ``(B, 9 tile_dim)``
    (late fusion in the permuted order) -> 2-layer MLP (``hidden_dim``) -> ``(B, P)`` logits ->
    cross-entropy with the permutation index.

    Geometry (Noroozi & Favaro: 64 px tiles in 75 px cells of a 225 px crop):
    ``patch_fraction`` is the tile side over the cell side, ``jitter_fraction`` the largest shift
    per axis over the cell side (gaps between neighbours 0 .. 2 x slack).

    Views: 1 ``(B, 3, H, W)``; the backbone sees tiles of side ``p``.
    """

    def __init__(
        self,
        backbone: Backbone,
        num_permutations: int = 1000,
        permutation_seed: int = 0,
        grid: int = 3,
        patch_fraction: float = 64 / 75,
        jitter_fraction: float = 0.07,
        tile_dim: int = 512,
        hidden_dim: int = 4096,
    ) -> None:
        super().__init__(backbone)
        self.n_global_views = 1
        self.tiles = JigsawTiles(
            num_permutations,
            grid,
            patch_fraction,
            jitter_fraction,
            permutation_seed,
            multiple=patch_multiple(backbone),
        )
        self.tile_fc = nn.Sequential(nn.Linear(self.embed_dim, tile_dim), nn.ReLU(inplace=True))
        n = self.tiles.n_tiles
        self.classifier = MLPHead(n * tile_dim, hidden_dim, num_permutations, num_layers=2)

    def forward(self, views: list[Tensor]) -> dict[str, Tensor]:
        self.check_views(views, 1)
        tiles, y = self.tiles(views[0])
        b, n = tiles.shape[:2]
        h = self.backbone(tiles.flatten(0, 1))  # (B*n, E)
        logits = self.classifier(self.tile_fc(h).reshape(b, -1))
        loss = F.cross_entropy(logits, y)
        acc = (logits.detach().argmax(1) == y).float().mean()
        return {"loss": loss, "accuracy": acc, "embed_std": collapse_std(h)}
