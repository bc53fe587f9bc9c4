"""Every registered SSL method after the same CPU budget, in one table (issues 11 and 13).

For each method and seed: pretrain on real tiles of the CMU-1 sample slide (128 px tiles at 0.5 um/px, 75 % overlap) for ``--minutes`` of
this machine's time (the step count that fits is measured first, then a fresh run of exactly that
many steps completes its schedule), then score the trunk two ways:

* **nuclei PQ**: a nuclei head on the FROZEN trunk, trained on hand-drawn nuclei and scored on
  held-apart hand-drawn images (``--nuclei-config``, default ``configs/nuclei/manual_cpu.yaml``:
  which images train and which score is that config's split, printed in the table's notes);
* **kNN**: the kNN probe (k=20) on the hgsc_nest nucleus crops the demo uses (left half trains,
  right half scores; model-made labels, a quick second signal).

Random-init trunks of each backbone are the floor. Throughput is images/s of the timed run
relative to SimCLR on the same backbone. Every method keeps its paper parameters (temperatures,
losses, recipes) except sizes that do not fit a CPU (projector widths, prototypes, queues) and
step-based knobs, which scale with the budget; all use one optimiser (AdamW, 1e-3, wd 0.05,
10 % warm-up, cosine) so that 3 minutes of every method are comparable. Resnet-18 trunks for
the methods that take a CNN, ViT-Tiny/16 for the masked methods; 64 x 64 views, batch 32.

    python benchmarks/all_methods.py                         # the table in benchmarks/README.md
    python benchmarks/all_methods.py --minutes 0.2 --seeds 0 --methods simclr mae   # quick look

Results go to ``--out`` (one JSON line per finished run: an interrupted run resumes where it
stopped) and the table between the ``all-methods`` markers of ``benchmarks/README.md``.

``--variant before_fix`` reruns the methods that issue 11 fixed with each fix switched off
through its option (:data:`VARIANTS`), for the same steps and seeds as their rows of the table,
and writes the before/after comparison (scores and overlaid loss curves) between the ``fixes``
markers of ``benchmarks/README.md``::

    python benchmarks/all_methods.py --variant before_fix --seeds 0 1
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
README = REPO / "benchmarks" / "README.md"
START, END = "<!-- all-methods:start -->", "<!-- all-methods:end -->"

VIT_METHODS = {"mae", "maskfeat"}
BATCH = 32
VIEW = 64
# sizes that fit a CPU (paper sizes in configs/pretrain/<method>.yaml)
CPU_PARAMS: dict[str, dict[str, Any]] = {
    "simclr": {"proj_hidden_dim": 512, "proj_dim": 128},
    "moco_v2": {"proj_hidden_dim": 512, "proj_dim": 128, "queue_size": 4096, "momentum": 0.99},
    "moco_v3": {"hidden_dim": 512, "out_dim": 128},
    "byol": {"proj_hidden_dim": 512, "proj_dim": 128, "momentum": 0.99},
    "barlow_twins": {"proj_dim": 1024},
    "swav": {"proj_hidden_dim": 512, "proj_dim": 128, "num_prototypes": 300},
    "dino": {"out_dim": 4096, "hidden_dim": 512, "bottleneck_dim": 128},
    "mae": {"decoder_dim": 128, "decoder_depth": 2, "decoder_heads": 4},
    "maskfeat": {},
    "rotation": {"head_layers": 1},
    "jigsaw": {"num_permutations": 1000, "tile_dim": 128, "hidden_dim": 1024},
    "context": {"pair_dim": 128, "hidden_dim": 1024},
    "pirl": {"proj_dim": 128, "bank_size": 4096, "num_negatives": 1024, "num_permutations": 1000},
    "colorization": {"head_dim": 128, "grid_step": 10.0, "target_stride": 8, "rebalance": True},
    "s4l_rotation": {"head_hidden_dim": 512},
    "s4l_exemplar": {"triplet_dim": 128},
    "supervised": {},
    "split_brain": {"head_dim": 128, "grid_step": 10.0, "target_stride": 8},
    "orl": {"proj_hidden_dim": 512, "proj_dim": 128, "momentum": 0.99, "patch_size": 32},
}
# multitask: the shipped tasks (context, colorization, simclr) at their CPU sizes
CPU_PARAMS["multitask"] = {
    "tasks": {
        "context": {"weight": 1.0, "params": CPU_PARAMS["context"]},
        "colorization": {"weight": 0.5, "params": CPU_PARAMS["colorization"]},
        "simclr": {"weight": 1.0, "params": CPU_PARAMS["simclr"]},
    }
}
# methods that train on labels: a seeded, stratified tenth of the kNN training crops (the
# semi-supervised setting of S4L; the kNN test crops are never trained on)
LABELLED = {"s4l_rotation", "s4l_exemplar", "supervised"}
LABEL_FRACTION = 0.1
# step-based knobs of the paper configs, as a fraction of the run
STEP_KNOBS: dict[str, dict[str, float]] = {
    "swav": {"freeze_prototypes_steps": 0.05, "queue_start_step": 0.15},
    "dino": {"warmup_teacher_temp_steps": 0.3, "freeze_last_layer_steps": 0.05},
}
MULTI_CROP = {"dino", "swav"}
# Issue 11's fixes switched off through their options (the behaviour before each fix, where this
# protocol can show it): (what the fix changed, overrides that undo it). The protocol gives every
# method the same optimiser, so the fixes of Barlow Twins' parameter groups and DINO's weight
# decay do not show here; MoCo v3's frozen patch projection is ViT-only and SyncBN needs several
# processes, so MoCo v3 on a ResNet-18 is the same before and after.
VARIANTS: dict[str, dict[str, tuple[str, list[str]]]] = {
    "before_fix": {
        "moco_v2": ("Shuffle-BN added", ["method.params.shuffle_bn=false"]),
        "swav": ("feature queue added", ["method.params.queue_length=0"]),
        "dino": (
            "teacher temperature warm-up 0.04 -> 0.07 (was 0.04 throughout)",
            ["method.params.teacher_temp=0.04", "method.params.warmup_teacher_temp=0.04"],
        ),
        "maskfeat": (
            "HOG normalised per cell (was per patch), block-wise masks (were uniform)",
            ["method.params.hog_norm=patch", "augment.params.mask_mode=random"],
        ),
    }
}
FIXES_START, FIXES_END = "<!-- fixes:start -->", "<!-- fixes:end -->"
# the one real slide, densely: 128 px tiles (64 um) every 32 px, ~1,800 with tissue
TILES: dict[str, Any] = {"mpp": 0.5, "size": 128, "overlap": 96}


def backbone(method: str) -> str:
    """ViT-Tiny for the masked methods, the split ResNet-18 (two half-width trunks) for
    split-brain, ResNet-18 for the rest."""
    if method == "split_brain":
        return "resnet18_split"
    return "vit_tiny" if method in VIT_METHODS else "resnet18"


def pretrain_overrides(
    method: str, arch: str, store: Path, out: Path, steps: int, seed: int, extra: list[str]
) -> list[str]:
    """``key=value`` overrides of ``configs/pretrain/<method>.yaml`` for the CPU budget;
    ``extra``: the run's own (the labelled set, ORL's pairs file)."""
    ov = [
        f"model.backbone={arch}",
        f"augment.params.size={VIEW}",
        f"data.stores=[{json.dumps(str(store))}]",
        f"data.batch_size={BATCH}",
        "data.num_workers=1",
        "data.decode=cpu",
        "data.min_tissue=0.5",
        "optim.name=adamw",
        "optim.lr=0.001",
        "optim.lr_scaling=none",
        "optim.weight_decay=0.05",
        "optim.weight_decay_end=null",
        "optim.groups={}",
        "optim.betas=[0.9, 0.999]",
        f"optim.warmup_steps={max(1, steps // 10)}",
        "optim.clip_grad=3.0",
        f"train.max_steps={steps}",
        f"train.ckpt_every={steps}",
        "train.log_every=5",
        f"train.out_dir={json.dumps(str(out))}",
        "train.device=cpu",
        "train.precision=fp32",
        "train.progress=false",
        f"train.seed={seed}",
        f"train.threads={os.cpu_count() or 1}",
    ]
    if method in MULTI_CROP:
        ov += ["augment.params.local_size=32", "augment.params.n_local=4"]
    if method == "s4l_exemplar":  # its 8 views are copies of one distribution: all at VIEW px
        ov += [f"augment.params.local_size={VIEW}"]
    ov += [f"method.params.{k}={v}" for k, v in CPU_PARAMS.get(method, {}).items()]
    for key, frac in STEP_KNOBS.get(method, {}).items():
        ov.append(f"method.params.{key}={max(1, int(steps * frac))}")
    return ov + extra


def build(
    method: str, arch: str, store: Path, out: Path, steps: int, seed: int, extra: list[str]
) -> Any:
    """The trainer of one run (the labelled stream for the methods that train on labels)."""
    from pathssl.eval.online import labelled_source
    from pathssl.train import build_trainer, load_config

    ov = pretrain_overrides(method, arch, store, out, steps, seed, extra)
    cfg = load_config(REPO / "configs" / "pretrain" / f"{method}.yaml", ov)
    source = None
    if cfg.data.labelled.config:
        source = labelled_source(cfg.data.labelled.config, backbone=arch, log=None)
    return build_trainer(cfg, labelled=source)


def pretrain(
    method: str, arch: str, store: Path, out: Path, steps: int, seed: int, extra: list[str]
) -> dict[str, Any]:
    """Fresh run of ``steps`` steps; wall time, images/s and first/last loss."""
    from pathssl.train.logger import read_metrics

    trainer = build(method, arch, store, out, steps, seed, extra)
    t0 = time.perf_counter()
    trainer.fit()
    seconds = time.perf_counter() - t0
    rec = [r for r in read_metrics(out / "metrics.jsonl") if r.get("kind") == "train"]
    losses = [r["loss"] for r in rec if "loss" in r]
    return {
        "steps": steps,
        "seconds": seconds,
        "images_per_s": steps * BATCH / seconds,
        "loss_first": losses[0] if losses else None,
        "loss_last": losses[-1] if losses else None,
        "checkpoint": str(trainer.checkpoint_path),
    }


def steps_for_budget(
    method: str, arch: str, store: Path, work: Path, seconds: float, extra: list[str]
) -> tuple[int, float]:
    """Steps that fit ``seconds`` (a 12-step run timed after its first 2 steps) and s/step."""
    from pathssl.train.logger import read_metrics

    probe = work / f"probe_{method}_{arch}"
    shutil.rmtree(probe, ignore_errors=True)  # a fresh probe, never a resumed one
    build(method, arch, store, probe, 12, 0, [*extra, "train.log_every=1"]).fit()

    times = [r["time"] for r in read_metrics(probe / "metrics.jsonl") if r.get("kind") == "train"]
    per_step = (times[-1] - times[1]) / max(1, len(times) - 2)
    return max(10, int(seconds / per_step)), per_step


def run_inputs(
    method: str,
    seed: int,
    minutes: float,
    store: Path,
    crops: tuple[Path, Path],
    work: Path,
    done: list[dict[str, Any]],
) -> tuple[list[str], dict[str, Any]]:
    """A run's own overrides, and what it needed before its budget (ORL's stage 2, timed):

    * the labelled methods read ``LABEL_FRACTION`` of the kNN training crops (a ``pathssl eval``
      config of them, written beside them);
    * ORL's stage 1 is this seed's BYOL run of the table; stage 2 (proposals, cached once per
      store, and the cross-tile RoI pairs) runs here, outside the 3-minute budget of stage 3."""
    if method in LABELLED:
        train_csv, test_csv = crops
        cfg = train_csv.with_name("eval.yaml")
        cfg.write_text(
            json.dumps(
                {
                    "data": {
                        "source": {"format": "csv", "csv": str(train_csv)},
                        "test": {"format": "csv", "csv": str(test_csv)},
                        "image_size": VIEW,
                    }
                }
            )
        )
        return [
            f"data.labelled.config={json.dumps(str(cfg))}",
            f"data.labelled.fraction={LABEL_FRACTION}",
            f"data.labelled.batch_size={BATCH}",
            "data.labelled.num_workers=0",
            f"data.labelled.seed={seed}",
        ], {}
    if method == "orl":
        from pathssl.orl.cache import compute_proposals
        from pathssl.orl.pairs import build_pairs

        byol = [
            r for r in done if (r["method"], r["seed"], r["minutes"]) == ("byol", seed, minutes)
        ]
        if not byol:
            raise SystemExit("orl needs this seed's byol run first (its stage 1): add byol")
        t0 = time.perf_counter()
        compute_proposals(store, workers=os.cpu_count() or 1)
        t1 = time.perf_counter()
        pairs = build_pairs(
            [store], byol[0]["checkpoint"], work / f"orl_pairs_{seed}", device="cpu"
        )
        t2 = time.perf_counter()
        info = {"stage1": "byol", "proposals_s": t1 - t0, "pairs_s": t2 - t1}
        return [f"method.params.pairs={json.dumps(str(pairs))}"], info
    return [], {}


def knn(checkpoint: str | None, arch: str, crops: tuple[Path, Path], seed: int) -> float:
    from pathssl.demo.knn import knn_scores
    from pathssl.demo.stages import KNN_CLASSES, KNN_K

    train_csv, test_csv = crops
    res = knn_scores(
        train_csv,
        test_csv,
        KNN_CLASSES,
        backbone=arch,
        checkpoint=checkpoint,
        image_size=VIEW,
        k=KNN_K,
        batch_size=64,
        device="cpu",
        encoder_seed=seed,
    )
    return float(res["accuracy"])


def nuclei_pq(
    checkpoint: str | None, arch: str, config: Path, steps: int, out: Path, seed: int
) -> dict[str, Any]:
    """A frozen-trunk nuclei head trained ``steps`` steps; its held-apart scores."""
    shutil.rmtree(out, ignore_errors=True)  # a fresh head, never a resumed one
    from pathssl.nuclei.config import load_config
    from pathssl.nuclei.label_efficiency import held_apart_scores
    from pathssl.nuclei.train import train_nuclei

    cfg = load_config(
        config,
        [
            f"model.backbone={arch}",
            f"model.checkpoint={json.dumps(checkpoint or '')}",
            "model.finetune=frozen",
            f"train.max_steps={steps}",
            f"train.out_dir={json.dumps(str(out))}",
            "train.device=cpu",
            "train.val_every=0",
            f"train.seed={seed}",
        ],
    )
    res = train_nuclei(cfg, progress=False)
    scores = held_apart_scores(res.model, cfg, float(res.meta["mpp"]))
    if scores is None:
        raise SystemExit(f"{config} holds no images apart: the table needs held-apart PQ")
    return {k: scores[k] for k in ("pq", "aji", "f1_detection") if k in scores}


def knn_crops(work: Path) -> tuple[Path, Path]:
    from pathssl.demo.knn import nucleus_crops, write_crops
    from pathssl.demo.stages import KNN_CLASSES, NUCLEI_FILES
    from pathssl.nuclei.data import load_npz_pair

    image, inst, types = (DATA / "nuclei" / n for n in NUCLEI_FILES)
    lab = load_npz_pair(image, inst, types)
    crops, labels, centres = nucleus_crops(lab.image, lab.inst, lab.types, VIEW)
    return write_crops(work / "crops", crops, labels, centres, KNN_CLASSES, lab.image.shape[1] // 2)


def tile_store(work: Path) -> Path:
    from pathssl.demo.layout import SLIDE, SLIDE_ID
    from tiling import tile_slides

    tiles = work / "tiles"
    tile_slides([DATA / "slides" / SLIDE], tiles, progress=False, report=False, **TILES)
    return tiles / f"{SLIDE_ID}.zarr"


def mean_sd(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def table(rows: list[dict[str, Any]], ref: dict[str, float], notes: list[str]) -> str:
    """Markdown table: one line per (method, backbone), mean ± sd over seeds; ``ref``: SimCLR's
    images/s per backbone."""
    by: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        by.setdefault((r["method"], r["backbone"]), []).append(r)
    lines = [
        "| method | trunk | seeds | steps | nuclei PQ (frozen) | nuclei F1 | kNN acc | img/s vs SimCLR |",
        "|---|---|---|---|---|---|---|---|",
    ]
    order = sorted(by, key=lambda k: (k[0] == "random_init", k[1], k[0]))
    for key in order:
        rs = by[key]
        method, arch = key
        steps = "-" if method == "random_init" else f"{statistics.mean(r['steps'] for r in rs):.0f}"
        speed = "-"
        if method != "random_init" and arch in ref:
            speed = f"{statistics.mean(r['images_per_s'] for r in rs) / ref[arch]:.2f}"
        lines.append(
            f"| {method} | {arch} | {len(rs)} | {steps} | {mean_sd([r['pq'] for r in rs])} | "
            f"{mean_sd([r['f1_detection'] for r in rs])} | {mean_sd([r['knn'] for r in rs])} | "
            f"{speed} |"
        )
    return "\n".join(lines + [""] + [f"- {n}" for n in notes]) + "\n"


def first_runs(rows: list[dict[str, Any]]) -> dict[str, Path]:
    """Each method's metrics file of its first seed's run."""
    runs: dict[str, Path] = {}
    for r in sorted(rows, key=lambda r: (r["method"], r["seed"])):
        if r.get("checkpoint") and r["method"] not in runs:
            runs[r["method"]] = Path(r["checkpoint"]).parent / "metrics.jsonl"
    return runs


def loss_grid(
    panels: dict[str, list[tuple[str, Path]]], out_png: Path, columns: int = 4
) -> Path | None:
    """One small loss plot per panel title, tiled into one PNG: each panel draws the losses of
    its ``(label, metrics.jsonl)`` runs on one axis (losses of different methods are on
    different scales, so each panel has its own)."""
    import tempfile

    import cv2
    import numpy as np

    from pathssl.demo.plots import draw_curve, read_losses
    from tiling.atomic import atomic_write

    if not panels:
        return None
    images = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (title, runs) in enumerate(panels.items()):
            curves = [(label, *read_losses(metrics)) for label, metrics in runs]
            (label, steps, values), more = curves[0], curves[1:]
            png = draw_curve(
                steps,
                values,
                Path(tmp) / f"{i}.png",
                title=title,
                size=(240, 360),
                label=label,
                more=more,
            )
            images.append(cv2.imread(str(png), cv2.IMREAD_COLOR))
    blank = np.full_like(images[0], 255)
    images += [blank] * (-len(images) % columns)
    grid = np.vstack([np.hstack(images[i : i + columns]) for i in range(0, len(images), columns)])
    ok, data = cv2.imencode(".png", grid)
    if not ok:
        raise RuntimeError(f"could not encode {out_png}")
    atomic_write(out_png, data.tobytes())
    return out_png


def update_readme(
    text: str, start: str = START, end: str = END, heading: str = "All methods after 3 CPU minutes"
) -> None:
    """Replace the block between the ``start`` and ``end`` markers of the benchmarks README
    (appended under ``heading`` when the markers are missing)."""
    from tiling.atomic import atomic_write

    readme = README.read_text()
    block = f"{start}\n{text}{end}"
    if start in readme and end in readme:
        head, rest = readme.split(start, 1)
        readme = head + block + rest.split(end, 1)[1]
    else:
        readme = readme.rstrip() + f"\n\n## {heading}\n\n" + block + "\n"
    atomic_write(README, readme)


def before_after(
    rows: list[dict[str, Any]], method: str, variant: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``method``'s rows run as ``variant`` (before the fix) and its fixed rows of the same
    seeds."""
    before = [r for r in rows if r["method"] == method and r.get("variant") == variant]
    seeds = {r["seed"] for r in before}
    after = [
        r for r in rows if r["method"] == method and not r.get("variant") and r["seed"] in seeds
    ]
    return before, after


def fixes_table(rows: list[dict[str, Any]], variant: str, notes: list[str]) -> str:
    """Markdown: per method of ``variant``, the scores of its rows (before the fix) next to the
    fixed rows of the same seeds, mean ± sd over those seeds."""
    lines = [
        "| method | what the fix changed | seeds | steps | nuclei PQ before | after "
        "| kNN before | after | last loss before | after |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method, (change, _) in VARIANTS[variant].items():
        before, after = before_after(rows, method, variant)
        if not before or not after:
            continue

        def col(rs: list[dict[str, Any]], key: str) -> str:
            return mean_sd([float(r[key]) for r in rs if r.get(key) is not None])

        steps = "/".join(str(r["steps"]) for r in sorted(before, key=lambda r: r["seed"]))
        lines.append(
            f"| {method} | {change} | {len(before)} | {steps} | {col(before, 'pq')} "
            f"| {col(after, 'pq')} | {col(before, 'knn')} | {col(after, 'knn')} "
            f"| {col(before, 'loss_last')} | {col(after, 'loss_last')} |"
        )
    return "\n".join(lines + [""] + [f"- {n}" for n in notes]) + "\n"


def fixes_report(rows: list[dict[str, Any]], variant: str, no_readme: bool, out: Path) -> str:
    """The before/after table and loss curves (first common seed) of ``variant``."""
    panels: dict[str, list[tuple[str, Path]]] = {}
    for method in VARIANTS[variant]:
        ran, fixed = before_after(rows, method, variant)
        if not ran:
            continue
        seed = min(r["seed"] for r in ran)
        before = first_runs(ran)
        after = first_runs([r for r in fixed if r["seed"] == seed])
        if method in before and method in after:
            panels[method] = [("fixed", after[method]), ("before", before[method])]
    png = out / "fixes_loss.png" if no_readme else README.parent / "fixes_loss.png"
    curves = loss_grid(panels, png)
    notes = [
        "before: the fix switched off through its option (`VARIANTS` in "
        "`benchmarks/all_methods.py`), same steps, seeds and protocol as the table above.",
        "Not shown by this protocol (same AdamW for every method, one process): Barlow Twins' "
        "parameter groups, DINO's weight decay schedule, MoCo v3's frozen patch projection "
        "(ViT only) and SyncBN; MoCo v2's queue after a skipped step (no step is skipped here).",
        "MaskFeat's last loss is a regression error on HOG targets normalised per patch (before) "
        "or per cell (after): different target scales, so the two levels do not compare.",
    ]
    if curves is not None:
        shown = curves.relative_to(REPO) if curves.is_relative_to(REPO) else curves
        notes.append(f"Loss curves, fixed (blue) and before (orange), first seed: `{shown}`.")
    text = fixes_table(rows, variant, notes)
    (out / f"{variant}.md").write_text(text)
    if not no_readme:
        update_readme(text, FIXES_START, FIXES_END, "Issue 11's fixes, before and after")
    return text


def main(argv: list[str] | None = None) -> int:
    from pathssl.ssl import METHODS

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=3.0, help="pretraining budget per run")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--methods", nargs="+", help="default: every registered method")
    p.add_argument("--nuclei-config", type=Path, default=REPO / "configs/nuclei/manual_cpu.yaml")
    p.add_argument("--nuclei-steps", type=int, default=150, help="frozen-head training steps")
    p.add_argument("--out", type=Path, default=REPO / "bench_out" / "all_methods")
    p.add_argument("--no-readme", action="store_true", help="do not update benchmarks/README.md")
    p.add_argument(
        "--report-only",
        action="store_true",
        help="write the table and figures from the finished runs; run nothing",
    )
    p.add_argument(
        "--variant",
        choices=sorted(VARIANTS),
        help="rerun the fixed methods with their fixes switched off (the before/after table)",
    )
    args = p.parse_args(argv)
    allowed = list(VARIANTS[args.variant]) if args.variant else METHODS.names()
    args.methods = args.methods or allowed
    unknown = sorted(set(args.methods) - set(allowed))
    if unknown:
        p.error(f"unknown methods {unknown}; allowed here: {allowed}")
    args.out.mkdir(parents=True, exist_ok=True)
    results = args.out / "results.jsonl"
    done = [json.loads(x) for x in results.read_text().splitlines()] if results.exists() else []
    have = {(r["method"], r["backbone"], r["seed"], r["minutes"], r.get("variant")) for r in done}

    def record(row: dict[str, Any]) -> None:
        done.append(row)
        with results.open("a") as f:  # one line per finished run: resumable
            f.write(json.dumps(row) + "\n")
        print(json.dumps({k: v for k, v in row.items() if k != "checkpoint"}), flush=True)

    store, crops = tile_store(args.out), knn_crops(args.out)
    budget = args.minutes * 60
    methods = list(args.methods)
    if "simclr" not in methods and not args.variant:
        methods.insert(0, "simclr")  # the throughput reference
    archs = sorted({backbone(m) for m in methods})
    for seed in [] if args.report_only else args.seeds:
        for arch in [] if args.variant else archs:
            if ("random_init", arch, seed, args.minutes, None) in have:
                continue
            out = args.out / f"nuclei_random_{arch}_{seed}"
            nuc = nuclei_pq(None, arch, args.nuclei_config, args.nuclei_steps, out, seed)
            knn_acc = knn(None, arch, crops, seed)
            record(_row("random_init", arch, seed, args.minutes, knn=knn_acc, **nuc))
        for method in methods:
            arch = backbone(method)
            if (method, arch, seed, args.minutes, args.variant) in have:
                continue
            try:
                row = one_run(method, arch, seed, args, store, crops, budget, done, args.variant)
            except Exception:  # noqa: BLE001  (one method's failure never stops the table)
                import traceback

                traceback.print_exc()
                print(f"{method} (seed {seed}) failed; the other methods go on", flush=True)
                continue
            record(row)
    rows = [r for r in done if r["minutes"] == args.minutes and r["seed"] in args.seeds]
    if args.variant:
        print(fixes_report(rows, args.variant, args.no_readme, args.out))
        return 0
    rows = [r for r in rows if not r.get("variant")]
    ref = {}
    for arch in archs:
        same = [
            r["images_per_s"] for r in rows if r["method"] == "simclr" and r["backbone"] == arch
        ]
        if not same:  # SimCLR on this trunk for speed only (the masked methods' reference)
            speed = [r for r in done if r["method"] == "simclr_speed" and r["backbone"] == arch]
            if not speed:
                _, per_step = steps_for_budget("simclr", arch, store, args.out, 1.0, [])
                record(_row("simclr_speed", arch, 0, args.minutes, images_per_s=BATCH / per_step))
                speed = [done[-1]]
            same = [speed[0]["images_per_s"]]
        ref[arch] = statistics.mean(same)
    shown = [r for r in rows if r["method"] != "simclr_speed"]
    notes = [
        f"{args.minutes:g} min of pretraining per method and seed on this machine "
        f"({os.cpu_count()} cores), seeds {args.seeds}; 64 x 64 views, batch {BATCH}, AdamW.",
        f"nuclei: {args.nuclei_config.relative_to(REPO) if args.nuclei_config.is_relative_to(REPO) else args.nuclei_config}, "
        f"frozen trunk, {args.nuclei_steps} head steps; PQ/F1 on its held-apart images.",
        "kNN: k=20 on hgsc_nest nucleus crops (3 classes, model-made labels), left half trains, right half scores.",
        "img/s vs SimCLR: the same trunk's SimCLR run (ViT-Tiny: a SimCLR speed run only).",
        f"{', '.join(sorted(LABELLED))} trained on the labels of {LABEL_FRACTION:.0%} of the kNN "
        "probe's training crops: their kNN column is supervised transfer to the same labels, "
        "not comparable with the self-supervised rows; their nuclei PQ is.",
        "orl: stage 1 is the same seed's byol row; stage 2 (proposals once per store, RoI "
        "pairs) runs outside the 3 minutes of stage 3.",
    ]
    png = args.out / "loss_curves.png" if args.no_readme else README.parent / "all_methods_loss.png"
    curves = loss_grid({m: [("", p)] for m, p in first_runs(shown).items()}, png)
    if curves is not None:
        notes.append(
            f"Loss curves (first seed): `{curves.relative_to(REPO) if curves.is_relative_to(REPO) else curves}`."
        )
    text = table(shown, ref, notes)
    (args.out / "table.md").write_text(text)
    print(text)
    if not args.no_readme:
        update_readme(text)
    return 0


def one_run(
    method: str,
    arch: str,
    seed: int,
    args: argparse.Namespace,
    store: Path,
    crops: tuple[Path, Path],
    budget: float,
    done: list[dict[str, Any]],
    variant: str | None = None,
) -> dict[str, Any]:
    """Pretrain ``method`` for the budget, then its frozen-trunk nuclei and kNN scores. With a
    ``variant``: its overrides, for the steps of the same seed's row of the table."""
    extra, stage2 = run_inputs(method, seed, args.minutes, store, crops, args.out, done)
    fixed = [
        r
        for r in done
        if (r["method"], r["backbone"], r["seed"], r["minutes"])
        == (method, arch, seed, args.minutes)
        and not r.get("variant")
    ]
    if variant and fixed:
        steps, per_step = int(fixed[0]["steps"]), float(fixed[0]["probe_s_per_step"])
    else:
        steps, per_step = steps_for_budget(method, arch, store, args.out, budget, extra)
    if variant:
        extra = [*extra, *VARIANTS[variant][method][1]]
    run_dir = args.out / (f"{method}_{variant}_{seed}" if variant else f"{method}_{seed}")
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run, never a resumed one
    pre = pretrain(method, arch, store, run_dir, steps, seed, extra)
    pre.update(stage2)
    out = args.out / f"nuclei_{run_dir.name}"
    nuc = nuclei_pq(pre["checkpoint"], arch, args.nuclei_config, args.nuclei_steps, out, seed)
    knn_acc = knn(pre["checkpoint"], arch, crops, seed)
    row = _row(method, arch, seed, args.minutes, probe_s_per_step=per_step, **pre, **nuc)
    return {**row, "knn": knn_acc, **({"variant": variant} if variant else {})}


def _row(method: str, arch: str, seed: int, minutes: float, **values: Any) -> dict[str, Any]:
    return {"method": method, "backbone": arch, "seed": seed, "minutes": minutes, **values}


if __name__ == "__main__":
    sys.exit(main())
