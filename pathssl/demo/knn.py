"""The demo's kNN probe: nucleus-centred crops of a labelled tile, scored by the protocol that
``pathssl eval`` runs.

:func:`nucleus_crops` cuts one ``crop x crop`` patch around every nucleus (class = majority type
inside the instance); :func:`write_crops` writes them as PNG files plus ``train.csv`` /
``test.csv`` (``path,label,x,y``: the layout ``pathssl eval`` reads as ``format: csv``), split by
position (nuclei left of ``split_x`` train, the others test); :func:`knn_scores` embeds them
and scores the kNN probe with ``pathssl.eval``'s building blocks (``csv_images``,
``load_encoder``, ``tile_dataset``, ``extract_features``, ``evaluate_features``), so the figures
equal those of ``pathssl eval`` on an eval config naming the same CSVs and encoder.
"""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from tiling.atomic import replace_dir


def nucleus_crops(
    image: NDArray[np.uint8], inst: NDArray[np.integer], types: NDArray[np.integer], crop: int
) -> tuple[NDArray[np.uint8], NDArray[np.int64], NDArray[np.int64]]:
    """Crops ``(N, crop, crop, 3)`` uint8 centred on each nucleus of ``inst`` ``(H, W)``, labels
    ``(N,)`` = majority type id inside the instance minus one (type ids ``1..C`` -> ``0..C-1``),
    centroids ``(N, 2)`` x, y in pixels of ``image`` ``(H, W, 3)``. Nuclei without a type and
    nuclei whose crop would leave the image are dropped; order = instance id."""
    h, w = inst.shape
    half = crop // 2
    flat = inst.ravel()
    n_ids = int(flat.max()) if flat.size else 0
    order = np.argsort(flat, kind="stable")
    bounds = np.searchsorted(flat[order], np.arange(1, n_ids + 2))
    crops, labels, centres = [], [], []
    for i in range(1, n_ids + 1):
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
        crops.append(image[cy - half : cy - half + crop, cx - half : cx - half + crop])
        labels.append(int(np.bincount(t).argmax()) - 1)
        centres.append((cx, cy))
    if not crops:
        raise ValueError(f"no nucleus of the {w} x {h} image fits a {crop} px crop")
    return (
        np.stack(crops).astype(np.uint8),
        np.asarray(labels, np.int64),
        np.asarray(centres, np.int64),
    )


def write_crops(
    folder: Path,
    crops: NDArray[np.uint8],
    labels: NDArray[np.int64],
    centres: NDArray[np.int64],
    class_names: Sequence[str],
    split_x: int,
) -> tuple[Path, Path]:
    """Write ``crops`` ``(N, s, s, 3)`` as ``folder/NNNN.png`` and the split as
    ``folder/train.csv`` (centroid x < ``split_x``) and ``folder/test.csv``; the folder appears
    complete or not at all (built beside it, then renamed). Returns the two CSV paths."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.mkdir()
    rows: dict[str, list[list[Any]]] = {"train": [], "test": []}
    try:
        for i, (img, label, (x, y)) in enumerate(zip(crops, labels, centres, strict=True)):
            name = f"{i:04d}.png"
            ok, png = cv2.imencode(".png", np.ascontiguousarray(img[:, :, ::-1]))
            if not ok:
                raise OSError(f"could not encode crop {i} for {folder}")
            (tmp / name).write_bytes(png.tobytes())
            split = "train" if x < split_x else "test"
            rows[split].append([name, class_names[int(label)], int(x), int(y)])
        for split, split_rows in rows.items():
            buf = io.StringIO()
            writer = csv.writer(buf, lineterminator="\n")
            writer.writerow(["path", "label", "x", "y"])
            writer.writerows(split_rows)
            (tmp / f"{split}.csv").write_text(buf.getvalue())
        replace_dir(tmp, folder)
    finally:
        if tmp.exists():
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return folder / "train.csv", folder / "test.csv"


def knn_scores(
    train_csv: Path,
    test_csv: Path,
    class_names: Sequence[str],
    *,
    backbone: str | None,
    checkpoint: str | Path | None,
    image_size: int,
    k: int,
    batch_size: int,
    device: str,
    encoder_seed: int = 0,
    seed: int = 0,
) -> dict[str, Any]:
    """The kNN figures of ``pathssl eval`` for these CSVs (``format: csv``, a separate test
    source) and this encoder (``checkpoint``, or ``backbone`` at random init seeded by
    ``encoder_seed``): its ``knn`` metrics (accuracy, balanced accuracy, macro-F1, AUROC, ECE,
    confusion matrix) plus ``predictions``, the predicted class index of each test row, and
    the split sizes."""
    from pathssl.eval.data import csv_images
    from pathssl.eval.encoder import extract_features, load_encoder, tile_dataset
    from pathssl.eval.probes import knn_probe
    from pathssl.eval.protocols import evaluate_features

    names = list(class_names)
    train, test = csv_images(train_csv, class_names=names), csv_images(test_csv, class_names=names)
    encoder = load_encoder(backbone, checkpoint, image_size=image_size, seed=encoder_seed)
    train_ds = tile_dataset(encoder, train, image_size, log=None)
    test_ds = tile_dataset(encoder, test, image_size, log=None)
    train_x, train_y = extract_features(encoder, train_ds, batch_size, device)
    test_x, test_y = extract_features(encoder, test_ds, batch_size, device)
    results = evaluate_features(
        train_x, train_y, test_x, test_y, len(names), linear=False, knn_k=k, seed=seed
    )
    pred = knn_probe(train_x, train_y, test_x, len(names), k=k).pred
    return {
        **results["knn"],
        "encoder": encoder.name,
        "n_train": len(train),
        "n_test": len(test),
        "predictions": [int(p) for p in pred],
    }


def majority_accuracy(train_csv: Path, test_csv: Path) -> float:
    """Accuracy on the test rows of always predicting the most frequent training label."""

    def labels(path: Path) -> list[str]:
        with open(path, newline="") as fh:
            return [row["label"] for row in csv.DictReader(fh)]

    train, test = labels(train_csv), labels(test_csv)
    if not train or not test:
        raise ValueError(f"empty split: {len(train)} train and {len(test)} test crops")
    values, counts = np.unique(np.asarray(train), return_counts=True)
    top = values[int(np.argmax(counts))]
    return float(np.mean(np.asarray(test) == top))
