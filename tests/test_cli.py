"""The ``pathssl`` command line, run as a user would (real processes, real slides)."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path


def _pathssl(*args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("pathssl")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "pathssl.cli"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=300)


def test_help_lists_commands() -> None:
    proc = _pathssl("--help")
    assert proc.returncode == 0
    assert "tile" in proc.stdout


def test_tile_folder_reports_failures_and_exits_nonzero(tmp_path: Path, slides_dir: Path) -> None:
    out = tmp_path / "tiles"
    proc = _pathssl("tile", str(slides_dir), "--out", str(out), "--no-progress")
    assert proc.returncode == 1, proc.stderr  # broken.svs and synthetic-boxes.tiff fail
    assert "5 slides (1 ok, 2 failed, 2 no_tissue)" in proc.stdout
    assert "FAILED" in proc.stdout and "broken.svs" in proc.stdout
    with open(out / "manifest.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 5
    html = (out / "report.html").read_text()
    assert "CMU-1-Small-Region" in html and "overviews/CMU-1-Small-Region.png" in html
    assert (out / "overviews" / "CMU-1-Small-Region.png").stat().st_size > 1000


def test_tile_with_assumed_mpp_reads_a_coarser_level(tmp_path: Path, slides_dir: Path) -> None:
    """synthetic-boxes.tiff has 4 levels and no real mpp: with --assume-mpp it tiles level 1."""
    out = tmp_path / "tiles"
    proc = _pathssl(
        "tile",
        str(slides_dir / "synthetic-boxes.tiff"),
        "--out",
        str(out),
        "--assume-mpp",
        "0.25",
        "--size",
        "32",
        "--min-tissue",
        "0.0",
        "--codec",
        "png",
        "--no-progress",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    import numpy as np
    import openslide

    from tiling import open_store

    store = open_store(out / "synthetic-boxes.zarr")
    assert store.attrs["mpp"]["source"] == "assumed (--assume-mpp)"
    assert store.attrs["tile"]["read_level"] == 1 and store.attrs["tile"]["scale"] == 1.0
    slide = openslide.OpenSlide(str(slides_dir / "synthetic-boxes.tiff"))
    assert len(store) == (150 // 32) * (125 // 32)
    for i in range(len(store)):
        x, y = (int(v) for v in store.coords[i])
        ref = np.asarray(slide.read_region((x, y), 1, (32, 32)))[..., :3]
        np.testing.assert_array_equal(store[i], ref)


def test_bad_arguments_fail_clearly(tmp_path: Path, slides_dir: Path) -> None:
    proc = _pathssl("tile", str(slides_dir), "--out", str(tmp_path), "--overlap", "300")
    assert proc.returncode == 2 and "--overlap must be in [0, size)" in proc.stderr
    proc = _pathssl("tile", str(slides_dir), "--out", str(tmp_path), "--shard", "3/2")
    assert proc.returncode == 2 and "--shard" in proc.stderr
    proc = _pathssl("tile", str(tmp_path / "nothing"), "--out", str(tmp_path))
    assert proc.returncode == 2 and "no such file or folder" in proc.stderr
