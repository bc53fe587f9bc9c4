"""Tiling one slide: plan (resolution, level, tissue, grid), tile jobs, and finishing the store.

A slide is planned in the calling process (cheap: a ~8 um/px thumbnail), then its kept tiles
are cut in jobs (ranges of tile indices) that any process can run: a job reads bands of up to
``band_tiles`` neighbouring tiles, computes their QC scores in one vectorised call, encodes each
tile once and writes it to its own chunk file. :func:`finish_slide` then writes coords, QC,
thumbnail, mask and attributes and renames the store into place.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tiling import __version__
from tiling.codec import FORMATS, encode_tile
from tiling.discover import SlideInput, fingerprint
from tiling.errors import ConfigError
from tiling.grid import Grid, make_grid, mask_fractions, stream_thumbnail, thumbnail_factor
from tiling.readers import make_reader
from tiling.slide import SlideAtMpp, open_slide, resize_rgb
from tiling.store import SHARD_TILES, StoreWriter, commit, shard_name, shard_parts, write_all

QC_NAMES = ("tissue", "pen", "blur", "white")


@dataclass(frozen=True)
class TileOptions:
    """How slides are tiled (every ``pathssl tile`` option that changes the output).

    ``mpp``: target micrometres per pixel of the tiles (ignored when ``magnification`` is set:
    then mpp = 10 / magnification). ``size``/``overlap`` in tile pixels. ``min_tissue``: keep a
    tile when at least this fraction of its footprint is tissue. ``assume_mpp``: level-0 mpp for
    slides that record none. ``codec``: jpeg | png | zstd (the last two lossless).
    """

    mpp: float = 0.5
    magnification: float | None = None
    size: int = 224
    overlap: int = 0
    min_tissue: float = 0.5
    assume_mpp: float | None = None
    codec: str = "jpeg"
    quality: int = 90
    subsampling: str = "420"
    mask_mpp: float = 8.0
    shard_tiles: int = SHARD_TILES
    max_upsample: float = 1.10
    fast_reader: bool = True
    band_tiles: int = 16

    @property
    def target_mpp(self) -> float:
        return 10.0 / self.magnification if self.magnification else self.mpp

    def validate(self) -> None:
        if self.magnification is not None and self.magnification <= 0:
            raise ConfigError(f"--magnification must be > 0, got {self.magnification}")
        if not self.target_mpp > 0:
            raise ConfigError(f"--mpp must be > 0, got {self.mpp}")
        if self.assume_mpp is not None and not self.assume_mpp > 0:
            raise ConfigError(f"--assume-mpp must be > 0 um/px, got {self.assume_mpp}")
        if self.size < 8:
            raise ConfigError(f"--size must be >= 8 px, got {self.size}")
        if not 0 <= self.overlap < self.size:
            raise ConfigError(f"--overlap must be in [0, size), got {self.overlap}")
        if not 0 <= self.min_tissue <= 1:
            raise ConfigError(f"--min-tissue must be in [0, 1], got {self.min_tissue}")
        if self.codec not in FORMATS:
            raise ConfigError(f"--codec must be one of {FORMATS}, got {self.codec!r}")
        if self.subsampling not in ("420", "422", "444"):
            raise ConfigError(f"JPEG subsampling must be 420, 422 or 444, not {self.subsampling}")
        if not 1 <= self.quality <= 100:
            raise ConfigError(f"--quality must be in [1, 100], got {self.quality}")

    def signature(self) -> dict[str, Any]:
        """The options that define a store's content (a store is reused only if they match)."""
        keys: tuple[str, ...] = ("size", "overlap", "min_tissue", "codec", "quality", "subsampling")
        keys += ("mask_mpp",)
        keys += ("shard_tiles",)
        return {"target_mpp": self.target_mpp, **{k: getattr(self, k) for k in keys}}


@dataclass
class SlidePlan:
    """Everything a tile job needs (picklable) plus what finishing the store needs."""

    path: str
    slide_id: str
    level: int
    grid: Grid
    tmp: str
    codec: str
    quality: int
    subsampling: str
    saturation_threshold: float
    fast_reader: bool
    band_tiles: int
    shard_tiles: int
    rows: np.ndarray  # (N,) grid row of each kept tile, row-major order
    cols: np.ndarray  # (N,)
    mask_tissue: np.ndarray  # (N,) float32 tissue fraction of the footprint (selection score)
    thumbnail: np.ndarray
    tissue_mask: np.ndarray
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def n_tiles(self) -> int:
        return int(self.rows.size)


def plan_slide(inp: SlideInput, opts: TileOptions, tmp: Path) -> SlidePlan:
    """Open the slide, resolve its mpp, pick the level, find tissue and the tiles to keep."""
    from tiling import qc

    # resolution, level and scale: the one slide-at-mpp reader (nuclei prediction uses it too)
    src = SlideAtMpp(
        inp.path,
        opts.target_mpp,
        assume_mpp=opts.assume_mpp,
        max_upsample=opts.max_upsample,
        fast=opts.fast_reader,
    )
    slide = src.slide
    try:
        props = dict(slide.properties)
        res, choice = src.resolution, src.choice
        # thumbnail from the coarsest level at or finer than mask_mpp
        t_level = 0
        for lv, ds in enumerate(slide.level_downsamples):
            if res.mpp * ds <= opts.mask_mpp:
                t_level = lv
        t_ds = float(slide.level_downsamples[t_level])
        factor = thumbnail_factor(res.mpp * t_ds, opts.mask_mpp)
        reader = make_reader(inp.path, slide, t_level, fast=opts.fast_reader)
        try:
            thumb = stream_thumbnail(reader, factor)
        finally:
            reader.close()
        thumb_mpp = res.mpp * t_ds * factor
        mask, tissue_params = qc.tissue_mask(thumb, thumb_mpp)
        dims = (int(slide.dimensions[0]), int(slide.dimensions[1]))
        grid = make_grid(dims, choice.downsample, choice.scale, opts.size, opts.overlap)
        frac = mask_fractions(mask, grid, t_ds * factor)
        rows, cols = np.nonzero(frac >= opts.min_tissue)
        attrs = {
            "slide": {
                "id": inp.slide_id,
                "path": str(inp.path.resolve()),
                "name": inp.path.name,
                "bytes": sum(f.stat().st_size for f in inp.files),
                "vendor": props.get("openslide.vendor", "unknown"),
                "level0_dims": list(dims),
                "level_downsamples": [float(d) for d in slide.level_downsamples],
                "fingerprint": fingerprint(inp.files),
            },
            "mpp": {
                "slide": res.mpp,
                "source": res.source,
                "target": opts.target_mpp,
                "tile": choice.tile_mpp,
            },
            "tile": {
                "size": opts.size,
                "overlap": opts.overlap,
                "stride": grid.stride,
                "read_level": choice.level,
                "downsample": choice.downsample,
                "scale": choice.scale,
                "level0_size": opts.size * grid.level0_per_tile_px,
                "codec": opts.codec,
                "quality": opts.quality if opts.codec == "jpeg" else None,
                "subsampling": opts.subsampling if opts.codec == "jpeg" else None,
                "grid": [grid.rows, grid.cols],
                "shard_tiles": opts.shard_tiles,
                "min_tissue": opts.min_tissue,
            },
            "tissue": {
                **tissue_params,
                "mask_mpp": thumb_mpp,
                "mask_downsample": t_ds * factor,
                "fraction": float(mask.mean()) if mask.size else 0.0,
            },
            "qc": {
                "names": [*QC_NAMES, "mask_tissue"],
                "colour_step": qc_steps(opts.size)[0],
                "blur_step": qc_steps(opts.size)[1],
                "saturation_threshold": float(tissue_params.get("threshold", 20)),
            },
            "thumbnail": {"mpp": thumb_mpp, "downsample": t_ds * factor, "level": t_level},
            "options": opts.signature(),
            "pathssl_version": __version__,
        }
        if grid.rows == 0 or grid.cols == 0:
            attrs["note"] = (
                f"slide ({dims[0]} x {dims[1]} px at {res.mpp:g} um/px) is smaller than one "
                f"{opts.size} px tile at {choice.tile_mpp:g} um/px"
            )
        return SlidePlan(
            path=str(inp.path),
            slide_id=inp.slide_id,
            level=choice.level,
            grid=grid,
            tmp=str(tmp),
            codec=opts.codec,
            quality=opts.quality,
            subsampling=opts.subsampling,
            saturation_threshold=float(tissue_params.get("threshold", 20)),
            fast_reader=opts.fast_reader,
            band_tiles=opts.band_tiles,
            shard_tiles=opts.shard_tiles,
            rows=rows.astype(np.int64),
            cols=cols.astype(np.int64),
            mask_tissue=frac[rows, cols].astype(np.float32),
            thumbnail=thumb,
            tissue_mask=mask,
            attrs=attrs,
        )
    finally:
        src.close()


def _band(
    reader: Any, grid: Grid, row: int, col: int, n: int, out: np.ndarray | None = None
) -> np.ndarray:
    """``n`` neighbouring tiles of one grid row side by side: (S, n * S, 3) uint8 band, tile k
    = ``band[:, k * S:(k + 1) * S]`` (written into ``out`` if given; it may be a strided view).
    Without resize or overlap it is one read of the level."""
    s, side = grid.size, grid.level_size
    xs = grid.level_x(np.arange(col, col + n))
    y = int(grid.level_x(row))
    if side == s and grid.stride == s:
        return reader.read(int(xs[0]), y, n * s, s, out=out)
    region = reader.read(int(xs[0]), y, int(xs[-1] - xs[0]) + side, side)
    band = np.empty((s, n * s, 3), np.uint8) if out is None else out
    for k, x in enumerate(xs - xs[0]):  # the resize rule of tiling.slide.SlideAtMpp.read
        band[:, k * s : (k + 1) * s] = resize_rgb(region[:, x : x + side], s, s)
    return band


def qc_steps(size: int, colour: int = 8, blur: int = 4) -> tuple[int, int]:
    """Subsampling steps for the QC scores that divide the tile size."""

    def fit(step: int) -> int:
        while size % step:
            step -= 1
        return step

    return fit(colour), fit(blur)


def tile_job(
    plan: SlidePlan,
    start: int,
    stop: int,
    progress: Callable[[int], None] | None = None,
) -> tuple[int, dict[str, np.ndarray]]:
    """Cut, score, encode and write tiles ``start:stop`` of a plan; returns (start, QC scores)."""
    from tiling import qc

    slide = open_slide(plan.path)
    reader = make_reader(plan.path, slide, plan.level, fast=plan.fast_reader)
    scores = {name: np.zeros(stop - start, np.float32) for name in QC_NAMES}
    rows, cols = plan.rows, plan.cols
    tiles_dir = os.open(Path(plan.tmp) / "tiles", os.O_RDONLY)
    k_shard = plan.shard_tiles
    size = plan.grid.size
    colour_step, blur_step = qc_steps(size)
    band_buf = np.empty((size, plan.band_tiles * size, 3), np.uint8)  # reused for every band
    tile_buf = np.empty((size, size, 3), np.uint8)
    pending: list[bytes | None] = []  # encoded tiles of the shard being filled

    def flush(end: int) -> None:
        """Write the shard that ends at tile ``end`` (exclusive) and holds ``pending``."""
        shard = (end - 1) // k_shard
        chunks = pending + [None] * (k_shard - len(pending))
        fd = os.open(
            shard_name(shard), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644, dir_fd=tiles_dir
        )
        try:
            write_all(fd, shard_parts(chunks))
        finally:
            os.close(fd)
        pending.clear()

    try:
        i = start
        while i < stop:
            j = i + 1
            while (
                j < stop
                and j - i < plan.band_tiles
                and rows[j] == rows[i]
                and cols[j] == cols[j - 1] + 1
            ):
                j += 1
            band = _band(
                reader,
                plan.grid,
                int(rows[i]),
                int(cols[i]),
                j - i,
                out=band_buf[:, : (j - i) * size],
            )
            band_scores = qc.band_qc(
                band,
                j - i,
                saturation_threshold=plan.saturation_threshold,
                colour_step=colour_step,
                blur_step=blur_step,
            )
            for name in QC_NAMES:
                scores[name][i - start : j - start] = band_scores[name]
            for k in range(j - i):
                # a contiguous copy in a small reused buffer encodes faster than the strided
                # band view (it stays in the core's cache)
                np.copyto(tile_buf, band[:, k * size : (k + 1) * size])
                pending.append(encode_tile(tile_buf, plan.codec, plan.quality, plan.subsampling))
                if (i + k + 1) % k_shard == 0 or i + k + 1 == stop:
                    flush(i + k + 1)
            if progress is not None:
                progress(j - i)
            i = j
    finally:
        os.close(tiles_dir)
        reader.close()
        slide.close()
    return start, scores


def split_jobs(
    n: int, workers: int, min_tiles: int = 256, shard_tiles: int = SHARD_TILES
) -> list[tuple[int, int]]:
    """Index ranges covering ``range(n)``, on shard boundaries (a shard has one writer): one
    job for small slides, more for large ones."""
    if n == 0:
        return []
    jobs = max(1, min(workers * 4, n // min_tiles))
    shards = -(-n // shard_tiles)
    bounds = np.unique(np.linspace(0, shards, jobs + 1).round().astype(int)) * shard_tiles
    bounds[-1] = n
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]


def start_store(plan: SlidePlan) -> StoreWriter:
    """Create the temporary store folder for a plan."""
    return StoreWriter(
        Path(plan.tmp),
        plan.n_tiles,
        plan.grid.size,
        plan.codec,
        plan.quality,
        plan.subsampling,
        plan.shard_tiles,
    )


def finish_slide(
    plan: SlidePlan, writer: StoreWriter, scores: dict[str, np.ndarray], final: Path
) -> None:
    """Write coords, QC, thumbnail, mask and attrs (``complete`` last), then rename into place."""
    coords = plan.grid.level0_coords(plan.rows, plan.cols)
    qc = {**scores, "mask_tissue": plan.mask_tissue}
    attrs = {**plan.attrs, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    writer.finish(coords, qc, plan.thumbnail, plan.tissue_mask, attrs)
    commit(Path(plan.tmp), final)
