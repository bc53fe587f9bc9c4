"""An infinite, resumable, optionally slide-balanced sampler, sharded across DDP ranks."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch


class ResumableSampler(torch.utils.data.Sampler[int]):
    """Yields dataset indices forever, epoch after epoch, and can restart mid-epoch.

    Epoch ``e`` is a global order of ``L = ceil(N / world) * world`` indices drawn from a
    generator seeded by ``(seed, e)``: a permutation (wrapped to length ``L``), or, with
    ``balance_slides``, ``L`` draws with replacement where every slide has the same total
    probability (tile weight ``1 / tiles in its slide``). Rank ``r`` takes ``order[r::world]``,
    so ranks see disjoint shards of the same global order (like ``DistributedSampler``).

    Resume: ``load_state_dict({"consumed": n})`` where ``n`` is the number of samples the
    *whole job* consumed; the next sample is the one that would have come after them. The
    training loop (not the sampler, which DataLoader workers read ahead of) counts ``n``.

    ``slide_index``: ``(N,)`` int slide number of each dataset item.
    """

    def __init__(
        self,
        slide_index: np.ndarray,
        seed: int = 0,
        balance_slides: bool = False,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} not in [0, {num_replicas})")
        self.slide_index = np.asarray(slide_index, dtype=np.int64)
        self.n = len(self.slide_index)
        if self.n == 0:
            raise ValueError("cannot sample from an empty dataset")
        self.seed = seed
        self.balance_slides = balance_slides
        self.num_replicas = num_replicas
        self.rank = rank
        self.per_rank = -(-self.n // num_replicas)  # samples per rank per epoch
        self.start = 0  # samples of this rank already consumed
        counts = np.bincount(self.slide_index)
        self.weights = torch.from_numpy(1.0 / counts[self.slide_index])

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """The global order ``(per_rank * world,)`` int64 of epoch ``epoch``."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        total = self.per_rank * self.num_replicas
        if self.balance_slides:
            return torch.multinomial(self.weights, total, replacement=True, generator=g)
        perm = torch.randperm(self.n, generator=g)
        reps = -(-total // self.n)
        return perm.repeat(reps)[:total]

    def __iter__(self) -> Iterator[int]:
        epoch, offset = divmod(self.start, self.per_rank)
        while True:
            mine = self.epoch_order(epoch)[self.rank :: self.num_replicas]
            yield from mine[offset:].tolist()
            epoch, offset = epoch + 1, 0

    def __len__(self) -> int:
        """Samples of this rank per epoch (the stream itself never ends)."""
        return self.per_rank

    def state_dict(self, consumed: int) -> dict[str, Any]:
        """State after the job consumed ``consumed`` samples in total (all ranks)."""
        return {
            "consumed": int(consumed),
            "seed": self.seed,
            "balance_slides": self.balance_slides,
            "n": self.n,
            "num_replicas": self.num_replicas,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["n"]) != self.n:
            raise ValueError(
                f"sampler state is for a dataset of {state['n']} tiles, this one has {self.n}"
            )
        self.seed = int(state["seed"])
        self.balance_slides = bool(state["balance_slides"])
        self.start = int(state["consumed"]) // self.num_replicas
