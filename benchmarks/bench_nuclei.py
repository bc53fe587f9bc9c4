"""WSI nuclei inference: throughput (windows/s) and peak memory for two slide-region sizes.

Each size runs in its own subprocess, so its peak RSS (``ru_maxrss``) and its ``tracemalloc``
peak (Python + NumPy allocations) belong to that size alone. Memory must not grow with the
region: windows are read, predicted and post-processed one batch at a time and nuclei are
streamed to the GeoJSON file. The slide is the realistic benchmark slide built from real H&E
pixels by ``make_slide.py`` (``bench_out/bench-slide-8192.tiff``, 0.5 mpp, made on first use).

    .venv/bin/python benchmarks/bench_nuclei.py                      # CPU, 1024 and 2048 px
    .venv/bin/python benchmarks/bench_nuclei.py --device cuda --sizes 2048 8192 --batch-size 32
    .venv/bin/python benchmarks/bench_nuclei.py --model classical    # no network: pipeline only
    .venv/bin/python benchmarks/bench_nuclei.py --checkpoint runs/nuclei/nuclei.pt

The slide reader keeps decoded JPEG tiles in a cache bounded at 160 MB, so below that bound
memory grows with the region through the cache alone; ``--reader-cache-mb 8`` shows the rest is
flat. ``--model resnet18`` (default) is an untrained HoVer-Net head on ResNet-18: its speed is that of
a trained one, but what post-processing finds in its noise is not; pass ``--checkpoint`` for
realistic nucleus counts.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def run_one(args: argparse.Namespace) -> dict[str, object]:
    import torch

    from pathssl.nuclei.classical import ClassicalNuclei
    from pathssl.nuclei.model import build_nuclei_model
    from pathssl.nuclei.predict import NucleiPredictor, predict_slide
    from pathssl.nuclei.train import load_nuclei_model
    from pathssl.train.distributed import pick_device

    if args.reader_cache_mb is not None:  # bound tiling's decoded-tile cache (default 160 MB)
        from tiling.readers import TiffJpegReader

        TiffJpegReader.__init__.__defaults__ = (args.reader_cache_mb << 20,)
    device = pick_device(args.device)
    names, mpp = ["nucleus"], 0.5
    if args.checkpoint:
        model, meta = load_nuclei_model(args.checkpoint, str(device))
        names, mpp = list(meta["type_names"]), float(meta["mpp"])
    elif args.model == "classical":  # training-free: the pipeline without a network
        model = ClassicalNuclei(mpp)
    else:
        torch.manual_seed(0)
        model = build_nuclei_model(args.model, 3).to(device)
        names = ["connective", "inflammatory", "neoplastic"]
    pred = NucleiPredictor(
        model,
        window=args.window,
        overlap=args.overlap,
        batch_size=args.batch_size,
        device=device,
        progress=False,
    )
    import numpy as np

    rng = np.random.default_rng(0)  # warm-up batch: lazy imports, kernel selection
    pred.predict_batch(
        rng.integers(0, 256, (args.batch_size, args.window, args.window, 3), dtype=np.uint8)
    )
    size = args.size
    x0 = y0 = args.offset
    out = Path(args.out_dir) / f"nuclei-{size}.geojson"
    tracemalloc.start()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    run0 = pred.windows_run
    t0 = time.perf_counter()
    res = predict_slide(pred, args.slide, out, names, mpp, region=(x0, y0, size, size))
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "size": size,
        "device": str(device),
        "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
        "windows": res.windows,
        "model_windows": pred.windows_run - run0,
        "nuclei": res.count,
        "seconds": round(dt, 2),
        "windows_per_s": round(res.windows / dt, 2),
        "model_windows_per_s": round((pred.windows_run - run0) / dt, 2),
        "tracemalloc_peak_mb": round(peak / 2**20, 1),
        "tracemalloc_end_mb": round(current / 2**20, 1),  # held after the run: no accumulation
        "rss_peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_before_mb": round(rss0 / 1024, 1),
        "gpu_peak_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1)
        if device.type == "cuda"
        else None,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--slide", default=None, help="default: bench_out/bench-slide-8192.tiff")
    p.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048])
    p.add_argument("--offset", type=int, default=2048, help="region origin (level-0 x = y)")
    p.add_argument("--model", default="resnet18", help="resnet18 | resnet50 | classical")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--window", type=int, default=256)
    p.add_argument("--overlap", type=int, default=96)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--out-dir", default=str(REPO / "bench_out" / "nuclei"))
    p.add_argument("--json", default=None)
    p.add_argument(
        "--reader-cache-mb",
        type=int,
        default=None,
        help="tiling's decoded-tile cache (grows with the region up to 160 MB)",
    )
    p.add_argument("--size", type=int, default=None, help=argparse.SUPPRESS)  # child mode
    args = p.parse_args()
    if args.slide is None:
        sys.path.insert(0, str(HERE))
        from make_slide import build_benchmark_slide

        args.slide = str(
            build_benchmark_slide(REPO / "bench_out" / "bench-slide-8192.tiff", size=8192)
        )
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    if args.size is not None:
        print(json.dumps(run_one(args)))
        return 0
    rows = []
    for size in args.sizes:
        cmd = [sys.executable, __file__, "--size", str(size), "--slide", args.slide]
        for k in ("offset", "model", "device", "window", "overlap", "batch_size", "out_dir"):
            cmd += [f"--{k.replace('_', '-')}", str(getattr(args, k))]
        if args.checkpoint:
            cmd += ["--checkpoint", args.checkpoint]
        if args.reader_cache_mb is not None:
            cmd += ["--reader-cache-mb", str(args.reader_cache_mb)]
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if proc.returncode:
            print(proc.stderr, file=sys.stderr)
            return proc.returncode
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    keys = [
        "size",
        "device",
        "windows",
        "model_windows",
        "nuclei",
        "seconds",
        "windows_per_s",
        "model_windows_per_s",
        "tracemalloc_peak_mb",
        "tracemalloc_end_mb",
        "rss_peak_mb",
        "gpu_peak_mb",
    ]
    print(" | ".join(keys))
    for r in rows:
        print(" | ".join(str(r[k]) for k in keys))
    if len(rows) >= 2:
        a, b = rows[0], rows[-1]
        area = (b["size"] / a["size"]) ** 2
        print(
            f"region area x{area:.0f}: peak RSS x{b['rss_peak_mb'] / a['rss_peak_mb']:.2f}, "
            f"tracemalloc peak x{b['tracemalloc_peak_mb'] / max(a['tracemalloc_peak_mb'], 0.1):.2f}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
