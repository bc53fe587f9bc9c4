"""Benchmark stain augmentation: per-core CPU tiles/s, and batched GPU tiles/s when CUDA exists.

Run: ``python benchmarks/bench_augment.py [--seconds 1.5] [--json out.json]``. All ratios come
from one run on one machine. torchstain is not a dependency of this project: when it is
installed (``pip install torchstain``, pure Python) its Macenko normaliser (torch backend, fitted
once on the target, one tile at a time, as its users call it) is measured too.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def tiles_224(n: int = 64) -> list[np.ndarray]:
    img = cv2.cvtColor(cv2.imread(str(DATA / "nuclei" / "hgsc_nest.jpg")), cv2.COLOR_BGR2RGB)
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        y, x = rng.integers(0, img.shape[0] - 224, 2)
        out.append(np.ascontiguousarray(img[y : y + 224, x : x + 224]))
    return out


def rate(fn: Callable[[int], object], seconds: float, per_call: int = 1) -> float:
    fn(0)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn(n)
        n += 1
    return n * per_call / (time.perf_counter() - t0)


def numpy_hed_jitter(img: np.ndarray, alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """The straightforward version: float64 OD, decompose, jitter, recompose, exp."""
    from pathssl.augment.stain import HED_FROM_RGB, RGB_FROM_HED

    od = -np.log(np.maximum(img, 1).astype(np.float64) / 255.0)
    hed = od.reshape(-1, 3) @ HED_FROM_RGB
    od2 = (hed * alpha + beta) @ RGB_FROM_HED
    return np.clip(np.rint(255 * np.exp(-od2)), 0, 255).astype(np.uint8).reshape(img.shape)


def cpu_benchmarks(seconds: float) -> dict[str, float]:
    import albumentations as A

    from pathssl.augment import (
        HEDJitter,
        MacenkoAugment,
        MacenkoNormalize,
        RandStainNA,
        build_recipe,
        hed_jitter,
        stats_from_images,
    )
    from pathssl.augment.torch_ops import BatchHEDJitter

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    tiles = tiles_224()
    k = len(tiles)
    target = cv2.cvtColor(cv2.imread(str(DATA / "tiles/stain/target_image.png")), cv2.COLOR_BGR2RGB)
    stats = stats_from_images(tiles, "lab")
    ops: dict[str, Callable[[np.ndarray], object]] = {
        "pathssl hed_jitter kernel (fused, no albumentations)": lambda im: hed_jitter(
            im, np.ones(3) * 1.05, np.full(3, 0.02)
        ),
        "pathssl HEDJitter (fused, albumentations call)": HEDJitter(p=1.0),
        "plain numpy HED jitter": lambda im: numpy_hed_jitter(
            im, np.ones(3) * 1.05, np.full(3, 0.02)
        ),
        "albumentations HEStain preset": A.HEStain(method="preset", preset="standard", p=1.0),
        "albumentations HEStain macenko (fit per tile)": A.HEStain(method="macenko", p=1.0),
        "pathssl RandStainNA lab": RandStainNA(stats, p=1.0),
        "pathssl RandStainNA hed": RandStainNA(stats_from_images(tiles, "hed"), p=1.0),
        "pathssl MacenkoAugment (fixed stains)": MacenkoAugment(p=1.0),
        "pathssl MacenkoNormalize (fit per tile)": MacenkoNormalize(target=target),
    }
    res: dict[str, float] = {}
    for name, op in ops.items():
        if isinstance(op, A.BasicTransform):
            res[name] = rate(lambda i, op=op: op(image=tiles[i % k]), seconds)
        else:
            res[name] = rate(lambda i, op=op: op(tiles[i % k]), seconds)
    try:
        import torchstain

        norm = torchstain.normalizers.MacenkoNormalizer(backend="torch")
        norm.fit(torch.from_numpy(target).permute(2, 0, 1).contiguous())
        chw = [torch.from_numpy(t).permute(2, 0, 1).contiguous() for t in tiles]
        res["torchstain MacenkoNormalizer torch (fit target once)"] = rate(
            lambda i: norm.normalize(I=chw[i % k], stains=False), seconds
        )
    except ImportError:
        pass
    x = torch.from_numpy(np.stack(tiles)).permute(0, 3, 1, 2).contiguous()
    bj = BatchHEDJitter(p=1.0)
    res["pathssl BatchHEDJitter torch CPU (batch 64)"] = rate(lambda i: bj(x), seconds, k)
    run = build_recipe("simclr").cpu(seed=0)
    res["two-view simclr recipe CPU (views/s)"] = rate(lambda i: run(tiles[i % k]), seconds, 2)
    return res


def gpu_benchmarks(seconds: float, batch: int = 256) -> dict[str, float]:
    from pathssl.augment import build_recipe
    from pathssl.augment.torch_ops import BatchHEDJitter

    dev = torch.device("cuda")
    tiles = tiles_224(batch)
    x = torch.from_numpy(np.stack(tiles)).permute(0, 3, 1, 2).contiguous().to(dev)
    g = torch.Generator().manual_seed(0)

    def timed(fn: Callable[[], object], per_call: int) -> float:
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            fn()
            n += 1
        torch.cuda.synchronize()
        return n * per_call / (time.perf_counter() - t0)

    bj = BatchHEDJitter(p=1.0)
    views = build_recipe("simclr").torch()
    return {
        f"GPU BatchHEDJitter uint8 (batch {batch}) tiles/s": timed(lambda: bj(x, g), batch),
        f"GPU two-view simclr recipe (batch {batch}) views/s": timed(
            lambda: views(x, g), 2 * batch
        ),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=1.5, help="time per measurement")
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    args = ap.parse_args()
    out: dict[str, object] = {"cpu": platform.processor() or platform.machine()}
    out["cpu_per_core"] = cpu_benchmarks(args.seconds)
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
        out["gpu_batched"] = gpu_benchmarks(args.seconds)
    else:
        out["gpu"] = "no CUDA device: GPU numbers not measured"
    try:
        import torchstain  # noqa: F401

        out["torchstain"] = "installed: measured above"
    except ImportError:
        out["torchstain"] = "not installed (not a dependency): not measured"
    for section in ("cpu_per_core", "gpu_batched"):
        for name, v in out.get(section, {}).items():  # type: ignore[union-attr]
            print(f"{section:13s} {name:55s} {v:12,.0f}")
    print(f"gpu: {out['gpu']}; torchstain: {out['torchstain']}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
