"""Metrics: one JSON line per record in ``metrics.jsonl``, mirrored to TensorBoard when the
``tensorboard`` package is installed (it is optional)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from tiling.atomic import atomic_write


class MetricsLogger:
    """Append-only JSONL metrics (and TensorBoard scalars); a no-op when ``enabled`` is False
    (non-zero DDP ranks)."""

    def __init__(self, out_dir: str | Path, enabled: bool = True, tensorboard: bool = True) -> None:
        self.enabled = enabled
        self.path = Path(out_dir) / "metrics.jsonl"
        self.tb: Any = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(Path(out_dir) / "tensorboard"))
            except ImportError:  # tensorboard not installed
                self.tb = None

    def log(self, step: int, kind: str, values: dict[str, Any]) -> None:
        """One record ``{"step", "kind", "time", **values}``; non-finite floats become strings
        (JSON has no NaN)."""
        if not self.enabled:
            return
        clean: dict[str, Any] = {}
        for k, v in values.items():
            if isinstance(v, float) and not math.isfinite(v):
                clean[k] = str(v)
            else:
                clean[k] = v
        record = {"step": step, "kind": kind, "time": round(time.time(), 3), **clean}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, int | float) and math.isfinite(v):
                    self.tb.add_scalar(f"{kind}/{k}", v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a ``metrics.jsonl`` file."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def truncate_metrics(path: str | Path, step: int) -> None:
    """Drop records with ``step >= step`` (they are replayed after a resume from ``step``)."""
    path = Path(path)
    if not path.is_file():
        return
    keep = [r for r in read_metrics(path) if int(r.get("step", 0)) < step]
    atomic_write(path, "".join(json.dumps(r) + "\n" for r in keep))
