"""Finding slides in the inputs, naming them, and fingerprinting them for resume."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from tiling.errors import InputNotFoundError
from tiling.slide import SLIDE_EXTENSIONS

_CHUNK = 1 << 20


@dataclass(frozen=True)
class SlideInput:
    """One slide to tile: the path openslide opens, a unique id (store name), the files."""

    path: Path
    slide_id: str
    files: tuple[Path, ...]


def _safe_id(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "slide"


def discover_slides(inputs: list[str | Path]) -> tuple[list[SlideInput], list[Path]]:
    """Slides among ``inputs`` (files and folders, searched recursively) and ignored files.

    Files with a slide extension are slides (a DICOM series: all ``.dcm`` files of one folder
    make one slide). Other files are ignored and listed. Ids are file stems (the folder name for
    DICOM), made unique with the parent folder's name when two slides share a stem.
    """
    files: list[Path] = []
    ignored: list[Path] = []
    for raw in inputs:
        p = Path(raw)
        if p.is_dir():
            candidates = sorted(q for q in p.rglob("*") if q.is_file())
        elif p.exists():
            candidates = [p]
        else:
            raise InputNotFoundError(f"{p}: no such file or folder; check the input path")
        for q in candidates:
            if q.name.startswith("."):
                continue
            (files if q.suffix.lower() in SLIDE_EXTENSIONS else ignored).append(q)
    groups: dict[Path, list[Path]] = {}
    for f in dict.fromkeys(files):  # de-duplicate, keep order
        key = f.parent if f.suffix.lower() == ".dcm" else f
        groups.setdefault(key, []).append(f)
    slides: list[tuple[Path, str, tuple[Path, ...]]] = []
    for key, group in groups.items():
        members = tuple(group)
        if key.is_dir():  # DICOM series folder
            slides.append((members[0], _safe_id(key.name), members))
        else:
            slides.append((key, _safe_id(key.stem), members))
    counts: dict[str, int] = {}
    for _, sid, _ in slides:
        counts[sid] = counts.get(sid, 0) + 1
    out = []
    for path, sid, members in slides:
        if counts[sid] > 1:
            digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:6]
            sid = f"{_safe_id(path.parent.name)}_{sid}_{digest}"
        out.append(SlideInput(path, sid, members))
    return out, ignored


def fingerprint(files: tuple[Path, ...]) -> str:
    """Cheap content fingerprint: sizes plus SHA-256 of the first and last MiB of each file."""
    h = hashlib.sha256()
    for f in sorted(files):
        size = f.stat().st_size
        h.update(f"{f.name}:{size};".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(_CHUNK))
            if size > _CHUNK:
                fh.seek(max(_CHUNK, size - _CHUNK))
                h.update(fh.read(_CHUNK))
    return h.hexdigest()


def available_cores() -> int:
    """The cores this process may use (its CPU affinity, i.e. the scheduler's allocation),
    else the machine's core count: the default worker count of every command."""
    import os

    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no affinity on this platform
        return max(1, os.cpu_count() or 1)
