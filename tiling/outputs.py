"""Checks every writing command makes before it computes anything: nothing lost, nothing torn.

The rule: a command never deletes or overwrites what it did not create.

* An output is never one of the inputs, inside one, or a folder holding one
  (:func:`check_not_input`).
* An output file that exists is replaced only with ``--force``, and only when it is recognisably
  this command's earlier output (:func:`check_output_file`).
* An output folder that exists must be empty or this command's earlier output (then the command
  resumes or redoes its own files) (:func:`check_output_dir`).
* The folder an output goes to must be writable (checked on the nearest existing folder, so
  nothing is created before the work succeeds).

Each failed check raises :class:`tiling.errors.OutputError` (a ``UsageError``: exit code 2) with
a one-line message naming the output and what to do.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

from tiling.errors import OutputError

__all__ = ["check_not_input", "check_output_dir", "check_output_file", "relation", "writable"]


def relation(out: str | Path, inp: str | Path) -> str | None:
    """How ``out`` relates to ``inp`` on disk: ``"is"``, ``"is inside"``, ``"contains"`` or
    None (symbolic links resolved)."""
    o, i = Path(out).resolve(), Path(inp).resolve()
    if o == i:
        return "is"
    if o.is_relative_to(i):
        return "is inside"
    if i.is_relative_to(o):
        return "contains"
    return None


def check_not_input(
    out: str | Path, inputs: Iterable[str | Path | None], option: str = "--out"
) -> None:
    """Raise :class:`OutputError` when ``out`` is, is inside, or contains one of ``inputs``."""
    for inp in inputs:
        if inp is None:
            continue
        how = relation(out, inp)
        if how is not None:
            raise OutputError(
                f"{option} {out} {how} the input {inp}; an output may not touch the inputs: "
                f"choose an {option} outside them"
            )


def writable(path: str | Path, option: str = "--out") -> None:
    """Raise :class:`OutputError` unless ``path`` (a folder, existing or not) can be created
    and written: its nearest existing ancestor must be a writable folder."""
    p = Path(path).absolute()
    probe = p
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise OutputError(
            f"cannot write to output folder {p} ({option}): {probe} is a file, not a folder; "
            f"choose another {option}"
        )
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputError(
            f"cannot write to output folder {p} ({option}): {probe} is not writable "
            f"(permission denied); choose a writable {option}"
        )


def check_output_file(
    out: str | Path,
    *,
    inputs: Iterable[str | Path | None],
    force: bool,
    is_ours: Callable[[Path], bool],
    command: str,
    option: str = "--out",
) -> Path:
    """Check an output replaced as a whole (a file, or a folder such as a zarr group) before
    any work: not an input, its folder writable, and if it exists, ``is_ours(out)`` true and
    ``force`` given. Returns ``out`` as a Path."""
    p = Path(out)
    check_not_input(p, inputs, option)
    if p.exists():
        if not is_ours(p):
            raise OutputError(
                f"{option} {p} exists and was not written by pathssl {command}; it is left as "
                f"it is: move it away or choose another {option}"
            )
        if not force:
            raise OutputError(
                f"{option} {p} exists; --force replaces it, or choose another {option}"
            )
    writable(p.parent, option)
    return p


def check_output_dir(
    out: str | Path,
    *,
    inputs: Iterable[str | Path | None],
    is_ours: Callable[[Path], bool],
    command: str,
    option: str = "--out",
) -> Path:
    """Check an output folder before any work: not an input, writable, and if it exists either
    empty or ``is_ours(out)`` (an earlier output of this command, which it may resume).
    Returns ``out`` as a Path."""
    p = Path(out)
    check_not_input(p, inputs, option)
    if p.exists():
        if not p.is_dir():
            raise OutputError(f"{option} {p} is a file; choose a folder name for {option}")
        entries = sorted(q.name for q in p.iterdir())
        if entries and not is_ours(p):
            shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
            raise OutputError(
                f"{option} {p} holds files that pathssl {command} did not write ({shown}); "
                f"they are left as they are: choose a new or empty folder for {option}"
            )
    writable(p, option)
    return p
