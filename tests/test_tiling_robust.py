"""Interrupted, concurrent and failing runs lose nothing and tear nothing (real processes)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tiling import open_store, tile_slides

N_SLIDES = 6


@pytest.fixture
def many_slides(tmp_path: Path, cmu_slide: Path) -> Path:
    """A folder of links to the real slide under different names (a batch of 6 slides)."""
    folder = tmp_path / "slides"
    folder.mkdir()
    for i in range(N_SLIDES):
        (folder / f"case{i:02d}.svs").symlink_to(cmu_slide)
    return folder


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "pathssl.cli", "tile", *args, "--no-progress"]


def _snapshot(out: Path) -> dict[str, tuple[list[bytes], bytes, dict[str, bytes]]]:
    """Every store's tile bytes, coords and QC: what 'identical stores' means."""
    snap = {}
    for path in sorted(out.glob("*.zarr")):
        s = open_store(path)
        tiles = [s.read_bytes(i) for i in range(len(s))]
        qc = {k: v.tobytes() for k, v in s.qc.items()}
        snap[path.name] = (tiles, s.coords.tobytes(), qc)
    return snap


@pytest.fixture
def reference(tmp_path: Path, many_slides: Path) -> dict:
    out = tmp_path / "reference"
    results = tile_slides([many_slides], out, codec="png", progress=False, report=False)
    assert [r.status for r in results] == ["ok"] * N_SLIDES
    return _snapshot(out)


def _wait_for(predicate, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.002)
    raise AssertionError("condition not reached in time")


def _tmp_chunks(out: Path) -> int:
    return sum(1 for _ in (out / ".tmp").glob("*.zarr/tiles/*")) if (out / ".tmp").exists() else 0


@pytest.mark.parametrize("moment", ["mid-slide", "between-slides"])
def test_kill_9_then_rerun_gives_identical_stores(
    tmp_path: Path, many_slides: Path, reference: dict, moment: str
) -> None:
    out = tmp_path / "out"
    args = _cli(str(many_slides), "--out", str(out), "--codec", "png", "--no-report")
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if moment == "mid-slide":
        _wait_for(lambda: _tmp_chunks(out) > 0)
    else:
        _wait_for(lambda: len(list(out.glob("*.zarr"))) >= 2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = sorted(p.name for p in out.glob("*.zarr"))
    assert len(partial) < N_SLIDES, "the run finished before it was killed"
    for name in partial:  # whatever exists under a final name is whole
        assert open_store(out / name).attrs["complete"] is True
    rerun = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"{len(partial)} skipped" in rerun.stdout or not partial
    assert _snapshot(out) == reference
    assert list((out / ".tmp").iterdir()) == []


def test_two_concurrent_runs_share_the_work(
    tmp_path: Path, many_slides: Path, reference: dict
) -> None:
    out = tmp_path / "out"
    args = _cli(str(many_slides), "--out", str(out), "--codec", "png", "--no-report")
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    # each slide was tiled by exactly one of the runs; the other skipped it
    tiled = sum(int(m.group(1)) for o in outputs if (m := re.search(r"(\d+) ok", o)))
    assert tiled == N_SLIDES, outputs
    assert _snapshot(out) == reference


def test_rerun_skips_complete_and_redoes_changed_options(tmp_path: Path, cmu_slide: Path) -> None:
    out = tmp_path / "out"
    (first,) = tile_slides([cmu_slide], out, progress=False, report=False)
    store = out / "CMU-1-Small-Region.zarr"
    stamp = (store / "zarr.json").stat().st_mtime_ns
    (again,) = tile_slides([cmu_slide], out, progress=False, report=False)
    assert again.status == "skipped" and again.n_tiles == first.n_tiles
    assert (store / "zarr.json").stat().st_mtime_ns == stamp
    (other,) = tile_slides([cmu_slide], out, size=256, progress=False, report=False)
    assert other.status == "ok" and open_store(store).tile_size == 256


def test_workers_give_the_same_stores(tmp_path: Path, many_slides: Path, reference: dict) -> None:
    out = tmp_path / "out"
    results = tile_slides([many_slides], out, codec="png", workers=2, progress=False, report=False)
    assert [r.status for r in results] == ["ok"] * N_SLIDES
    assert _snapshot(out) == reference


def test_shards_partition_the_slides(tmp_path: Path, many_slides: Path) -> None:
    names = []
    for i in range(3):
        res = tile_slides([many_slides], tmp_path / "out", shard=(i, 3), progress=False)
        names.append({r.slide_id for r in res})
    assert sum(len(n) for n in names) == N_SLIDES
    assert set().union(*names) == {f"case{i:02d}" for i in range(N_SLIDES)}


def test_disk_full_is_reported_and_leaves_nothing_torn(tmp_path: Path, cmu_slide: Path) -> None:
    mnt = tmp_path / "small"
    mnt.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root): disk-full path not exercised")
    try:
        out = mnt / "out"
        (res,) = tile_slides([cmu_slide], out, codec="png", progress=False)
        assert res.status == "failed"
        assert res.error.startswith("disk full while writing"), res.error
        assert not (out / "CMU-1-Small-Region.zarr").exists()
        assert list((out / ".tmp").iterdir()) == []
        assert "disk full" in (out / "manifest.csv").read_text()
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_unwritable_output_is_a_clear_error(tmp_path: Path, cmu_slide: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    proc = subprocess.run(
        _cli(str(cmu_slide), "--out", str(blocker / "out")), capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "cannot write to output folder" in proc.stderr


def test_no_tissue_slide(tmp_path: Path, data_dir: Path) -> None:
    """A real blank region (tiles/qc/no-tissue.png written as a tiled TIFF at 0.5 um/px)."""
    import cv2
    import tifffile

    img = cv2.cvtColor(cv2.imread(str(data_dir / "tiles/qc/almost-white-2.png")), cv2.COLOR_BGR2RGB)
    img = np.ascontiguousarray(np.tile(img, (2, 2, 1))[:1024, :1024])
    path = tmp_path / "blank.tif"
    tifffile.imwrite(
        path,
        img,
        tile=(256, 256),
        compression="jpeg",
        resolution=(20000, 20000),
        resolutionunit="CENTIMETER",
        photometric="rgb",
    )
    (res,) = tile_slides([path], tmp_path / "out", progress=False)
    assert res.status == "no_tissue" and res.n_tiles == 0
    assert open_store(tmp_path / "out" / "blank.zarr").attrs["tissue"]["fraction"] < 0.05
