"""Exact resume: a ``pathssl pretrain`` process killed with SIGKILL after its first checkpoint,
then rerun with the same command, ends with bitwise the same weights, buffers and optimiser
state as an uninterrupted run (CPU, num_workers=0)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_train_methods import tiny_overrides

from pathssl.train import load_checkpoint
from pathssl.train.logger import read_metrics

STEPS = 10


@pytest.fixture(scope="module")
def store(cmu_slide: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiling import tile_slides

    out = tmp_path_factory.mktemp("tiles")
    tile_slides([cmu_slide], out, mpp=0.5, size=224, progress=False, report=False)
    return out


def pretrain_cmd(store: Path, out: Path) -> list[str]:
    ov = tiny_overrides("moco_v2", store, out, steps=STEPS)
    ov = [o for o in ov if not o.startswith("train.ckpt_every")] + ["train.ckpt_every=2"]
    config = out.parent / "empty.yaml"
    config.write_text("{}\n")
    return [sys.executable, "-m", "pathssl.cli", "pretrain", str(config), *ov]


def run_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


def test_resume_after_kill_is_bitwise_exact(store: Path, tmp_path: Path) -> None:
    ref_dir, kill_dir = tmp_path / "ref", tmp_path / "killed"
    ref = subprocess.run(
        pretrain_cmd(store, ref_dir), env=run_env(), capture_output=True, text=True, timeout=300
    )
    assert ref.returncode == 0, ref.stderr[-2000:]

    proc = subprocess.Popen(
        pretrain_cmd(store, kill_dir),
        env=run_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ckpt_path = kill_dir / "last.pt"
    deadline = time.monotonic() + 240
    while not ckpt_path.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL, "the run ended before it could be killed"
    killed_at = load_checkpoint(ckpt_path)["step"]
    assert 0 < killed_at < STEPS

    resumed = subprocess.run(
        pretrain_cmd(store, kill_dir), env=run_env(), capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed from {ckpt_path} at step {killed_at}" in resumed.stdout

    a, b = load_checkpoint(ref_dir / "last.pt"), load_checkpoint(ckpt_path)
    assert a["step"] == b["step"] == STEPS
    for part in ("trunk", "method"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}.{k} differs after resume"
    for sa, sb in zip(
        a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True
    ):
        for k in sa:
            assert torch.equal(torch.as_tensor(sa[k]), torch.as_tensor(sb[k]))
    assert a["sampler"] == b["sampler"]
    steps = [r["step"] for r in read_metrics(kill_dir / "metrics.jsonl") if r["kind"] == "train"]
    assert steps == list(range(1, STEPS + 1))  # replayed steps are not logged twice
