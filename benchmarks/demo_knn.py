"""Demo: SimCLR (ResNet-18) pretrained on the CPU on tiles of a real slide beats random-init
features in a kNN probe on nucleus-centred crops.

1. tile ``CMU-1-Small-Region.svs`` (0.5 mpp, 224 px, 50 % overlap);
2. pretrain with ``configs/pretrain/simclr_resnet18_cpu_demo.yaml`` (64 x 64 views, a few
   hundred steps, a few minutes on 2 cores) through the real loop;
3. crop ``--crop`` px around every nucleus of ``nuclei/hgsc_nest.jpg`` (class = majority of the
   type mask inside the instance: connective, inflammatory, neoplastic), split by position
   (left half train, right half test);
4. kNN probe (k=20, cosine on centred, L2-normalised pooled features, as in UNI) on the
   pretrained trunk vs the same architecture at random init (same seed, same normalisation).

Run: ``.venv/bin/python benchmarks/demo_knn.py [--steps 300] [--out runs/demo]``.
The type labels come from a segmentation model, not a pathologist: this shows the pipeline
learns something useful, not a clinical accuracy.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
CLASSES = ("connective", "inflammatory", "neoplastic")


def nucleus_crops(data: Path, crop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(N, crop, crop, 3)`` uint8 crops centred on each nucleus, labels ``(N,)`` in 0..2,
    centroids ``(N, 2)`` x, y. Nuclei too close to the border are dropped."""
    import cv2

    bgr = cv2.imread(str(data / "nuclei" / "hgsc_nest.jpg"), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FileNotFoundError(f"cannot read {data / 'nuclei' / 'hgsc_nest.jpg'}")
    img = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    inst = np.load(data / "nuclei" / "hgsc_nest_inst_mask.npz")["nuc_raster"]
    types = np.load(data / "nuclei" / "hgsc_nest_type_mask.npz")["nuc_raster"]
    h, w = inst.shape
    half = crop // 2
    crops, labels, centres = [], [], []
    flat = inst.ravel()
    order = np.argsort(flat, kind="stable")
    bounds = np.searchsorted(flat[order], np.arange(1, int(flat.max()) + 2))
    for i in range(1, int(flat.max()) + 1):
        pix = order[bounds[i - 1] : bounds[i]]
        if len(pix) == 0:
            continue
        ys, xs = np.divmod(pix, w)
        t = types[ys, xs]
        t = t[t > 0]
        if len(t) == 0:
            continue
        cy, cx = int(round(ys.mean())), int(round(xs.mean()))
        if not (half <= cy < h - half and half <= cx < w - half):
            continue
        crops.append(img[cy - half : cy - half + crop, cx - half : cx - half + crop])
        labels.append(int(np.bincount(t).argmax()) - 1)
        centres.append((cx, cy))
    return np.stack(crops), np.asarray(labels), np.asarray(centres)


@torch.no_grad()
def features(
    backbone: torch.nn.Module, crops: np.ndarray, mean: list[float], std: list[float]
) -> torch.Tensor:
    """``(N, D)`` pooled features of uint8 crops ``(N, s, s, 3)``."""
    backbone.eval()
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    out = []
    for i in range(0, len(crops), 128):
        x = torch.from_numpy(crops[i : i + 128]).permute(0, 3, 1, 2).float() / 255.0
        out.append(backbone((x - m) / s))
    return torch.cat(out)


def knn_accuracy(
    train_x: torch.Tensor,
    train_y: np.ndarray,
    test_x: torch.Tensor,
    test_y: np.ndarray,
    k: int = 20,
) -> tuple[float, float]:
    """Accuracy and balanced accuracy of a majority-vote cosine kNN on centred features."""
    centre = train_x.mean(0, keepdim=True)
    a = torch.nn.functional.normalize(train_x - centre, dim=1)
    b = torch.nn.functional.normalize(test_x - centre, dim=1)
    idx = (b @ a.T).topk(k, dim=1).indices.numpy()
    votes = train_y[idx]
    pred = np.array([np.bincount(v, minlength=len(CLASSES)).argmax() for v in votes])
    acc = float((pred == test_y).mean())
    per_class = [float((pred[test_y == c] == c).mean()) for c in np.unique(test_y)]
    return acc, float(np.mean(per_class))


def tile_demo_slide(data: Path, tiles: Path) -> None:
    """Tile CMU-1 (0.5 mpp, 224 px, 50 % overlap) into ``tiles`` unless a store is there."""
    from tiling import tile_slides

    if not any(tiles.glob("*.zarr")):
        tile_slides(
            [data / "slides" / "CMU-1-Small-Region.svs"],
            tiles,
            mpp=0.5,
            size=224,
            overlap=112,
            progress=False,
            report=False,
        )


def pretrain_simclr(
    tiles: Path, out_dir: Path, steps: int, device: str | None = None, progress: bool = False
) -> tuple[Any, dict[str, Any]]:
    """SimCLR ResNet-18 with the CPU demo config on ``tiles`` (resumes a checkpoint in
    ``out_dir``): returns the trainer and its last logs."""
    from pathssl.train import build_trainer, load_config

    overrides = [
        f"data.stores=[{tiles}]",
        f"train.out_dir={out_dir}",
        f"train.max_steps={steps}",
        f"train.progress={str(progress).lower()}",
    ]
    if device is not None:
        overrides.append(f"train.device={device}")
    cfg = load_config(REPO / "configs" / "pretrain" / "simclr_resnet18_cpu_demo.yaml", overrides)
    trainer = build_trainer(cfg)
    if trainer.resume():
        print(f"resumed at step {trainer.step}")
    return trainer, trainer.fit()


def knn_probe(
    checkpoint: Path, data: Path, k: int = 20, crop: int = 64, seed: int = 0
) -> dict[str, Any]:
    """kNN accuracy of the pretrained trunk vs the same architecture at random init (``seed``)
    on nucleus crops of hgsc_nest, left half train, right half test."""
    from pathssl.models.backbones import build_backbone
    from pathssl.train.embed import load_trunk

    pretrained, meta = load_trunk(checkpoint)
    torch.manual_seed(seed)
    random_init = build_backbone("resnet18")
    crops, labels, centres = nucleus_crops(data, crop)
    left = centres[:, 0] < 750
    result: dict[str, Any] = {
        "k": k,
        "classes": list(CLASSES),
        "n_train": int(left.sum()),
        "n_test": int((~left).sum()),
    }
    for name, model in (("random_init", random_init), ("simclr_pretrained", pretrained)):
        f = features(model, crops, meta["mean"], meta["std"])
        acc, bacc = knn_accuracy(f[left], labels[left], f[~left], labels[~left], k)
        result[name] = {"accuracy": round(acc, 4), "balanced_accuracy": round(bacc, 4)}
    majority = float((labels[~left] == np.bincount(labels[left]).argmax()).mean())
    result["majority_class_accuracy"] = round(majority, 4)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "runs" / "demo"))
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--crop", type=int, default=64)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args(argv)
    out, data = Path(args.out), Path(args.data)
    tiles = out / "tiles"
    tile_demo_slide(data, tiles)
    t0 = time.perf_counter()
    trainer, last = pretrain_simclr(tiles, out / "simclr_resnet18", args.steps, None, args.progress)
    train_s = time.perf_counter() - t0
    print(f"pretrained {args.steps} steps in {train_s:.0f} s, last loss {last.get('loss')}")
    probe = knn_probe(trainer.checkpoint_path, data, args.k, args.crop)
    result = {"steps": args.steps, "train_seconds": round(train_s, 1), **probe}
    for name in ("random_init", "simclr_pretrained"):
        r = result[name]
        print(
            f"{name:>18}: kNN accuracy {r['accuracy']:.3f}, balanced {r['balanced_accuracy']:.3f}"
        )
    print(f"{'majority class':>18}: accuracy {result['majority_class_accuracy']:.3f}")
    (out / "demo_knn.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
