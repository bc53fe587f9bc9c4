"""Peak memory of ``pathssl tile`` for two slide sizes: it must not grow with the slide.

Each slide is tiled in its own child process (one worker) and the child's peak resident memory
(``ru_maxrss``) is reported with the slide's pixel count::

    python benchmarks/bench_tiling_memory.py              # 8,192 px and 32,768 px slides
    python benchmarks/bench_tiling_memory.py --sizes 4096 16384
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from make_slide import build_benchmark_slide  # noqa: E402

CHILD = """
import json, resource, sys, time
from tiling import tile_slides
t = time.perf_counter()
(r,) = tile_slides([sys.argv[1]], sys.argv[2], progress=False, report=False)
print(json.dumps({"tiles": r.n_tiles, "status": r.status, "seconds": time.perf_counter() - t,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def measure(slide: Path, out: Path) -> dict[str, float]:
    shutil.rmtree(out, ignore_errors=True)
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(slide), str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    shutil.rmtree(out, ignore_errors=True)
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[8192, 32768])
    ap.add_argument("--out", type=Path, default=Path("bench_out"))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    rows = []
    for size in args.sizes:
        name = "bench-slide.tiff" if size == 32768 else f"bench-slide-{size}.tiff"
        slide = build_benchmark_slide(args.out / name, size=size)
        res = measure(slide, args.out / "memory-run")
        res["size"] = size
        rows.append(res)
        print(
            f"{size:>6} px slide ({size * size / 1e9:5.2f} Gpx): {res['tiles']:>6} tiles in "
            f"{res['seconds']:6.1f} s, peak RSS {res['peak_rss_mb']:7.1f} MB",
            flush=True,
        )
    if len(rows) >= 2:
        growth = rows[-1]["peak_rss_mb"] / rows[0]["peak_rss_mb"]
        area = (rows[-1]["size"] / rows[0]["size"]) ** 2
        print(f"slide area x{area:.0f} -> peak memory x{growth:.2f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    _ = resource  # (ru_maxrss is read in the child)


if __name__ == "__main__":
    main()
