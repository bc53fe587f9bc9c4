"""Nuclei of many images and slides in one call: one bad input never stops the batch, a rerun
skips what is done.

``predict_inputs(predictor, ["slides/", "tile.png"], "pred/", type_names, model_mpp)``: folders are
searched recursively (slides as ``pathssl tile`` finds them, images by extension). Per input it
writes ``<id>.geojson`` + ``<id>_overlay.png`` (+ ``<id>.npz`` instance/type maps for images),
each to a temporary name then renamed, so a killed run leaves no torn file; an input whose outputs
all exist is skipped unless ``force``. Returns one record per input (``status`` done | skipped |
failed, ``error``), also written to ``<out>/nuclei_manifest.csv``.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pathssl.nuclei.data import read_rgb
from pathssl.nuclei.geojson import GeoJSONWriter, draw_overlay, write_png
from pathssl.nuclei.predict import NucleiPredictor, instances_to_nuclei, predict_slide

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}


def find_inputs(inputs: Sequence[str | Path]) -> list[tuple[str, Path, str]]:
    """``(id, path, kind)`` with kind ``image`` or ``slide``, in input order; ids unique."""
    from tiling.discover import discover_slides

    found: list[tuple[str, Path, str]] = []
    for raw in inputs:
        p = Path(raw)
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
            found.append((p.stem, p, "image"))
            continue
        slides, ignored = discover_slides([p])
        found.extend((s.slide_id, s.path, "slide") for s in slides)
        found.extend((q.stem, q, "image") for q in ignored if q.suffix.lower() in IMAGE_SUFFIXES)
    seen: dict[str, int] = {}
    out = []
    for sid, path, kind in found:
        n = seen.get(sid, 0)
        seen[sid] = n + 1
        out.append((sid if n == 0 else f"{sid}_{n + 1}", path, kind))
    return out


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.npz")
    np.savez_compressed(tmp, **arrays)  # type: ignore[arg-type]
    os.replace(tmp, path)


def predict_image_file(
    predictor: NucleiPredictor,
    src: Path,
    out: Path,
    sid: str,
    type_names: list[str],
    model_mpp: float,
    image_mpp: float | None = None,
) -> int:
    """One image (at ``image_mpp``, default the model's): ``.npz`` maps at the image's size,
    GeoJSON in image pixels, overlay; returns the number of nuclei."""
    image = read_rgb(src)
    f = 1.0 if image_mpp is None else image_mpp / model_mpp  # model px per image px
    h, w = image.shape[:2]
    interp = cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR  # area-average when shrinking
    small = image if f == 1 else cv2.resize(image, (round(w * f), round(h * f)), None, 0, 0, interp)
    res = predictor.predict_image(np.asarray(small, np.uint8))
    inst, types = res.inst, res.types
    if f != 1:
        inst = np.asarray(cv2.resize(inst, (w, h), interpolation=cv2.INTER_NEAREST), np.int32)
        types = np.asarray(cv2.resize(types, (w, h), interpolation=cv2.INTER_NEAREST), np.int32)
    _save_npz(out / f"{sid}.npz", inst=inst, types=types)
    nuclei = list(instances_to_nuclei(res, scale=1 / f))
    with GeoJSONWriter(out / f"{sid}.geojson", type_names, image_mpp or model_mpp) as gw:
        for nuc in nuclei:
            gw.write(nuc)
    write_png(out / f"{sid}_overlay.png", draw_overlay(image, nuclei, type_names))
    return len(nuclei)


def outputs_of(out: Path, sid: str, kind: str) -> list[Path]:
    names = [f"{sid}.geojson", f"{sid}_overlay.png"] + ([f"{sid}.npz"] if kind == "image" else [])
    return [out / n for n in names]


def predict_inputs(
    predictor: NucleiPredictor,
    inputs: Sequence[str | Path],
    out: str | Path,
    type_names: list[str],
    model_mpp: float,
    *,
    image_mpp: float | None = None,
    region: tuple[int, int, int, int] | None = None,
    assume_mpp: float | None = None,
    force: bool = False,
    log: bool = True,
) -> list[dict[str, Any]]:
    """Predict every input (see the module docstring); errors are recorded, not raised."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for sid, path, kind in find_inputs(inputs):
        row: dict[str, Any] = {
            "id": sid,
            "path": str(path),
            "kind": kind,
            "nuclei": "",
            "error": "",
        }
        if not force and all(p.is_file() for p in outputs_of(out, sid, kind)):
            rows.append({**row, "status": "skipped"})
            continue
        try:
            if kind == "image":
                n = predict_image_file(predictor, path, out, sid, type_names, model_mpp, image_mpp)
            else:
                r = predict_slide(
                    predictor,
                    path,
                    out / f"{sid}.geojson",
                    type_names,
                    model_mpp,
                    region=region,
                    overlay=out / f"{sid}_overlay.png",
                    assume_mpp=assume_mpp,
                )
                n = r.count
            rows.append({**row, "status": "done", "nuclei": n})
        except Exception as exc:  # one bad input never stops the batch
            rows.append({**row, "status": "failed", "error": f"{type(exc).__name__}: {exc}"})
        if log:
            last = rows[-1]
            what = f"{last['nuclei']} nuclei" if last["status"] == "done" else last["error"]
            print(f"{sid}: {last['status']} ({what})", flush=True)
    _write_manifest(out / "nuclei_manifest.csv", rows)
    return rows


def _write_manifest(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, ["id", "kind", "status", "nuclei", "error", "path"])
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)
