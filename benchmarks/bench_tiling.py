"""Tiling speed per core: pathssl vs a naive openslide loop vs the decode+encode floor.

All three run in one process, one after the other, on the same benchmark slide (built by
``make_slide.py`` if missing), 224 px tiles at 0.5 mpp (= level 0 of that slide):

(a) naive: tissue mask on a thumbnail, then one ``openslide.read_region`` per kept tile and one
    zarr chunk per tile (plain zarr v3 API; JPEG q90 through ``tiling.codec`` when it exists,
    else zarr's default zstd), one process;
(b) floor: the same tiles; each needed source JPEG tile of the TIFF decoded exactly once, each
    output tile JPEG-encoded once at q90, nothing written (tissue detection not counted);
(c) pathssl: ``tiling.tile_slides([slide], out, mpp=0.5, size=224, workers=1)``, timed as a
    whole (tissue detection, QC, store, manifest and report included).

Prints tiles, seconds and tiles/s per core (one process, one thread for OpenMP/OpenCV) and the
ratios pathssl/naive (target >= 4.5) and pathssl/floor (target >= 0.70)::

    python benchmarks/bench_tiling.py                   # 32k x 32k slide, full run
    python benchmarks/bench_tiling.py --size 8192       # quick run on a smaller slide
    python benchmarks/bench_tiling.py --limit-tiles 2000 --json bench_out/tiling.json
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import asdict, dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import cv2  # noqa: E402
import imagecodecs  # noqa: E402
import numpy as np  # noqa: E402

cv2.setNumThreads(1)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from make_slide import build_benchmark_slide  # noqa: E402

TILE = 224
MPP = 0.5
MIN_TISSUE = 0.5
QUALITY = 90
MASK_DOWNSAMPLE = 16  # thumbnail pixel = 16 x 16 level-0 pixels
TARGET_NAIVE = 4.5
TARGET_FLOOR = 0.70


@dataclass
class Result:
    method: str
    tiles: int
    seconds: float
    cpu_seconds: float
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        """Tiles per second per core: one process and one compute thread, so wall-clock based."""
        return self.tiles / self.seconds if self.seconds > 0 else float("nan")


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _timed(fn: Callable[[], tuple[int, dict[str, Any]]], method: str) -> Result:
    c0, t0 = _cpu(), time.perf_counter()
    tiles, notes = fn()
    return Result(method, tiles, time.perf_counter() - t0, _cpu() - c0, notes)


# --------------------------------------------------------------------------------------------
# Tissue mask and tile set (shared by the naive loop and the floor)


def thumbnail_mask(slide: Any) -> tuple[np.ndarray, str]:
    """Tissue mask at 1/MASK_DOWNSAMPLE of level 0 (8 um/px at 0.5 mpp), and the method used.

    ``tiling.qc.tissue_mask`` (Otsu on saturation + morphology) when it is importable, else a
    plain Otsu threshold on the thumbnail's saturation.
    """
    w, h = slide.dimensions
    size = (max(1, w // MASK_DOWNSAMPLE), max(1, h // MASK_DOWNSAMPLE))
    thumb = np.asarray(slide.get_thumbnail(size).convert("RGB"))
    try:
        from tiling.qc import tissue_mask
    except ImportError:
        sat = cv2.cvtColor(thumb, cv2.COLOR_RGB2HSV)[..., 1]
        thr, otsu = cv2.threshold(sat, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        return np.asarray(otsu) > 0, f"Otsu on thumbnail saturation (threshold {thr:.0f})"
    mpp = float(slide.properties.get("openslide.mpp-x", MPP)) * w / thumb.shape[1]
    mask, info = tissue_mask(thumb, mpp)
    thr = info.get("threshold", "?")
    return np.asarray(mask) > 0, f"tiling.qc.tissue_mask ({mpp:.1f} um/px thumbnail, S >= {thr})"


def tile_set(mask: np.ndarray, width: int, height: int, limit: int | None) -> np.ndarray:
    """(N, 2) level-0 x, y of grid tiles whose mask fraction >= MIN_TISSUE, row-major."""
    ds_x, ds_y = width / mask.shape[1], height / mask.shape[0]
    integral = cv2.integral(mask.astype(np.uint8)).astype(np.float64)
    xs = np.arange(0, width - TILE + 1, TILE)
    ys = np.arange(0, height - TILE + 1, TILE)
    gx, gy = np.meshgrid(xs, ys)
    x0 = np.clip(np.floor(gx / ds_x).astype(int), 0, mask.shape[1] - 1)
    y0 = np.clip(np.floor(gy / ds_y).astype(int), 0, mask.shape[0] - 1)
    x1 = np.clip(np.ceil((gx + TILE) / ds_x).astype(int), x0 + 1, mask.shape[1])
    y1 = np.clip(np.ceil((gy + TILE) / ds_y).astype(int), y0 + 1, mask.shape[0])
    area = (x1 - x0) * (y1 - y0)
    inside = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    keep = inside / area >= MIN_TISSUE
    coords = np.stack([gx[keep], gy[keep]], axis=1).astype(np.int64)
    return coords[:limit] if limit is not None else coords


# --------------------------------------------------------------------------------------------
# (a) naive


def _zarr_tile_codec() -> tuple[dict[str, Any], str]:
    try:
        from tiling.codec import ImageCodec
    except ImportError:
        return {}, "zarr default compressor (zstd): tiling.codec not available"
    return {"serializer": ImageCodec(format="jpeg", quality=QUALITY), "compressors": None}, (
        f"JPEG q{QUALITY} via tiling.codec.ImageCodec"
    )


def run_naive(
    slide_path: Path, out: Path, limit: int | None, expected: np.ndarray
) -> tuple[int, dict[str, Any]]:
    import openslide
    import zarr

    zarr.config.set({"threading.max_workers": 1})
    t0 = time.perf_counter()
    slide = openslide.OpenSlide(str(slide_path))
    mask, method = thumbnail_mask(slide)
    coords = tile_set(mask, *slide.dimensions, limit)
    t_mask = time.perf_counter() - t0
    if not np.array_equal(coords, expected):
        raise RuntimeError("naive tile set differs from the floor's")
    codec_kwargs, codec_name = _zarr_tile_codec()
    root = zarr.open_group(str(out), mode="w")
    tiles = root.create_array(
        "tiles",
        shape=(len(coords), TILE, TILE, 3),
        chunks=(1, TILE, TILE, 3),
        dtype="uint8",
        **codec_kwargs,
    )
    for i, (x, y) in enumerate(coords):
        region = slide.read_region((int(x), int(y)), 0, (TILE, TILE)).convert("RGB")
        tiles[i] = np.asarray(region)
    root.create_array("coords", data=coords)
    slide.close()
    return len(coords), {"mask": method, "mask_seconds": round(t_mask, 3), "codec": codec_name}


# --------------------------------------------------------------------------------------------
# (b) floor


def run_floor(slide_path: Path, coords: np.ndarray) -> tuple[int, dict[str, Any]]:
    import tifffile

    with tifffile.TiffFile(str(slide_path)) as tif:
        page = tif.pages.first
        tw, th = int(page.tilewidth), int(page.tilelength)
        cols = -(-int(page.imagewidth) // tw)
        offsets = np.asarray(page.dataoffsets, np.int64)
        counts = np.asarray(page.databytecounts, np.int64)
        tables = page.jpegtables
        photometric = int(page.photometric)
    colorspace = "RGB" if photometric == 2 else None  # Aperio-style RGB JPEG; else YCbCr
    needed = {
        ty * cols + tx
        for x, y in coords
        for ty in range(int(y) // th, (int(y) + TILE - 1) // th + 1)
        for tx in range(int(x) // tw, (int(x) + TILE - 1) // tw + 1)
    }
    fd = os.open(str(slide_path), os.O_RDONLY)
    cache: dict[int, np.ndarray] = {}
    decoded = 0
    encoded_bytes = 0
    buf = np.empty((TILE, TILE, 3), np.uint8)
    try:
        for x, y in coords:
            x, y = int(x), int(y)
            ty0, ty1 = y // th, (y + TILE - 1) // th
            if cache:  # tiles are row-major: source rows above ty0 are never needed again
                for key in [k for k in cache if k // cols < ty0]:
                    del cache[key]
            for ty in range(ty0, ty1 + 1):
                for tx in range(x // tw, (x + TILE - 1) // tw + 1):
                    idx = ty * cols + tx
                    src = cache.get(idx)
                    if src is None:
                        data = os.pread(fd, int(counts[idx]), int(offsets[idx]))
                        src = imagecodecs.jpeg8_decode(data, tables=tables, colorspace=colorspace)
                        cache[idx] = src
                        decoded += 1
                    ax0, ay0 = max(x, tx * tw), max(y, ty * th)
                    ax1, ay1 = min(x + TILE, (tx + 1) * tw), min(y + TILE, (ty + 1) * th)
                    buf[ay0 - y : ay1 - y, ax0 - x : ax1 - x] = src[
                        ay0 - ty * th : ay1 - ty * th, ax0 - tx * tw : ax1 - tx * tw
                    ]
            encoded_bytes += len(imagecodecs.jpeg8_encode(buf, level=QUALITY))
    finally:
        os.close(fd)
    if decoded != len(needed):
        raise RuntimeError(f"floor decoded {decoded} source tiles, {len(needed)} needed")
    return len(coords), {
        "source_tiles_decoded": decoded,
        "source_tiles_per_output_tile": round(decoded / max(1, len(coords)), 3),
        "mean_output_jpeg_bytes": round(encoded_bytes / max(1, len(coords))),
    }


# --------------------------------------------------------------------------------------------
# (c) pathssl


def _tile_slides() -> Callable[..., Any] | None:
    try:
        import tiling

        fn: Callable[..., Any] = tiling.tile_slides
        return fn
    except (ImportError, AttributeError):
        pass
    try:
        from tiling.batch import tile_slides

        return tile_slides
    except ImportError:
        return None


def run_pathssl(slide_path: Path, out: Path) -> tuple[int, dict[str, Any]]:
    tile_slides = _tile_slides()
    if tile_slides is None:
        raise RuntimeError("tiling.tile_slides is not available yet")
    results = tile_slides([slide_path], out, mpp=MPP, size=TILE, workers=1, progress=False)
    res = results[0]
    return int(res.n_tiles), {"status": res.status, "reported_seconds": round(res.seconds, 3)}


def pathssl_store_check(out: Path, slide_path: Path, naive_coords: np.ndarray) -> dict[str, Any]:
    """How the pathssl tile set compares with the naive one (fairness check, not timed)."""
    from tiling import open_store

    store = open_store(out / f"{slide_path.stem}.zarr")
    ours = {tuple(c) for c in np.asarray(store.coords).tolist()}
    theirs = {tuple(c) for c in naive_coords.tolist()}
    both = len(ours & theirs)
    return {
        "store_tiles": len(store),
        "common_with_naive": both,
        "jaccard_with_naive": round(both / max(1, len(ours | theirs)), 4),
    }


# --------------------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _warm_page_cache(path: Path) -> None:
    with path.open("rb") as fh:
        while fh.read(16 << 20):
            pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--slide", type=Path, default=None, help="default: bench_out/bench-slide.tiff")
    ap.add_argument("--size", type=int, default=32768, help="side of the built slide (px)")
    ap.add_argument("--limit-tiles", type=int, default=None, help="naive/floor: first N tiles")
    ap.add_argument("--methods", default="naive,floor,pathssl", help="comma-separated subset")
    ap.add_argument("--out", type=Path, default=REPO / "bench_out" / "run", help="scratch dir")
    ap.add_argument("--json", type=Path, default=None, help="save the results as JSON")
    ap.add_argument("--keep", action="store_true", help="keep the tile stores written")
    args = ap.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = set(methods) - {"naive", "floor", "pathssl"}
    if unknown:
        ap.error(f"unknown methods: {sorted(unknown)}")

    slide_path = args.slide
    if slide_path is None:
        name = "bench-slide.tiff" if args.size == 32768 else f"bench-slide-{args.size}.tiff"
        slide_path = REPO / "bench_out" / name
    if not slide_path.is_file() or args.slide is None:
        t0 = time.perf_counter()
        build_benchmark_slide(slide_path, size=args.size, mpp=MPP, verbose=True)
        print(f"slide ready: {slide_path} ({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
    _warm_page_cache(slide_path)

    import openslide

    with openslide.OpenSlide(str(slide_path)) as slide:
        dims = slide.dimensions
        slide_mpp = float(slide.properties.get("openslide.mpp-x", "nan"))
        vendor = slide.properties.get("openslide.vendor", "")
        mask, mask_method = thumbnail_mask(slide)
    if abs(slide_mpp - MPP) > 1e-3:
        print(f"warning: slide mpp {slide_mpp} != {MPP}: naive/floor read level 0 as is")
    coords = tile_set(mask, *dims, args.limit_tiles)
    scratch = [args.out / "naive.zarr", args.out / "pathssl"]  # only what this script writes
    for path in scratch:
        shutil.rmtree(path, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)

    results: dict[str, Result] = {}
    if "naive" in methods:
        results["naive"] = _timed(
            lambda: run_naive(slide_path, args.out / "naive.zarr", args.limit_tiles, coords),
            "naive",
        )
        os.sync()  # flush the naive store's writes now, outside every timed region
    if "floor" in methods:
        results["floor"] = _timed(lambda: run_floor(slide_path, coords), "floor")
    if "pathssl" in methods:
        try:
            res = _timed(lambda: run_pathssl(slide_path, args.out / "pathssl"), "pathssl")
            if res.notes.get("status") == "ok":
                res.notes.update(pathssl_store_check(args.out / "pathssl", slide_path, coords))
            results["pathssl"] = res
        except Exception as exc:  # report, keep the other numbers
            print(f"pathssl: not measured ({type(exc).__name__}: {exc})")

    print(
        f"slide: {slide_path.name} {dims[0]}x{dims[1]} vendor={vendor} mpp={slide_mpp:g}; "
        f"tiles {TILE} px at {MPP} mpp, min tissue {MIN_TISSUE}; CPU: {_cpu_model()}"
    )
    print(f"tile set (naive/floor): {len(coords)} tiles, mask: {mask_method}")
    print(
        f"{'method':<10}{'tiles':>9}{'seconds':>10}{'cpu s':>9}{'tiles/s/core':>14}"
        f"{'tiles/cpu-s':>13}  notes"
    )
    busy = False
    for r in results.values():
        notes = ", ".join(f"{k}={v}" for k, v in r.notes.items())
        per_cpu = r.tiles / r.cpu_seconds if r.cpu_seconds > 0 else float("nan")
        busy |= r.cpu_seconds < 0.85 * r.seconds
        print(
            f"{r.method:<10}{r.tiles:>9}{r.seconds:>10.2f}{r.cpu_seconds:>9.2f}{r.rate:>14.0f}"
            f"{per_cpu:>13.0f}  {notes}"
        )
    if busy:
        print("note: cpu time < 85% of wall time for some method: busy machine or I/O waits")
    ratios: dict[str, float] = {}
    if "pathssl" in results:
        p = results["pathssl"].rate
        for base, target in (("naive", TARGET_NAIVE), ("floor", TARGET_FLOOR)):
            if base in results:
                ratios[f"pathssl/{base}"] = p / results[base].rate
                verdict = "ok" if ratios[f"pathssl/{base}"] >= target else "BELOW TARGET"
                print(
                    f"pathssl/{base}: {ratios[f'pathssl/{base}']:.2f} "
                    f"(target >= {target:g}) {verdict}"
                )
    if not args.keep:
        for path in scratch:
            shutil.rmtree(path, ignore_errors=True)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "slide": {"path": str(slide_path), "dimensions": dims, "mpp": slide_mpp},
            "tile": TILE,
            "tile_set": {"n": len(coords), "mask": mask_method, "limit": args.limit_tiles},
            "cpu": _cpu_model(),
            "cores": os.cpu_count(),
            "results": {
                k: {
                    **asdict(r),
                    "tiles_per_s_per_core": r.rate,
                    "tiles_per_cpu_s": r.tiles / r.cpu_seconds if r.cpu_seconds > 0 else None,
                }
                for k, r in results.items()
            },
            "ratios": ratios,
            "targets": {"pathssl/naive": TARGET_NAIVE, "pathssl/floor": TARGET_FLOOR},
        }
        args.json.write_text(json.dumps(payload, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
