"""Nuclei of many images and slides in one call: one bad input never stops the batch, a rerun
skips what is done.

``predict_inputs(predictor, ["slides/", "tile.png"], "pred/", type_names, model_mpp)``: folders are
searched recursively. Images (``.png``, ``.jpg``, ``.jpeg``, ``.bmp``) are images; slides are what
``pathssl tile`` finds, except that a ``.tif``/``.tiff`` file is a slide only when openslide
recognises it (``openslide.OpenSlide.detect_format``: tiled, pyramidal or vendor TIFF) and an
image tile otherwise (e.g. MoNuSeg's stripped 1000 x 1000 RGB TIFFs), read whole. Per input it
writes ``<id>.geojson`` + ``<id>_overlay.png`` (+ ``<id>.npz`` instance/type maps for images),
each to a temporary name then renamed, so a killed run leaves no torn file; an input whose outputs
all exist is skipped unless ``force``. Returns one record per input (``status`` done | skipped |
failed, ``error``), also written to ``<out>/nuclei_manifest.csv``. The output folder is checked
first (:func:`check_predict_output`): new, empty or an earlier predict output (it has
``nuclei_manifest.csv``), never an input, inside one or holding one.

:func:`load_predictor` turns ``--model`` (``classical`` or a ``nuclei.pt``) into a predictor with
the model's mpp, type names, window settings, test-time augmentation and stain normalisation.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pathssl.nuclei.data import read_rgb
from pathssl.nuclei.geojson import GeoJSONWriter, draw_overlay, write_png
from pathssl.nuclei.predict import (
    NucleiPredictor,
    instances_at_image,
    instances_to_nuclei,
    predict_image_at_mpp,
    predict_slide,
)
from tiling.atomic import atomic_path, atomic_write
from tiling.outputs import check_output_dir

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}
TIFF_SUFFIXES = {".tif", ".tiff"}


def is_image_file(path: Path) -> bool:
    """Whether ``path`` is read as one image: a PNG/JPEG/BMP, or a TIFF that openslide does not
    recognise as a slide (``detect_format`` None: a plain, stripped TIFF tile)."""
    import openslide

    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return True
    return suffix in TIFF_SUFFIXES and openslide.OpenSlide.detect_format(str(path)) is None


def find_inputs(inputs: Sequence[str | Path]) -> list[tuple[str, Path, str]]:
    """``(id, path, kind)`` with kind ``image`` or ``slide``, in input order; ids unique."""
    from tiling.discover import discover_slides

    found: list[tuple[str, Path, str]] = []
    for raw in inputs:
        p = Path(raw)
        if p.is_file() and is_image_file(p):
            found.append((p.stem, p, "image"))
            continue
        slides, ignored = discover_slides([p])
        for s in slides:
            image = len(s.files) == 1 and is_image_file(s.path)
            found.append((s.path.stem, s.path, "image") if image else (s.slide_id, s.path, "slide"))
        found.extend((q.stem, q, "image") for q in ignored if q.suffix.lower() in IMAGE_SUFFIXES)
    seen: dict[str, int] = {}
    out = []
    for sid, path, kind in found:
        n = seen.get(sid, 0)
        seen[sid] = n + 1
        out.append((sid if n == 0 else f"{sid}_{n + 1}", path, kind))
    return out


MANIFEST = "nuclei_manifest.csv"


def is_predict_output(out: Path) -> bool:
    """Whether the folder ``out`` is an earlier ``nuclei predict`` output."""
    return (out / MANIFEST).is_file()


def check_predict_output(
    out: str | Path, inputs: Sequence[str | Path], checkpoint: str | Path | None = None
) -> Path:
    """Refuse (``tiling.errors.OutputError``) an output folder that is, holds or lies inside an
    input or the checkpoint, or that holds files ``nuclei predict`` did not write."""
    return check_output_dir(
        out,
        inputs=[*inputs, checkpoint],
        is_ours=is_predict_output,
        command="nuclei predict",
    )


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        np.savez_compressed(tmp, **arrays)  # type: ignore[arg-type]


def predict_image_file(
    predictor: NucleiPredictor,
    src: Path,
    out: Path,
    sid: str,
    type_names: list[str],
    model_mpp: float,
    image_mpp: float | None = None,
    log: Callable[[str], None] | None = None,
) -> int:
    """One image at ``image_mpp`` (the input's; none: taken at the model's), resampled to
    ``model_mpp`` when they differ by more than 10 % (:func:`predict_image_at_mpp`, which says
    so to ``log``): ``.npz`` maps at the image's size, GeoJSON in image pixels, overlay; returns
    the number of nuclei."""
    image = read_rgb(src)
    res, f = predict_image_at_mpp(predictor, image, model_mpp, image_mpp, name=src.name, log=log)
    inst, types = instances_at_image(res, image.shape[:2])
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
    out = check_predict_output(out, inputs)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    note = print if log else None  # the mpp each input is read at
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
                n = predict_image_file(
                    predictor, path, out, sid, type_names, model_mpp, image_mpp, note
                )
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
                    log=note,
                )
                n = r.count
            rows.append({**row, "status": "done", "nuclei": n})
        except Exception as exc:  # one bad input never stops the batch
            rows.append({**row, "status": "failed", "error": f"{type(exc).__name__}: {exc}"})
        if log:
            last = rows[-1]
            what = f"{last['nuclei']} nuclei" if last["status"] == "done" else last["error"]
            print(f"{sid}: {last['status']} ({what})", flush=True)
    _write_manifest(out / MANIFEST, rows)
    return rows


def _write_manifest(path: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, ["id", "kind", "status", "nuclei", "error", "path"])
    w.writeheader()
    w.writerows(rows)
    atomic_write(path, buf.getvalue())


CLASSICAL = "classical"


@dataclass
class LoadedPredictor:
    """A predictor and what prediction needs to know of its model: ``mpp`` (the resolution it
    works at), ``type_names`` (one per type id 1..T) and a one-line ``description``."""

    predictor: NucleiPredictor
    mpp: float
    type_names: list[str]
    description: str


def classical_predictor(
    classical: Any,
    window: int | None = None,
    overlap: int | None = None,
    batch_size: int | None = None,
    progress: bool = True,
) -> NucleiPredictor:
    """A predictor of the classical model (:class:`~pathssl.nuclei.classical.ClassicalNuclei`)
    with its own window and overlap unless given."""
    return NucleiPredictor(
        classical,
        window=classical.window if window is None else window,
        overlap=classical.overlap if overlap is None else overlap,
        batch_size=4 if batch_size is None else batch_size,
        progress=progress,
    )


def load_predictor(
    model: str | Path,
    device: str | Any = "cpu",
    *,
    window: int | None = None,
    overlap: int | None = None,
    batch_size: int | None = None,
    tta: bool | None = None,
    stain_norm: bool | None = None,
    progress: bool = True,
) -> LoadedPredictor:
    """``model``: ``"classical"`` (:class:`pathssl.nuclei.classical.ClassicalNuclei`, 0.5
    um/px, its own window defaults; no TTA, no stain normalisation) or the path of a
    ``nuclei.pt`` (its ``predict`` and ``postprocess`` config; stain normalisation to its
    ``meta["stain_reference"]`` when it has one and ``predict.stain_norm`` is on). ``None``
    keeps those defaults; ``tta`` / ``stain_norm`` given explicitly override them, and asking
    for what the model cannot do (TTA on the classical model, stain normalisation without a
    reference) is a ``ValueError`` saying so."""
    from pathssl.nuclei.classical import ClassicalNuclei
    from pathssl.nuclei.postprocess import PostProcessConfig
    from pathssl.nuclei.stain_norm import normalizer
    from pathssl.nuclei.train import load_nuclei_model

    if str(model) == CLASSICAL:
        if tta:
            raise ValueError("--tta: the classical model has no network outputs to merge")
        if stain_norm:
            raise ValueError("--stain-norm: the classical model has no training stain reference")
        cl = ClassicalNuclei()
        predictor = classical_predictor(cl, window, overlap, batch_size, progress)
        what = f"classical (training-free: H threshold + watershed) at {cl.mpp:g} um/px"
        return LoadedPredictor(predictor, cl.mpp, list(cl.type_names), what)
    net, meta = load_nuclei_model(model, str(device))
    pcfg, mpp = meta["config"]["predict"], float(meta["mpp"])
    ref = meta.get("stain_reference")
    use_stain = pcfg.get("stain_norm", True) if stain_norm is None else stain_norm
    if stain_norm and ref is None:
        raise ValueError(
            f"--stain-norm: {model} stores no stain reference (trained with model.stain_norm "
            "none); omit the option"
        )
    use_tta = bool(pcfg.get("tta", False)) if tta is None else tta
    predictor = NucleiPredictor(
        net,
        window=pcfg["window"] if window is None else window,
        overlap=pcfg["overlap"] if overlap is None else overlap,
        batch_size=pcfg["batch_size"] if batch_size is None else batch_size,
        device=device,
        postprocess_cfg=PostProcessConfig(**meta["config"]["postprocess"]),
        progress=progress,
        tta=use_tta,
        stain=normalizer(ref) if ref is not None and use_stain else None,
    )
    extras = [f"stain norm {ref['method']}" if ref is not None and use_stain else "no stain norm"]
    extras.append("dihedral TTA" if use_tta else "no TTA")
    what = f"{model}: {meta['backbone']} at {mpp:g} um/px, {', '.join(extras)}"
    return LoadedPredictor(predictor, mpp, list(meta["type_names"]), what)
