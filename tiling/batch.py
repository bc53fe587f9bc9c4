"""Tiling a batch of slides: locks, resume, worker processes, manifest, report.

Guarantees:

* one bad slide never stops the batch: it gets status ``failed`` with the reason;
* a store appears under its final name only when complete (temp folder + rename);
* a rerun skips complete stores whose slide fingerprint and options match and whose files are
  as written (:func:`tiling.store.check_store`), and redoes the rest; a damaged store is redone
  and its manifest row says so (so ``kill -9`` at any moment, then a rerun, gives the same
  stores as one uninterrupted run);
* two runs on the same output never write the same slide at once (per-slide file lock);
* nothing the run did not write is replaced: the output folder must be new, empty or an earlier
  tiling output, may not be or hold an input, and a ``<slide_id>.zarr`` there that is no tile
  store fails that slide instead of being replaced.
"""

from __future__ import annotations

import csv
import errno
import io
import os
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock, Timeout

from tiling.atomic import atomic_write
from tiling.discover import SlideInput, discover_slides, fingerprint
from tiling.errors import ConfigError, OutputError, SlideError, UsageError
from tiling.outputs import check_output_dir
from tiling.pipeline import (
    QC_NAMES,
    SlidePlan,
    TileOptions,
    finish_slide,
    plan_slide,
    split_jobs,
    start_store,
    tile_job,
)
from tiling.store import check_store, find_stores, read_attrs, remove_tree, verify_store

OVERVIEW_MAX_SIDE = 1600  # px, longest side of the overview PNGs
MANIFEST_COLUMNS = ["slide", "status", "n_tiles", "mpp", "mpp_source", "seconds", "error"]


@dataclass
class SlideResult:
    """One manifest row. status: ok | failed | no_tissue | skipped."""

    slide: str
    slide_id: str
    status: str
    n_tiles: int = 0
    mpp: float | None = None
    mpp_source: str = ""
    seconds: float = 0.0
    error: str = ""
    store: str = ""
    overview: str = ""

    def row(self) -> dict[str, Any]:
        mpp = "" if self.mpp is None else f"{self.mpp:.6g}"
        return {
            "slide": self.slide,
            "status": self.status,
            "n_tiles": self.n_tiles,
            "mpp": mpp,
            "mpp_source": self.mpp_source,
            "seconds": f"{self.seconds:.2f}",
            "error": self.error,
            "slide_id": self.slide_id,
        }


@dataclass
class _Active:
    plan: SlidePlan
    result: SlideResult
    lock: FileLock
    started: float
    writer: Any
    pending: int
    scores: dict[str, np.ndarray] = field(default_factory=dict)
    failed: str = ""


def write_manifest(out: Path, results: Sequence[SlideResult]) -> Path:
    """``<out>/manifest.csv``: one row per input slide (written atomically)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[*MANIFEST_COLUMNS, "slide_id"], lineterminator="\n")
    writer.writeheader()
    for r in results:
        writer.writerow(r.row())
    path = out / "manifest.csv"
    atomic_write(path, buf.getvalue())
    return path


def is_tile_store(path: Path) -> bool:
    """Whether ``path`` holds a tile store (complete or not) that ``pathssl tile`` wrote."""
    attrs = read_attrs(path)
    if attrs is None:  # a store whose zarr.json was lost still has its arrays
        return (path / "tiles" / "zarr.json").is_file() and (path / "coords").is_dir()
    return "tile" in attrs and "slide" in attrs


def is_tiling_output(out: Path) -> bool:
    """Whether the folder ``out`` is an earlier ``pathssl tile`` output (locks, a manifest with
    the tiling columns, or a tile store)."""
    if (out / ".locks").is_dir():
        return True
    try:
        with open(out / "manifest.csv") as fh:
            if fh.readline().startswith(",".join(MANIFEST_COLUMNS[:3])):
                return True
    except OSError:
        pass
    return any(is_tile_store(p) for p in out.glob("*.zarr"))


def _reusable(final: Path, inp: SlideInput, opts: TileOptions) -> tuple[dict[str, Any] | None, str]:
    """(attrs of a store that can be kept as is, or None; why it is redone when damaged)."""
    attrs = read_attrs(final)
    if attrs is None and final.exists():
        return None, "damaged store redone (zarr.json missing)"
    if not attrs or not attrs.get("complete"):
        return None, ""
    if attrs.get("options") != opts.signature():
        return None, ""
    if attrs.get("slide", {}).get("fingerprint") != fingerprint(inp.files):
        return None, ""
    problems = check_store(final)
    if problems:
        more = f" and {len(problems) - 1} more" if len(problems) > 1 else ""
        return None, f"damaged store redone ({problems[0]}{more})"
    return attrs, ""


def _error_text(exc: BaseException, where: str) -> str:
    if isinstance(exc, SlideError):
        return exc.reason
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return f"disk full while writing {where}; nothing was kept for this slide"
    if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"permission denied writing {where}; nothing was kept for this slide"
    text = str(exc).replace("\n", " ").strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _prepare_out(out: Path) -> None:
    try:
        for sub in ("", ".locks", ".tmp", "overviews"):
            (out / sub).mkdir(parents=True, exist_ok=True)
        probe = out / ".tmp" / f".probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OutputError(
            f"cannot write to output folder {out}: {exc.strerror or exc}; choose a writable --out"
        ) from None


class _InlineExecutor(Executor):
    """Runs jobs at once in this process (``workers=1``), with per-band progress."""

    def __init__(self, progress: Callable[[int], None] | None) -> None:
        self.progress = progress

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        fut: Future[Any] = Future()
        try:
            fut.set_result(fn(*args, progress=self.progress, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller via the future
            fut.set_exception(exc)
        return fut


def tile_slides(
    inputs: Sequence[str | Path],
    out: str | Path,
    options: TileOptions | None = None,
    *,
    workers: int = 1,
    shard: tuple[int, int] | None = None,
    progress: bool = True,
    report: bool = True,
    **overrides: Any,
) -> list[SlideResult]:
    """Tile every slide in ``inputs`` (files or folders) into ``<out>/<slide_id>.zarr``.

    ``options`` (or keyword overrides such as ``mpp=0.5, size=224``) set the tiling;
    ``workers`` processes cut tiles (across slides, and within large slides); ``shard=(i, n)``
    takes every n-th slide starting at i (0-based) for cluster array jobs. Writes
    ``<out>/manifest.csv`` and ``<out>/report.html`` and returns one result per slide.
    """
    opts = replace(options or TileOptions(), **overrides)
    opts.validate()
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    out = Path(out)
    slides, _ignored = discover_slides(list(inputs))
    if shard is not None:
        index, count = shard
        if not (count >= 1 and 0 <= index < count):
            raise ConfigError(f"--shard {index}/{count}: need 0 <= i < N")
        slides = slides[index::count]
    check_output_dir(out, inputs=inputs, is_ours=is_tiling_output, command="tile")
    _prepare_out(out)
    from tqdm import tqdm

    bar_slides = tqdm(total=len(slides), desc="slides", unit="slide", disable=not progress)
    bar_tiles = tqdm(desc="tiles", unit="tile", disable=not progress, smoothing=0.1)
    results: dict[str, SlideResult] = {}
    order = [s.slide_id for s in slides]
    executor: Executor
    if workers > 1:
        import multiprocessing as mp

        executor = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"))
    else:
        executor = _InlineExecutor(bar_tiles.update)
    active: dict[str, _Active] = {}
    futures: dict[Future[Any], str] = {}

    def done(res: SlideResult) -> None:
        results[res.slide_id] = res
        bar_slides.update(1)
        write_manifest(out, [results[i] for i in order if i in results])

    def finish(state: _Active) -> None:
        res = state.result
        final = out / f"{res.slide_id}.zarr"
        try:
            if state.failed:
                raise RuntimeError(state.failed)
            finish_slide(state.plan, state.writer, state.scores, final)
            res.store = str(final)
        except BaseException as exc:
            remove_tree(Path(state.plan.tmp))
            res.status, res.error = "failed", state.failed or _error_text(exc, str(final))
            res.n_tiles = 0
        finally:
            state.lock.release()
        if res.store:
            try:  # a picture that cannot be drawn never fails a slide whose store is written
                res.overview = _overview(out, state.plan, report)
            except Exception as exc:
                res.error = f"overview not drawn: {_error_text(exc, 'overview')}"
        res.seconds = time.perf_counter() - state.started
        done(res)

    def start(inp: SlideInput, lock: FileLock) -> None:
        t0 = time.perf_counter()
        res = SlideResult(slide=str(inp.path), slide_id=inp.slide_id, status="ok")
        final = out / f"{inp.slide_id}.zarr"
        for stale in (out / ".tmp").glob(f"{inp.slide_id}.*.zarr"):
            remove_tree(stale)  # left by a killed run: we hold the lock, so nobody writes it
        if final.exists() and not is_tile_store(final):
            lock.release()
            res.status = "failed"
            res.error = (
                f"{final} exists and is not a tile store; it is left as it is: move it away "
                "or choose another --out"
            )
            done(res)
            return
        attrs, damage = _reusable(final, inp, opts)
        res.error = damage
        if attrs is not None:
            lock.release()
            res.status, res.n_tiles = "skipped", int(attrs["tile"].get("n_tiles", 0))
            res.mpp, res.mpp_source = attrs["mpp"]["slide"], attrs["mpp"]["source"]
            res.store, res.overview = str(final), _overview_path(out, inp.slide_id, report)
            res.seconds = time.perf_counter() - t0
            done(res)
            return
        tmp = out / ".tmp" / f"{inp.slide_id}.{os.getpid()}.zarr"
        try:
            plan = plan_slide(inp, opts, tmp)
            plan.attrs["tile"]["n_tiles"] = plan.n_tiles
            res.mpp, res.mpp_source = plan.attrs["mpp"]["slide"], plan.attrs["mpp"]["source"]
            res.n_tiles = plan.n_tiles
            if plan.n_tiles == 0:
                res.status = "no_tissue"
                res.error = plan.attrs.get("note", "no tissue found")
            writer = start_store(plan)
        except Exception as exc:
            remove_tree(tmp)
            lock.release()
            res.status, res.error = "failed", _error_text(exc, str(tmp))
            if damage:
                res.error += f" ({damage.replace(' redone', ' not redone')})"
            res.seconds = time.perf_counter() - t0
            done(res)
            return
        jobs = split_jobs(plan.n_tiles, workers, shard_tiles=plan.shard_tiles)
        state = _Active(plan, res, lock, t0, writer, len(jobs))
        state.scores = {k: np.zeros(plan.n_tiles, np.float32) for k in QC_NAMES}
        active[inp.slide_id] = state
        if not jobs:
            finish(active.pop(inp.slide_id))
            return
        for a, b in jobs:
            futures[executor.submit(tile_job, plan, a, b)] = inp.slide_id

    def collect(fut: Future[Any]) -> None:
        sid = futures.pop(fut)
        state = active[sid]
        try:
            a, scores = fut.result()
            for k, v in scores.items():
                state.scores[k][a : a + v.size] = v
            if workers > 1:
                bar_tiles.update(int(next(iter(scores.values())).size))
        except Exception as exc:
            state.failed = state.failed or _error_text(exc, str(state.plan.tmp))
        state.pending -= 1
        if state.pending == 0:
            finish(active.pop(sid))

    try:
        queue = list(slides)
        deferred: list[SlideInput] = []
        blocking = False
        while queue or futures:
            while queue and len(futures) < max(2, 2 * workers):
                inp = queue.pop(0)
                lock = FileLock(str(out / ".locks" / f"{inp.slide_id}.lock"))
                try:
                    lock.acquire(timeout=-1 if blocking else 0)
                except Timeout:
                    deferred.append(inp)  # another run has it: come back at the end
                    continue
                start(inp, lock)
            if futures:
                finished, _ = wait(list(futures), return_when=FIRST_COMPLETED)
                for fut in finished:
                    collect(fut)
            if not queue and not futures and deferred:
                queue, deferred, blocking = deferred, [], True
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
        bar_tiles.close()
        bar_slides.close()
    ordered = [results[i] for i in order if i in results]
    write_manifest(out, ordered)
    if report:
        from tiling.report import write_report

        write_report(out, [{**r.row(), "overview": r.overview} for r in ordered])
    return ordered


def _overview_path(out: Path, slide_id: str, enabled: bool) -> str:
    p = out / "overviews" / f"{slide_id}.png"
    return str(p.relative_to(out)) if enabled and p.exists() else ""


def _overview(out: Path, plan: SlidePlan, enabled: bool) -> str:
    if not enabled:
        return ""
    from tiling.report import render_overview

    coords = plan.grid.level0_coords(plan.rows, plan.cols)
    target = out / "overviews" / f"{plan.slide_id}.png"
    thumb, mask = plan.thumbnail, plan.tissue_mask
    shrink = -(-max(thumb.shape[:2]) // OVERVIEW_MAX_SIDE)
    if shrink > 1:  # a picture to look at, not data: keep it light to draw and to load
        import cv2

        size = (max(1, thumb.shape[1] // shrink), max(1, thumb.shape[0] // shrink))
        thumb = cv2.resize(thumb, size, interpolation=cv2.INTER_AREA)
        mask = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
    render_overview(
        thumb,
        mask,
        coords,
        plan.grid.size * plan.grid.level0_per_tile_px,
        tuple(plan.attrs["slide"]["level0_dims"]),
        plan.mask_tissue,
        target,
        title=f"{plan.slide_id}: {plan.n_tiles} tiles at {plan.attrs['mpp']['tile']:.3g} um/px",
        score_name="tissue",
    )
    return str(target.relative_to(out))


def summarize(results: Sequence[SlideResult], stream: Any = None) -> int:
    """Print a summary (to ``stream``, default the current ``sys.stdout``); return the exit code
    (1 if any slide failed)."""
    stream = sys.stdout if stream is None else stream
    counts: dict[str, int] = {}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    tiles = sum(r.n_tiles for r in results)
    order = ["ok", "failed", "no_tissue", "skipped"]
    keys = order + sorted(set(counts) - set(order))
    parts = ", ".join(f"{counts[s]} {s}" for s in keys if counts.get(s))
    print(f"{len(results)} slides ({parts or 'none'}); {tiles} tiles", file=stream)
    for r in results:
        if r.status == "failed":
            print(f"  FAILED {r.slide}: {r.error}", file=stream)
        elif r.error.startswith("damaged store redone"):
            print(f"  REDONE {r.slide}: {r.error}", file=stream)
    return 1 if counts.get("failed") else 0


def verify_output(paths: Sequence[str | Path]) -> list[tuple[Path, list[str]]]:
    """Fully check every tile store in ``paths`` (stores or folders of stores):
    :func:`tiling.store.verify_store` decodes every chunk. Returns (store, problems) pairs,
    problems empty for a whole store."""
    stores = find_stores(paths)
    for p in map(Path, paths):
        if p.is_dir() and p.suffix != ".zarr":  # a folder's stores whose zarr.json is gone
            named = {s.name for s in stores}
            stores += sorted(q for q in p.glob("*.zarr") if q.is_dir() and q.name not in named)
    if not stores:
        raise UsageError(f"no tile store (*.zarr) in {' '.join(map(str, paths))}; check --verify")
    return [(s, verify_store(s)) for s in stores]


def tile_slide(path: str | Path, out: str | Path, **kwargs: Any) -> SlideResult:
    """Tile one slide (see :func:`tile_slides`)."""
    return tile_slides([path], out, **kwargs)[0]
