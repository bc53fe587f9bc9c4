"""The one atomic writer (tiling.atomic): all or nothing, no temporary files left behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from tiling.atomic import atomic_file, atomic_path, atomic_write, replace_dir


def test_write_replaces_whole_file(tmp_path: Path) -> None:
    p = tmp_path / "sub" / "a.json"
    atomic_write(p, "old")
    atomic_write(p, b"new bytes")
    assert p.read_bytes() == b"new bytes"
    assert sorted(x.name for x in p.parent.iterdir()) == ["a.json"]


def test_error_keeps_old_content_and_leaves_no_temp(tmp_path: Path) -> None:
    p = tmp_path / "a.bin"
    atomic_write(p, b"old")
    with pytest.raises(RuntimeError), atomic_file(p) as f:
        f.write(b"half of the new")
        raise RuntimeError("killed")
    assert p.read_bytes() == b"old"
    assert [x.name for x in tmp_path.iterdir()] == ["a.bin"]


def test_atomic_path_keeps_suffix_and_requires_a_file(tmp_path: Path) -> None:
    p = tmp_path / "overlay.png"
    with atomic_path(p) as tmp:
        assert tmp.suffix == ".png" and tmp.parent == tmp_path and tmp != p
        tmp.write_bytes(b"png")
    assert p.read_bytes() == b"png"
    with pytest.raises(FileNotFoundError), atomic_path(tmp_path / "never.png"):
        pass
    assert not (tmp_path / "never.png").exists()


def test_replace_dir_swaps_folders(tmp_path: Path) -> None:
    final, tmp = tmp_path / "store.zarr", tmp_path / ".tmp-store"
    final.mkdir()
    (final / "old").write_text("1")
    tmp.mkdir()
    (tmp / "new").write_text("2")
    replace_dir(tmp, final)
    assert [x.name for x in final.iterdir()] == ["new"]
    assert sorted(x.name for x in tmp_path.iterdir()) == ["store.zarr"]
