"""The one atomic writer: every file and folder the package writes goes through here.

A file is written under a temporary name in its destination folder, flushed and fsynced, renamed
over the final name with ``os.replace``, and the folder is fsynced so the rename itself survives a
crash. A reader (or a killed run) therefore sees the old file or the new one, never half of one.
It lives in ``tiling`` (the lowest layer, no torch) so tiling and every ``pathssl`` stage share it::

    atomic_write(out / "metrics.json", json.dumps(scores))      # bytes or str
    with atomic_file(out / "last.pt") as f:                      # a binary file object
        torch.save(state, f)
    with atomic_path(out / "overlay.png") as tmp:                # a path for libraries that
        cv2.imwrite(str(tmp), image)                             # want a file name
    replace_dir(tmp_store, out / "CMU-1.zarr")                   # a finished folder
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_file", "atomic_path", "atomic_write", "fsync_dir", "replace_dir", "temp_name"]


def temp_name(path: Path) -> Path:
    """A hidden, unique temporary name beside ``path`` (same folder, so the rename is atomic)
    that keeps its suffix, so libraries choosing a format by extension still see it."""
    return path.with_name(f".{path.stem}.{uuid.uuid4().hex[:12]}.tmp{path.suffix}")


def fsync_dir(folder: Path) -> None:
    """Make renames inside ``folder`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends without an error the file
    written there is fsynced and renamed to ``path``. On an error it is removed and ``path`` is
    left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"nothing was written to the temporary file for {path}")
        _fsync_file(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


@contextmanager
def atomic_file(path: str | Path) -> Iterator[BinaryIO]:
    """Yield a binary file object whose content replaces ``path`` atomically when the block
    ends without an error."""
    with atomic_path(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # umask applies
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()


def atomic_write(path: str | Path, data: bytes | str) -> Path:
    """Write ``data`` (str as UTF-8) to ``path`` atomically; returns ``path``."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_file(path) as f:
        f.write(raw)
    return Path(path)


def replace_dir(tmp: str | Path, final: str | Path) -> None:
    """Put the finished folder ``tmp`` at ``final`` atomically, replacing an old ``final`` (the
    caller has checked it may). The old folder is renamed aside first and removed last, so a
    crash leaves the old or the new folder in place, never a mix."""
    tmp, final = Path(tmp), Path(final)
    if final.exists():
        trash = final.with_name(f".trash-{final.name}-{uuid.uuid4().hex[:8]}")
        os.replace(final, trash)
        os.replace(tmp, final)
        fsync_dir(final.parent)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, final)
        fsync_dir(final.parent)
