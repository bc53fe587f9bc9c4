"""PIRL: Misra & van der Maaten, "Self-Supervised Learning of Pretext-Invariant Representations",
CVPR 2020, arXiv:1912.01991. The NCE loss with a memory bank follows Wu et al., "Unsupervised
Feature Learning via Non-Parametric Instance Discrimination", CVPR 2018 (the paper's Eq. 3-5).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pathssl.models.backbones import Backbone
from pathssl.ssl import dist
from pathssl.ssl.base import METHODS, SSLMethod, collapse_std
from pathssl.ssl.jigsaw import JigsawTiles
from pathssl.ssl.patches import patch_multiple


def nce_memory_loss(
    query: Tensor,
    positive: Tensor,
    negatives: Tensor,
    temperature: float,
    log_z: Tensor,
    n: int,
    keep: Tensor | None = None,
) -> Tensor:
    """The NCE loss of PIRL's Eq. 4 against memory-bank entries, mean over the batch.

    ``query`` ``(B, D)``, ``positive`` ``(B, D)`` (the image's own entry ``m_I``), ``negatives``
    ``(K, D)``, all L2-normalised; ``log_z``: log of the partition estimate Z; ``n``: entries in
    the bank (noise distribution uniform, ``P_n = 1 / n``). With ``x = exp(q.m / T) / Z`` and
    ``c = K / n``: ``h = x / (x + c)``, loss ``= -log h(q, m_I) - sum_k log(1 - h(q, m_k))``,
    computed in log space (float32); ``keep`` ``(B, K)`` bool leaves negatives out of the sum
    (an image's own entry drawn as its negative)."""
    q = query.float()
    log_c = math.log(negatives.shape[0] / n)
    pos = (q * positive.float()).sum(-1) / temperature - log_z  # (B,) log x
    neg = q @ negatives.float().t() / temperature - log_z  # (B, K)
    neg_terms = F.softplus(neg - log_c)
    if keep is not None:
        neg_terms = neg_terms * keep
    return (F.softplus(log_c - pos) + neg_terms.sum(-1)).mean()


@METHODS.register("pirl")
class PIRL(SSLMethod):
    """PIRL with the jigsaw pretext: view 0 ``(B, 3, H, W)`` -> backbone -> linear ->
    ``f(v_I)`` ``(B, D)``; view 1 cut into 9 shuffled, jittered, per-tile normalised tiles
    (:class:`~pathssl.ssl.jigsaw.JigsawTiles`, shuffled by a permutation drawn from its set of
    ``num_permutations``) ``(B, 9, 3, p, p)`` -> the same backbone per tile ``(9B, E)`` ->
    linear to ``D`` per tile -> concatenated in the shuffled order ``(B, 9D)`` -> linear ->
    ``g(v_It)`` ``(B, D)``; both L2-normalised.

    Memory bank ``(bank_size, D)`` (buffer: checkpointed): entry ``m_i`` is the running average
    of ``f(v_I)`` of dataset image ``i``, ``m_i <- normalise(bank_momentum m_i + (1 -
    bank_momentum) f(v_I))`` after each applied step (mixing 0.5 in the paper), with the whole
    global batch's indices and embeddings (all ranks). Loss (Eq. 5):
    ``loss_weight * NCE(m_I, g(v_It)) + (1 - loss_weight) * NCE(m_I, f(v_I))``
    (:func:`nce_memory_loss`; lambda 0.5, temperature 0.07), against ``num_negatives`` entries
    drawn uniformly from the bank (with replacement; one draw per step, shared by the batch and
    by both terms, where the reference draws per image; an image's own entry drawn among them
    is left out of its sum). The partition constant Z is estimated
    once, at the first training step, as in Wu et al.: ``bank_size`` times the mean of
    ``exp(f.m / T)`` over the positives and negatives (all ranks); kept as the buffer
    ``log_partition`` (NaN until then).

    ``bank_size`` must exceed every dataset index (the paper keeps one entry per training
    image: set it to the number of tiles). Called as ``forward(views, index=(B,) long)``;
    views: 2 ``(B, 3, H, W)`` (the ``pirl`` recipe).
    """

    needs_index = True
    memory: Tensor
    log_partition: Tensor

    def __init__(
        self,
        backbone: Backbone,
        proj_dim: int = 128,
        bank_size: int = 65536,
        num_negatives: int = 32000,
        temperature: float = 0.07,
        bank_momentum: float = 0.5,
        loss_weight: float = 0.5,
        num_permutations: int = 1000,
        permutation_seed: int = 0,
        grid: int = 3,
        patch_fraction: float = 64 / 75,
        jitter_fraction: float = 0.07,
    ) -> None:
        super().__init__(backbone)
        if bank_size < 1 or num_negatives < 1:
            raise ValueError(
                f"bank_size and num_negatives must be >= 1: {bank_size}, {num_negatives}"
            )
        self.n_global_views = 2
        self.tiles = JigsawTiles(
            num_permutations,
            grid,
            patch_fraction,
            jitter_fraction,
            permutation_seed,
            multiple=patch_multiple(backbone),
        )
        self.image_head = nn.Linear(self.embed_dim, proj_dim)
        self.tile_head = nn.Linear(self.embed_dim, proj_dim)
        self.jigsaw_head = nn.Linear(self.tiles.n_tiles * proj_dim, proj_dim)
        self.num_negatives = num_negatives
        self.temperature = temperature
        self.bank_momentum = bank_momentum
        self.loss_weight = loss_weight
        self.register_buffer("memory", F.normalize(torch.randn(bank_size, proj_dim), dim=1))
        self.register_buffer("log_partition", torch.full((), math.nan))
        self._pending: list[tuple[Tensor, Tensor]] = []

    def embed_image(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(B, 3, H, W)`` -> (backbone features ``(B, E)``, ``f(v_I)`` ``(B, D)`` unit)."""
        h = self.backbone(x)
        return h, F.normalize(self.image_head(h), dim=1)

    def embed_tiles(self, tiles: Tensor) -> Tensor:
        """Shuffled tiles ``(B, n, 3, p, p)`` -> ``g(v_It)`` ``(B, D)`` unit."""
        b, n = tiles.shape[:2]
        t = self.tile_head(self.backbone(tiles.flatten(0, 1)))  # (B n, D)
        return F.normalize(self.jigsaw_head(t.reshape(b, -1)), dim=1)

    @torch.no_grad()
    def partition(self, f: Tensor, positive: Tensor, negatives: Tensor) -> Tensor:
        """log Z: the stored estimate, else (first step) ``log(n * mean exp(s / T))`` over the
        scores of ``f`` with its positives and the negatives, averaged over ranks; stored in
        training."""
        if not bool(torch.isnan(self.log_partition)):
            return self.log_partition
        f = f.float()
        scores = torch.cat([(f * positive).sum(-1, keepdim=True), f @ negatives.t()], 1)
        mean_exp = torch.exp(scores / self.temperature).mean()
        log_z = torch.log(dist.all_reduce_mean(mean_exp)) + math.log(self.memory.shape[0])
        if self.training:
            self.log_partition.copy_(log_z)
        return log_z

    def forward(self, views: list[Tensor], index: Tensor | None = None) -> dict[str, Tensor]:
        self.check_views(views, 2)
        if index is None:
            raise ValueError("PIRL needs each image's dataset index: forward(views, index=...)")
        n = self.memory.shape[0]
        if int(index.max()) >= n or int(index.min()) < 0:
            raise ValueError(
                f"PIRL: dataset index {int(index.max())} outside the memory bank of {n} entries: "
                "set method.params.bank_size to at least the number of tiles"
            )
        h, f = self.embed_image(views[0])
        tiles, _ = self.tiles(views[1])
        g = self.embed_tiles(tiles)
        neg_idx = torch.randint(n, (self.num_negatives,), device=f.device)
        with torch.no_grad():
            positive = self.memory[index].float()
            negatives = self.memory[neg_idx].float()
            log_z = self.partition(f.detach(), positive, negatives)
        keep = neg_idx[None, :] != index[:, None]  # (B, K): never an image's own entry
        lam, t = self.loss_weight, self.temperature
        loss_t = nce_memory_loss(g, positive, negatives, t, log_z, n, keep)
        loss_i = nce_memory_loss(f, positive, negatives, t, log_z, n, keep)
        if self.training:  # replaced, not appended: a step the loop skips updates nothing
            self._pending = [(dist.gather_no_grad(index), dist.gather_no_grad(f.detach().float()))]
        return {
            "loss": lam * loss_t + (1 - lam) * loss_i,
            "loss_jigsaw": loss_t.detach(),
            "loss_image": loss_i.detach(),
            "embed_std": collapse_std(h),
        }

    @torch.no_grad()
    def update_memory(self, index: Tensor, embeddings: Tensor) -> None:
        """``memory[index] = normalise(m * memory[index] + (1 - m) * embeddings)``, ``index``
        ``(N,)``, ``embeddings`` ``(N, D)`` unit (``m`` = ``bank_momentum``)."""
        m = self.bank_momentum
        mixed = m * self.memory[index] + (1 - m) * embeddings.to(self.memory.dtype)
        self.memory.index_copy_(0, index, F.normalize(mixed, dim=1))

    def on_step_end(self, step: int, max_steps: int) -> None:
        super().on_step_end(step, max_steps)
        for index, embeddings in self._pending:
            self.update_memory(index, embeddings)
        self._pending.clear()
