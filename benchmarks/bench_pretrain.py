"""Pretraining throughput: the full pipeline (store -> decode -> augment -> step) against the
bare backbone's forward + backward at the same batch, in the same process, on the same device.

Cases (issue item 6): SimCLR-ResNet-50 (2 x 224 views), DINO-ViT-S/16 (2 x 224 + 6 x 96),
MAE-ViT-B/16 (one 224 view, 75 % masked). On CUDA: bf16 autocast, channels_last for the CNN,
JPEG decode on the GPU (nvJPEG), batched augmentation on the GPU; reports images/s and peak GPU
memory. ``pipeline / bare`` compares backbone images per second (views through the trunk at
the global size) with the bare trunk; the target is >= 0.9. DINO's local crops and heads have
no bare counterpart, so its ratio is a lower bound of the pipeline's efficiency.

    python benchmarks/bench_pretrain.py --out bench_pretrain.json           # GPU
    python benchmarks/bench_pretrain.py --smoke                               # CPU, tiny
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"

# name -> (config file, overrides)
CASES: dict[str, tuple[str, list[str]]] = {
    "simclr_resnet50": ("simclr.yaml", []),
    "dino_vit_small": ("dino.yaml", []),
    "mae_vit_base": ("mae.yaml", []),
}
SMOKE: dict[str, tuple[str, list[str]]] = {
    "simclr_resnet18": (
        "simclr.yaml",
        [
            "model.backbone=resnet18",
            "augment.params={size: 64}",
            "method.params={proj_hidden_dim: 64, proj_dim: 32}",
        ],
    ),
    "dino_vit_tiny": (
        "dino.yaml",
        [
            "model.backbone=vit_tiny",
            "augment.params={size: 64, local_size: 32, n_local: 2}",
            "method.params={out_dim: 128, hidden_dim: 64, bottleneck_dim: 32}",
        ],
    ),
    "mae_vit_tiny": (
        "mae.yaml",
        [
            "model.backbone=vit_tiny",
            "augment.params={size: 64}",
            "method.params={decoder_dim: 32, decoder_depth: 1, decoder_heads: 2}",
        ],
    ),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_step(trainer: Any, n_images: int, size: int, masked: float | None) -> Any:
    """A closure running the bare trunk fwd+bwd on ``n_images`` random ``size``^2 images (MAE:
    the encoder on the kept ``1 - masked`` of the patches)."""
    backbone = trainer.method.backbone
    dev, bf16, cl = trainer.device, trainer.s.bf16, trainer.batch_step.channels_last
    x = torch.randn(n_images, 3, size, size, device=dev)
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    ids = None
    if masked is not None:
        n = (size // backbone.patch_size) ** 2
        keep = max(1, round(n * (1 - masked)))
        ids = torch.rand(n_images, n, device=dev).argsort(1)[:, :keep]
    params = [p for p in backbone.parameters() if p.requires_grad]

    def step() -> None:
        for p in params:
            p.grad = None
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            y = backbone(x) if ids is None else backbone.forward_masked(x, ids)
        y.float().mean().backward()

    return step


def timed(fn: Any, warmup: int, steps: int, device: torch.device) -> float:
    for _ in range(warmup):
        fn()
    sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        fn()
    sync(device)
    return time.perf_counter() - t


def run_case(
    name: str, config: str, overrides: list[str], args: argparse.Namespace, stores: Path, out: Path
) -> dict[str, Any]:
    from pathssl.train import build_trainer, load_config

    ov = [
        *overrides,
        f"data.stores=[{stores}]",
        f"data.batch_size={args.batch}",
        f"data.num_workers={args.workers}",
        f"train.max_steps={2 * (args.warmup + args.steps) + 20}",
        f"train.out_dir={out / name}",
        f"train.compile={str(args.compile).lower()}",
        "train.progress=false",
        "data.min_tissue=null",
        "data.max_pen=null",
    ]
    cfg = load_config(REPO / "configs" / "pretrain" / config, ov)
    trainer = build_trainer(cfg)
    dev = trainer.device
    it = iter(trainer.loader)
    method = trainer.method

    def pipeline() -> None:
        trainer.train_step(next(it))

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t_pipe = timed(pipeline, args.warmup, args.steps, dev)
    peak = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None
    # where the time goes: the loader + decode alone, and the step on one cached loader batch
    # (decode + views + forward/backward/optimiser, no loader)
    step_obj = trainer.batch_step

    def load_decode() -> None:
        step_obj.images(next(it))

    t_load = timed(load_decode, 2, args.steps, dev)
    cached = next(it)

    def cached_step() -> None:
        trainer.train_step(cached)

    t_cached = timed(cached_step, 2, args.steps, dev)
    size = int(cfg.augment.params.get("size", 224))
    n_global = method.n_global_views
    masked = getattr(method, "mask_ratio", None) if cfg.method.name == "mae" else None
    bare = bare_step(trainer, args.batch * n_global, size, masked)
    t_bare = timed(bare, args.warmup, args.steps, dev)
    tiles_s = args.batch * args.steps / t_pipe
    pipe_img_s = tiles_s * n_global
    bare_img_s = args.batch * n_global * args.steps / t_bare
    res = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "batch_tiles": args.batch,
        "views": method.n_global_views + method.n_local_views,
        "bf16": trainer.s.bf16,
        "decode_on_device": trainer.loader.collate_fn.__name__ == "collate_jpeg",
        "compile": args.compile,
        "pipeline_tiles_per_s": round(tiles_s, 1),
        "pipeline_backbone_images_per_s": round(pipe_img_s, 1),
        "bare_backbone_images_per_s": round(bare_img_s, 1),
        "pipeline_over_bare": round(pipe_img_s / bare_img_s, 3),
        "loader_decode_tiles_per_s": round(args.batch * args.steps / t_load, 1),
        "cached_batch_step_tiles_per_s": round(args.batch * args.steps / t_cached, 1),
        "peak_gpu_gib": None if peak is None else round(peak, 2),
    }
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny CPU-sized cases, 2 steps")
    ap.add_argument("--cases", default=None, help="comma-separated case names")
    ap.add_argument("--stores", default=None, help="tile stores (default: tile the CMU slide)")
    ap.add_argument("--batch", type=int, default=None, help="tiles per step (default 256; smoke 4)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 30; smoke 2)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps (default 10; smoke 1)")
    ap.add_argument("--workers", type=int, default=None, help="DataLoader workers (default 8)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the backbone")
    ap.add_argument("--out", default=None, help="write results as JSON here")
    args = ap.parse_args(argv)
    smoke = args.smoke
    args.batch = args.batch or (4 if smoke else 256)
    args.steps = args.steps or (2 if smoke else 30)
    args.warmup = args.warmup if args.warmup is not None else (1 if smoke else 10)
    args.workers = args.workers if args.workers is not None else (0 if smoke else 8)
    table = SMOKE if smoke else CASES
    names = args.cases.split(",") if args.cases else list(table)
    if smoke:
        torch.set_num_threads(min(2, torch.get_num_threads()))
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    with tempfile.TemporaryDirectory(prefix="bench_pretrain_") as tmp:
        stores = Path(args.stores) if args.stores else Path(tmp) / "tiles"
        if not args.stores:
            from tiling import tile_slides

            tile_slides(
                [DATA / "slides" / "CMU-1-Small-Region.svs"],
                stores,
                mpp=0.5,
                size=224,
                overlap=112,
                progress=False,
                report=False,
            )
        results = {}
        for name in names:
            if name not in table:
                raise SystemExit(f"unknown case {name!r}; known: {', '.join(table)}")
            config, overrides = table[name]
            results[name] = run_case(name, config, overrides, args, stores, Path(tmp) / "runs")
            print(name, json.dumps(results[name]), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
