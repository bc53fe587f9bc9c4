"""``benchmarks/bench_pretrain.py --smoke`` runs the full pipeline and the bare backbone on the
CPU (the real numbers need a GPU)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_pretrain_smoke(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "bench_pretrain.py"), "--smoke",
           "--cases", "simclr_resnet18,mae_vit_tiny", "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert set(res) == {"simclr_resnet18", "mae_vit_tiny"}
    for r in res.values():
        assert r["pipeline_tiles_per_s"] > 0 and r["bare_backbone_images_per_s"] > 0
