"""Tile stores: one zarr v3 group per slide, ``<out>/<slide_id>.zarr`` (format in README.md).

Layout::

    tiles        uint8 (N, S, S, 3), chunks (1, S, S, 3), one encoded image per chunk
    coords       int64 (N, 2)  level-0 x, y of each tile's top-left corner
    qc/<name>    float32 (N,)  per-tile scores: tissue, pen, blur, white, mask_tissue
    thumbnail    uint8 (h, w, 3) RGB overview of the whole slide
    tissue_mask  bool (h, w)   tissue mask on the thumbnail's grid
    attrs        slide, mpp, tile, tissue, thumbnail, pathssl_version, fingerprint, complete

A store is written under a temporary name and renamed into place when complete, so a store
that exists under its final name is whole. ``complete: true`` is the last attribute written.
``attrs["files"]`` records the size of every file of the store (but the root ``zarr.json``) when
it is written: :func:`check_store` compares them with the disk (a cheap check, no decoding; run
before a store is reused or opened), :func:`verify_store` also decodes every chunk.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import google_crc32c
import numpy as np
import zarr

from tiling.atomic import replace_dir
from tiling.codec import FORMATS, decode_tile, zarr_codecs
from tiling.errors import DamagedStoreError, InputNotFoundError

FORMAT_VERSION = 1
_KEY_ENCODING: dict[str, Any] = {"name": "v2", "separator": "."}
_EMPTY = 2**64 - 1
#: tiles per shard file: few files for the filesystem, ~1-2 MB each for JPEG tiles of 224 px.
SHARD_TILES = 64


def shard_name(shard: int) -> str:
    """File in ``tiles/`` holding shard ``shard`` (chunk key encoding v2 with '.')."""
    return f"{shard}.0.0.0"


def shard_parts(chunks: Sequence[bytes | None]) -> list[bytes]:
    """One shard file of the zarr v3 ``sharding_indexed`` codec, as a list of byte strings to
    write in order: the inner chunks' bytes, then the index ((offset, nbytes) uint64
    little-endian per inner chunk, (2^64-1, 2^64-1) for a missing one) and its CRC32C, as zarr's
    default index codecs write it."""
    index = np.full((len(chunks), 2), _EMPTY, dtype="<u8")
    sizes = np.array([-1 if c is None else len(c) for c in chunks], np.int64)
    present = sizes >= 0
    index[present, 1] = sizes[present]
    index[present, 0] = np.cumsum(sizes[present]) - sizes[present]
    index_bytes = index.tobytes()
    crc = google_crc32c.value(index_bytes).to_bytes(4, "little")
    return [c for c in chunks if c is not None] + [index_bytes, crc]


def write_all(fd: int, parts: Sequence[bytes]) -> None:
    """Write every byte of ``parts`` to ``fd`` (``os.writev``; short writes are continued, so a
    full disk raises instead of leaving a truncated file)."""
    views = [memoryview(p) for p in parts if len(p)]
    while views:
        done = os.writev(fd, views[:1024])
        while views and done >= len(views[0]):
            done -= len(views[0])
            views.pop(0)
        if done:
            views[0] = views[0][done:]


class StoreWriter:
    """Creates a store at ``path`` (a temporary folder) and finalises it.

    Tiles are written as whole shard files (:func:`shard_parts`, any process any shard);
    :meth:`finish` writes coords, QC, thumbnail, mask and the attributes, ``complete`` last.
    """

    def __init__(
        self,
        path: Path,
        n_tiles: int,
        size: int,
        fmt: str,
        quality: int,
        subsampling: str,
        shard_tiles: int = SHARD_TILES,
    ) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown tile codec {fmt!r}; choose one of {FORMATS}")
        self.path = path
        self.group = zarr.open_group(str(path), mode="w", zarr_format=3)
        codecs = zarr_codecs(fmt, quality, subsampling)
        self.group.create_array(
            "tiles",
            shape=(n_tiles, size, size, 3),
            chunks=(1, size, size, 3),
            shards=(shard_tiles, size, size, 3),
            dtype="uint8",
            serializer=codecs[0],
            compressors=codecs[1:] or None,
            fill_value=0,
            chunk_key_encoding=_KEY_ENCODING,
            dimension_names=["tile", "y", "x", "rgb"],
        )
        (path / "tiles").mkdir(exist_ok=True)

    def finish(
        self,
        coords: np.ndarray,
        qc: Mapping[str, np.ndarray],
        thumbnail: np.ndarray,
        tissue_mask: np.ndarray,
        attrs: Mapping[str, Any],
    ) -> None:
        g = self.group
        _write(g, "coords", np.asarray(coords, np.int64).reshape(-1, 2), ["tile", "xy"])
        qc_group = g.require_group("qc")
        for name, values in qc.items():
            _write(qc_group, name, np.asarray(values, np.float32), ["tile"])
        _write(g, "thumbnail", np.ascontiguousarray(thumbnail, np.uint8), ["y", "x", "rgb"])
        _write(g, "tissue_mask", np.asarray(tissue_mask, bool), ["y", "x"])
        files = store_files(self.path)
        g.attrs.update(
            {**attrs, "format_version": FORMAT_VERSION, "files": files, "complete": False}
        )
        g.attrs["complete"] = True


def _write(group: zarr.Group, name: str, data: np.ndarray, dims: list[str]) -> None:
    chunks = data.shape if data.size else tuple(max(1, s) for s in data.shape)
    arr = group.create_array(
        name, shape=data.shape, chunks=chunks, dtype=data.dtype, dimension_names=dims
    )
    if data.size:
        arr[...] = data


def remove_tree(path: Path) -> None:
    """Remove a folder if it exists (ignoring a concurrent removal)."""
    shutil.rmtree(path, ignore_errors=True)


def commit(tmp: Path, final: Path) -> None:
    """Atomically put the finished store ``tmp`` at ``final`` (replacing an old one, which the
    caller has checked is a tile store of the same slide)."""
    replace_dir(tmp, final)


def store_files(path: str | Path) -> dict[str, int]:
    """Size in bytes of every file of a store, by path relative to it ('/'-separated), except
    the root ``zarr.json`` (which holds this record)."""
    root = Path(path)
    out: dict[str, int] = {}
    for folder, _dirs, names in os.walk(root):
        for name in names:
            f = Path(folder) / name
            rel = f.relative_to(root).as_posix()
            if rel != "zarr.json":
                out[rel] = f.stat().st_size
    return dict(sorted(out.items()))


def _required_files(attrs: Mapping[str, Any]) -> list[str]:
    """Files every complete store has (used for stores written before ``attrs["files"]``)."""
    names = attrs.get("qc", {}).get("names") or ["tissue", "pen", "blur", "white", "mask_tissue"]
    arrays = ["tiles", "coords", "thumbnail", "tissue_mask", "qc", *(f"qc/{n}" for n in names)]
    return [f"{a}/zarr.json" for a in arrays]


def check_store(path: str | Path) -> list[str]:
    """Problems of a complete store found without decoding anything (empty list: none).

    Every file recorded in ``attrs["files"]`` must be present with its recorded size; stores
    written before that record get every array's metadata and every shard file checked, with
    each shard's index checksum. Cost: one ``stat`` per file.
    """
    root = Path(path)
    attrs = read_attrs(root)
    if attrs is None:
        return ["zarr.json missing or unreadable"]
    if not attrs.get("complete"):
        return ["incomplete (no complete flag): an interrupted run"]
    problems: list[str] = []
    recorded = attrs.get("files")
    if isinstance(recorded, dict):
        for rel, size in recorded.items():
            try:
                actual = (root / rel).stat().st_size
            except OSError:
                problems.append(f"{rel} missing")
                continue
            if actual != size:
                problems.append(f"{rel} has {actual} bytes, {size} were written")
        return problems
    for rel in _required_files(attrs):
        if not (root / rel).is_file():
            problems.append(f"array {rel.rsplit('/', 1)[0]} missing")
    tile = attrs.get("tile", {})
    n, k = int(tile.get("n_tiles", 0)), int(tile.get("shard_tiles", SHARD_TILES))
    for shard in range(-(-n // k)):
        f = root / "tiles" / shard_name(shard)
        try:
            with open(f, "rb") as fh:
                fh.seek(-(16 * k + 4), os.SEEK_END)
                raw = fh.read(16 * k + 4)
        except OSError:
            problems.append(f"tiles/{shard_name(shard)} missing or truncated")
            continue
        if google_crc32c.value(raw[:-4]) != int.from_bytes(raw[-4:], "little"):
            problems.append(f"tiles/{shard_name(shard)} index checksum mismatch")
    return problems


def verify_store(path: str | Path) -> list[str]:
    """Full check of a store (empty list: whole): :func:`check_store`, then every array read
    and its shape checked against the tile count and thumbnail, and every tile decoded."""
    problems = check_store(path)
    if problems:
        return problems
    try:
        store = TileStore(path, check=False)
        n = len(store)
        recorded = int(store.attrs["tile"].get("n_tiles", n))
        if recorded != n:
            problems.append(f"tiles has {n} tiles, attrs record {recorded}")
        if store.coords.shape != (n, 2):
            problems.append(f"coords has shape {store.coords.shape}, expected ({n}, 2)")
        for name in store.attrs.get("qc", {}).get("names", []):
            values = store.qc.get(name)
            if values is None:
                problems.append(f"qc/{name} missing")
            elif values.shape != (n,):
                problems.append(f"qc/{name} has shape {values.shape}, expected ({n},)")
        thumb, mask = store.thumbnail, store.tissue_mask
        if thumb.ndim != 3 or thumb.shape[2] != 3 or mask.shape != thumb.shape[:2]:
            problems.append(f"thumbnail {thumb.shape} and tissue_mask {mask.shape} do not match")
    except Exception as exc:  # noqa: BLE001 - every failure is a finding
        return [*problems, f"cannot read: {' '.join(str(exc).split())}"]
    size = (store.tile_size, store.tile_size, 3)
    for i in range(n):
        try:
            tile = store[i]
        except Exception as exc:  # noqa: BLE001 - every failure is a finding
            problems.append(f"tile {i} cannot be decoded: {' '.join(str(exc).split())}")
            if len(problems) >= 10:
                problems.append("(stopped after 10 problems)")
                break
            continue
        if tile.shape != size:
            problems.append(f"tile {i} has shape {tile.shape}, expected {size}")
    return problems


def read_attrs(path: str | Path) -> dict[str, Any] | None:
    """The store's group attributes, or None if ``path`` is no zarr v3 group."""
    meta = Path(path) / "zarr.json"
    try:
        return dict(json.loads(meta.read_text()).get("attributes", {}))
    except (OSError, ValueError):
        return None


def _damaged(path: Path, what: str) -> DamagedStoreError:
    return DamagedStoreError(
        f"tile store {path} is damaged ({what}); run pathssl tile --verify {path.parent} to list "
        f"the damage, and the same pathssl tile command again to redo it"
    )


class TileStore:
    """Read access to a complete tile store; ``store[i]`` is tile i, (S, S, 3) uint8, in O(1).

    Opening runs :func:`check_store` (``check=False`` skips it) and raises
    :class:`tiling.errors.DamagedStoreError` (a ValueError) naming the store when it fails.
    """

    def __init__(self, path: str | Path, check: bool = True) -> None:
        self.path = Path(path)
        attrs = read_attrs(self.path)
        if attrs is None:
            raise ValueError(f"{self.path}: not a tile store (no zarr.json)")
        if not attrs.get("complete"):
            raise ValueError(f"{self.path}: incomplete tile store (interrupted run?)")
        if check:
            problems = check_store(self.path)
            if problems:
                more = f" and {len(problems) - 1} more" if len(problems) > 1 else ""
                raise _damaged(self.path, problems[0] + more)
        self.attrs: dict[str, Any] = attrs
        self.group = zarr.open_group(str(self.path), mode="r")
        tiles = self.group["tiles"]
        assert isinstance(tiles, zarr.Array)
        self.tiles: zarr.Array = tiles
        self.codec: str = attrs["tile"]["codec"]
        self.shard_tiles: int = int(attrs["tile"]["shard_tiles"])
        self._index: dict[int, np.ndarray] = {}
        self.tile_size: int = int(attrs["tile"]["size"])
        self.mpp: float = float(attrs["mpp"]["tile"])
        self.slide_id: str = attrs["slide"]["id"]

    def __len__(self) -> int:
        return int(self.tiles.shape[0])

    def __getitem__(self, index: int) -> np.ndarray:
        n = len(self)
        i = int(index)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"tile {index} out of range for {n} tiles")
        return decode_tile(self.read_bytes(i), self.codec, (self.tile_size, self.tile_size, 3))

    def read_bytes(self, index: int) -> bytes:
        """The encoded chunk of tile ``index`` (a JPEG file's bytes for the jpeg codec)."""
        shard, inner = divmod(int(index), self.shard_tiles)
        path = self.path / "tiles" / shard_name(shard)
        try:
            fh = open(path, "rb")  # noqa: SIM115 - closed by the with block below
        except FileNotFoundError:
            raise _damaged(self.path, f"tiles/{shard_name(shard)} missing") from None
        with fh:
            table = self._index.get(shard)
            if table is None:
                size = self.shard_tiles * 16
                try:
                    fh.seek(-(size + 4), os.SEEK_END)
                except OSError:
                    raise _damaged(self.path, f"tiles/{shard_name(shard)} truncated") from None
                raw = fh.read(size + 4)
                if google_crc32c.value(raw[:size]) != int.from_bytes(raw[size:], "little"):
                    raise _damaged(self.path, f"tiles/{shard_name(shard)} index checksum mismatch")
                table = np.frombuffer(raw[:size], "<u8").reshape(-1, 2)
                if len(self._index) > 256:
                    self._index.clear()
                self._index[shard] = table
            offset, nbytes = (int(v) for v in table[inner])
            if offset == _EMPTY:
                raise KeyError(f"tile {index} is missing from {path}")
            fh.seek(offset)
            return fh.read(nbytes)

    @cached_property
    def coords(self) -> np.ndarray:
        return np.asarray(self._array("coords")[...], np.int64).reshape(-1, 2)

    @cached_property
    def qc(self) -> dict[str, np.ndarray]:
        group = self.group["qc"]
        assert isinstance(group, zarr.Group)
        return {name: np.asarray(arr[...]) for name, arr in group.arrays()}

    @cached_property
    def thumbnail(self) -> np.ndarray:
        return np.asarray(self._array("thumbnail")[...])

    @cached_property
    def tissue_mask(self) -> np.ndarray:
        return np.asarray(self._array("tissue_mask")[...])

    def _array(self, name: str) -> zarr.Array:
        arr = self.group[name]
        assert isinstance(arr, zarr.Array)
        return arr

    def __repr__(self) -> str:
        return (
            f"TileStore({str(self.path)!r}, n={len(self)}, size={self.tile_size}, "
            f"mpp={self.mpp:.4g}, codec={self.codec!r})"
        )


def open_store(path: str | Path) -> TileStore:
    """Open a complete, undamaged tile store written by ``pathssl tile`` (raises ValueError
    otherwise: :class:`tiling.errors.DamagedStoreError` names the store and ``--verify``)."""
    return TileStore(path)


def find_stores(paths: Iterable[str | Path]) -> list[Path]:
    """Stores named directly, or the ``*.zarr`` stores inside folders, sorted."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.suffix == ".zarr" and (p / "zarr.json").exists():
            found.append(p)
        elif p.is_dir():
            found.extend(q for q in sorted(p.glob("*.zarr")) if (q / "zarr.json").exists())
        else:
            raise InputNotFoundError(f"{p}: no tile store or folder of stores there")
    return found
