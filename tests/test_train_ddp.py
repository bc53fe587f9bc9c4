"""DDP through the real loop: ``torchrun --nproc_per_node 2`` (gloo, CPU) trains, shards the
data across ranks, writes one checkpoint, and resumes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_train_methods import tiny_overrides

from pathssl.train import load_checkpoint
from pathssl.train.logger import read_metrics


@pytest.fixture(scope="module")
def store(cmu_slide: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiling import tile_slides

    out = tmp_path_factory.mktemp("tiles")
    tile_slides([cmu_slide], out, mpp=0.5, size=224, progress=False, report=False)
    return out


@pytest.mark.slow
def test_two_process_ddp_run(store: Path, tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("{}\n")
    out = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "pathssl.cli", "pretrain", str(config),
        *tiny_overrides("simclr", store, out, steps=3),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["step"] == 3
    assert len(ckpt["rng"]) == 2  # one RNG state per rank
    assert ckpt["sampler"]["consumed"] == 3 * 4 * 2  # global batch = 2 ranks x 4
    steps = [r["step"] for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "train"]
    assert steps == [1, 2, 3]  # rank 0 logs alone
    assert all(torch.isfinite(v).all() for v in ckpt["trunk"].values() if v.is_floating_point())
