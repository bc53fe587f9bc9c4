"""Object proposals computed once per tile store and cached next to it, resumable like tiling.

``compute_proposals("tiles/CMU-1.zarr")`` writes ``tiles/CMU-1.proposals/``:

- ``params.json``: the proposal parameters, the store's slide fingerprint and tile count, the
  chunk size (written first; a cache of other parameters or another store is refused unless
  ``force``; an existing cache keeps its own chunk size);
- ``chunk-000000.npz`` ...: tiles ``[c * chunk_tiles, (c + 1) * chunk_tiles)``, each written
  atomically (:func:`tiling.atomic.atomic_file`) with ``tile`` ``(K,)`` int64, ``box`` ``(K, 4)``
  float32 ``x0, y0, x1, y1`` in tile pixels, ``kind`` ``(K,)`` int8 (:data:`KINDS`).

A killed run leaves whole chunks only; the same call again computes just the missing ones, so no
tile is ever written twice. :func:`load_proposals` reads a complete cache,
:func:`proposals_picture` draws one tile's proposals (PNG).
"""

from __future__ import annotations

import io
import json
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from pathssl import __version__
from pathssl.orl.proposals import KINDS, ProposalParams, tile_proposals
from tiling.atomic import atomic_file, atomic_path, atomic_write
from tiling.errors import UsageError
from tiling.store import open_store

PARAMS_FILE = "params.json"


@dataclass(frozen=True)
class Proposals:
    """A store's proposals: tile ``t``'s are rows ``start[t]:start[t + 1]`` of ``boxes``
    ``(K, 4)`` float32 and ``kinds`` ``(K,)`` int8."""

    start: NDArray[np.int64]
    boxes: NDArray[np.float32]
    kinds: NDArray[np.int8]

    def of(self, tile: int) -> tuple[NDArray[np.float32], NDArray[np.int8]]:
        lo, hi = int(self.start[tile]), int(self.start[tile + 1])
        return self.boxes[lo:hi], self.kinds[lo:hi]


def cache_dir(store: str | Path) -> Path:
    """``tiles/X.zarr`` -> ``tiles/X.proposals``."""
    p = Path(store)
    return p.with_name(p.stem + ".proposals")


def _chunk_path(folder: Path, c: int) -> Path:
    return folder / f"chunk-{c:06d}.npz"


def _identity(store: str | Path, params: ProposalParams, chunk_tiles: int) -> dict[str, Any]:
    s = open_store(store)
    return {
        "kind": "orl-proposals",
        "params": params.to_dict(),
        "slide_fingerprint": s.attrs["slide"].get("fingerprint"),
        "n_tiles": len(s),
        "tile_mpp": s.mpp,
        "chunk_tiles": chunk_tiles,
    }


def _chunk(store: str, lo: int, hi: int, params: ProposalParams) -> bytes:
    s = open_store(store)
    tiles, boxes, kinds = [], [], []
    for t in range(lo, hi):
        b, k = tile_proposals(s[t], s.mpp, params)
        tiles.append(np.full(len(b), t, np.int64))
        boxes.append(b)
        kinds.append(k)
    buf = io.BytesIO()
    np.savez(buf, tile=np.concatenate(tiles), box=np.concatenate(boxes), kind=np.concatenate(kinds))
    return buf.getvalue()


def compute_proposals(
    store: str | Path,
    params: ProposalParams | None = None,
    chunk_tiles: int = 64,
    workers: int = 1,
    force: bool = False,
    progress: bool = False,
) -> Path:
    """Compute (or finish) the proposal cache of ``store`` (module docstring); returns its
    folder. ``force`` replaces a cache made with other parameters (otherwise refused)."""
    params = params or ProposalParams()
    if chunk_tiles < 1 or workers < 1:
        raise UsageError(f"chunk_tiles and workers must be >= 1, got {chunk_tiles}, {workers}")
    folder = cache_dir(store)
    ident = {**_identity(store, params, chunk_tiles), "pathssl_version": __version__}
    old = _read_params(folder)
    if old is not None and not _same(old, ident):
        if not force:
            raise UsageError(
                f"{folder} holds proposals made with other parameters or another store: pass "
                "--force to recompute them"
            )
        shutil.rmtree(folder)
    elif old is not None:
        ident["chunk_tiles"] = chunk_tiles = int(old["chunk_tiles"])  # the cache's own chunking
    elif folder.exists() and old is None and any(folder.iterdir()):
        raise UsageError(f"{folder} exists and is not a proposal cache: move it away")
    if not (folder / PARAMS_FILE).exists():
        atomic_write(folder / PARAMS_FILE, json.dumps(ident, indent=1))
    n = int(ident["n_tiles"])
    todo = [
        c
        for c in range((n + chunk_tiles - 1) // chunk_tiles)
        if not _chunk_path(folder, c).exists()
    ]
    jobs = [(str(store), c * chunk_tiles, min(n, (c + 1) * chunk_tiles), params) for c in todo]
    if not jobs:
        return folder
    if workers == 1:
        results = (_chunk(*job) for job in jobs)
        _write(folder, todo, results, progress)
    else:
        with ProcessPoolExecutor(workers) as pool:
            _write(folder, todo, pool.map(_chunk, *zip(*jobs, strict=True)), progress)
    return folder


def _write(folder: Path, todo: list[int], results: Any, progress: bool) -> None:
    for i, (c, data) in enumerate(zip(todo, results, strict=True)):
        with atomic_file(_chunk_path(folder, c)) as f:
            f.write(data)
        if progress:
            print(f"proposals {folder.name}: chunk {i + 1}/{len(todo)}", flush=True)


def _read_params(folder: Path) -> dict[str, Any] | None:
    try:
        found: dict[str, Any] = json.loads((folder / PARAMS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return found if found.get("kind") == "orl-proposals" else None


def _same(old: dict[str, Any], new: dict[str, Any]) -> bool:
    keys = ("params", "slide_fingerprint", "n_tiles")
    return all(old.get(k) == new.get(k) for k in keys)


def load_proposals(store: str | Path) -> Proposals:
    """The complete proposal cache of ``store`` (an error naming the command when missing or
    unfinished)."""
    folder = cache_dir(store)
    ident = _read_params(folder)
    fix = f"run `pathssl orl proposals {store}` (it resumes an unfinished cache)"
    if ident is None:
        raise FileNotFoundError(f"no proposal cache at {folder}: {fix}")
    n, size = int(ident["n_tiles"]), int(ident["chunk_tiles"])
    tiles, boxes, kinds = [], [], []
    for c in range((n + size - 1) // size):
        path = _chunk_path(folder, c)
        if not path.exists():
            raise FileNotFoundError(f"proposal cache {folder} is unfinished ({path.name}): {fix}")
        with np.load(path) as z:
            tiles.append(z["tile"])
            boxes.append(z["box"])
            kinds.append(z["kind"])
    tile = np.concatenate(tiles)
    if np.any(np.diff(tile) < 0):
        raise ValueError(f"proposal cache {folder} is damaged (tiles out of order): {fix} --force")
    start = np.searchsorted(tile, np.arange(n + 1)).astype(np.int64)
    return Proposals(start, np.concatenate(boxes), np.concatenate(kinds))


#: BGR colours of the kinds in pictures
COLOURS = {
    "nucleus": (60, 200, 60),
    "cluster": (230, 120, 0),
    "region": (0, 200, 255),
    "tile": (128, 128, 128),
}


def proposals_picture(
    store: str | Path, out: str | Path, tile: int | None = None, zoom: int = 3
) -> Path:
    """A PNG of one tile (default: the one with most nuclear clusters, then most nuclei) with
    its cached proposals outlined by kind (nucleus green, cluster blue, region yellow), enlarged
    ``zoom`` times, with a legend; returns ``out``."""
    import cv2

    props = load_proposals(store)
    if tile is None:
        per_kind = np.stack(
            [np.bincount(props.of(t)[1], minlength=len(KINDS)) for t in range(len(props.start) - 1)]
        )
        tile = int(np.lexsort((per_kind[:, 0], per_kind[:, 1]))[-1])
    image = open_store(store)[tile]
    big = cv2.resize(image[..., ::-1], None, fx=zoom, fy=zoom, interpolation=cv2.INTER_NEAREST)
    boxes, kinds = props.of(tile)
    for b, k in sorted(zip(boxes, kinds, strict=True), key=lambda x: -int(x[1])):
        p0 = (int(round(b[0] * zoom)), int(round(b[1] * zoom)))
        p1 = (int(round(b[2] * zoom)) - 1, int(round(b[3] * zoom)) - 1)
        cv2.rectangle(big, p0, p1, COLOURS[KINDS[int(k)]], 2 if KINDS[int(k)] == "cluster" else 1)
    legend = np.full((28, big.shape[1], 3), 255, np.uint8)
    cv2.putText(legend, f"tile {tile}", (6, 19), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1)
    x = 90
    for name in KINDS[:3]:
        n = int(np.sum(kinds == KINDS.index(name)))
        text = f"{name} ({n})"
        cv2.putText(legend, text, (x, 19), cv2.FONT_HERSHEY_SIMPLEX, 0.55, COLOURS[name], 2)
        x += 14 * len(text)
    picture = np.concatenate([big, legend])
    with atomic_path(out) as tmp:
        if not cv2.imwrite(str(tmp), picture):
            raise OSError(f"could not write {out}")
    return Path(out)
