"""Two data streams in one training step (labelled + unlabelled, S4L-style).

:class:`PairedLoader` zips two loaders into ``(batch_a, batch_b)`` pairs (the loop's batch size is
the first one's); :class:`PairedSampler` checkpoints both samplers from the loop's consumed count,
so a resumed run continues both streams exactly. Each sampler must restart from a consumed count
(``state_dict(consumed)`` / ``load_state_dict``), as :class:`pathssl.data.ResumableSampler` does;
the second stream is restarted when it runs out before the first.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any


class PairedLoader:
    """``(batch from first, batch from second)`` per step."""

    def __init__(self, first: Any, second: Any) -> None:
        self.first = first
        self.second = second

    @property
    def batch_size(self) -> int | None:
        size: int | None = self.first.batch_size
        return size

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        second: Iterable[Any] = self.second
        it_b = iter(second)
        for a in self.first:
            try:
                b = next(it_b)
            except StopIteration:
                it_b = iter(second)
                b = next(it_b)
            yield a, b


class PairedSampler:
    """The two streams' samplers as one resumable order. The loop counts samples of the first
    stream (``step * first_batch * world_size``); the second has consumed
    ``step * second_batch * world_size`` of its own."""

    def __init__(
        self, first: Any, second: Any, first_batch: int, second_batch: int, world_size: int = 1
    ) -> None:
        self.first = first
        self.second = second
        self.first_batch = first_batch * world_size
        self.second_batch = second_batch * world_size

    def state_dict(self, consumed: int) -> dict[str, Any]:
        steps = consumed // self.first_batch
        return {
            "first": self.first.state_dict(consumed),
            "second": self.second.state_dict(steps * self.second_batch),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.first.load_state_dict(state["first"])
        self.second.load_state_dict(state["second"])
