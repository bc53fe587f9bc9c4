"""Demo pipeline after tiling: pretrain -> kNN probe -> nuclei head -> slide GeoJSON -> report.

The ``make demo`` steps before this one tile ``data/slides`` into ``OUT/tiles`` and draw the
augmentation preview ``OUT/augment-simclr.png``. This script then runs, each stage in its own
subfolder of ``OUT`` and skipped when its outputs already exist (``--force`` reruns all):

``pretrain/``  SimCLR ResNet-18 on ``CMU-1-Small-Region.svs`` tiles, as
               ``benchmarks/demo_knn.py`` does (``simclr_resnet18/last.pt``, ``metrics.jsonl``);
``knn/``       kNN probe on nucleus crops of ``hgsc_nest``: random init vs pretrained
               (``knn.json``, the format of ``demo_knn.json``);
``nuclei/``    HoVer-Net style head on the pretrained trunk, trained on the left 2/3 of
               ``hgsc_nest`` and scored on the held-apart right 1/3 (``nuclei.pt``,
               ``metrics.jsonl``, ``val_metrics.json``: PQ/SQ/DQ, mPQ+, AJI, F1, ...);
``predict/``   nuclei of ``CMU-1-Small-Region.svs``: ``CMU-1-Small-Region.geojson`` (QuPath
               detections) and ``CMU-1-Small-Region_overlay.png``;

and writes one self-contained ``OUT/report.html`` (tiling table and overviews, augmentation
preview, loss curves, kNN and nuclei tables, overlay, GeoJSON link, wall time of each stage).
Each stage records ``stage.json`` (seconds, device) last, so an interrupted stage reruns.
CUDA is used when available.

Run: ``.venv/bin/python benchmarks/demo_pipeline.py --out demo_out [--pretrain-steps 300]
[--nuclei-steps 300] [--force] [--report-only]``.
"""

from __future__ import annotations

import argparse
import csv
import html
import json
import math
import os
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATA = REPO.parent / "shared" / "data"
SLIDE = "CMU-1-Small-Region.svs"
STAGES = ("pretrain", "knn", "nuclei", "predict")
STAGE_FILE = "stage.json"
NUCLEI_CONFIG = REPO / "configs" / "nuclei" / "hgsc_resnet18_cpu.yaml"
CURVE_SIZE = (360, 640)  # (height, width) of the loss-curve PNGs
CURVE_RGB = (30, 90, 180)  # colour of the plotted line

# Outputs (relative to the stage folder) whose presence, with stage.json, means "done".
STAGE_OUTPUTS: dict[str, tuple[str, ...]] = {
    "pretrain": ("simclr_resnet18/last.pt", "simclr_resnet18/metrics.jsonl"),
    "knn": ("knn.json",),
    "nuclei": ("nuclei.pt", "metrics.jsonl", "val_metrics.json"),
    "predict": (f"{Path(SLIDE).stem}.geojson", f"{Path(SLIDE).stem}_overlay.png"),
}


# ----------------------------------------------------------------------------- helpers


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder + ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_json(path: Path, obj: Any) -> None:
    _atomic_write(path, (json.dumps(obj, indent=2, default=float) + "\n").encode())


def _read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or None when it is missing or unreadable."""
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def stage_done(out: Path, stage: str) -> bool:
    """True when ``out/stage`` holds its ``stage.json`` and every output it promises."""
    folder = out / stage
    return (folder / STAGE_FILE).is_file() and all(
        (folder / rel).is_file() for rel in STAGE_OUTPUTS[stage]
    )


def device_name() -> str:
    """``cuda`` when a GPU is visible to torch, else ``cpu``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# ----------------------------------------------------------------------------- stages


def _demo_knn() -> Any:
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    import demo_knn

    return demo_knn


def stage_pretrain(out: Path, data: Path, steps: int, device: str) -> dict[str, Any]:
    """Tile the CMU slide and pretrain SimCLR ResNet-18 with the demo config (demo_knn.py's)."""
    demo_knn = _demo_knn()
    folder = out / "pretrain"
    demo_knn.tile_demo_slide(data, folder / "tiles")
    _, last = demo_knn.pretrain_simclr(folder / "tiles", folder / "simclr_resnet18", steps, device)
    return {"steps": steps, "last_loss": last.get("loss"), "checkpoint": "simclr_resnet18/last.pt"}


def stage_knn(out: Path, data: Path, k: int = 20, crop: int = 64) -> dict[str, Any]:
    """kNN probe of random-init vs pretrained trunks (demo_knn.py's probe)."""
    probe = _demo_knn().knn_probe(
        out / "pretrain" / "simclr_resnet18" / "last.pt", data, k, crop, seed=0
    )
    steps = (_read_json(out / "pretrain" / STAGE_FILE) or {}).get("steps")
    result: dict[str, Any] = {"steps": steps, **probe}
    _write_json(out / "knn" / "knn.json", result)
    return result


def nuclei_config(out: Path, data: Path, steps: int, device: str) -> Any:
    """The hgsc_nest nuclei config, started from the demo's SimCLR trunk when it exists."""
    from pathssl.nuclei.config import load_config

    ckpt = out / "pretrain" / "simclr_resnet18" / "last.pt"
    nuc = data / "nuclei"
    return load_config(
        NUCLEI_CONFIG,
        [
            f"data.image={nuc / 'hgsc_nest.jpg'}",
            f"data.inst={nuc / 'hgsc_nest_inst_mask.npz'}",
            f"data.types={nuc / 'hgsc_nest_type_mask.npz'}",
            f"model.checkpoint={ckpt if ckpt.is_file() else ''}",
            f"train.steps={steps}",
            f"train.out_dir={out / 'nuclei'}",
            f"train.device={device}",
        ],
    )


def stage_nuclei(out: Path, data: Path, steps: int, device: str) -> dict[str, Any]:
    """Train the nuclei head and score it on the held-apart region (``val_metrics.json``)."""
    from pathssl.nuclei.label_efficiency import predict_images, validation_predictor
    from pathssl.nuclei.scores import nuclei_scores
    from pathssl.nuclei.splits import load_data
    from pathssl.nuclei.train import train_nuclei

    cfg = nuclei_config(out, data, steps, device)
    res = train_nuclei(cfg, progress=False)
    _, val = load_data(cfg.data)
    preds = predict_images(validation_predictor(res.model, cfg), val)
    scores = nuclei_scores([(v.inst, v.types) for v in val], [(p.inst, p.types) for p in preds])
    scores["type_names"] = list(cfg.data.type_names)
    _write_json(out / "nuclei" / "val_metrics.json", scores)
    return {
        "steps": steps,
        "init": cfg.model.checkpoint or "random",
        "last_loss": res.last.get("loss"),
        "train_seconds": round(res.seconds, 1),
    }


def stage_predict(out: Path, data: Path, device: str) -> dict[str, Any]:
    """Nuclei of the CMU slide with the trained head: GeoJSON + overlay PNG."""
    from pathssl.nuclei.postprocess import PostProcessConfig
    from pathssl.nuclei.predict import NucleiPredictor, predict_slide
    from pathssl.nuclei.train import load_nuclei_model

    model, meta = load_nuclei_model(out / "nuclei" / "nuclei.pt", device)
    pcfg = meta["config"]["predict"]
    predictor = NucleiPredictor(
        model,
        window=pcfg["window"],
        overlap=pcfg["overlap"],
        batch_size=pcfg["batch_size"],
        device=device,
        postprocess_cfg=PostProcessConfig(**meta["config"]["postprocess"]),
        progress=False,
    )
    folder, stem = out / "predict", Path(SLIDE).stem
    folder.mkdir(parents=True, exist_ok=True)
    r = predict_slide(
        predictor,
        data / "slides" / SLIDE,
        folder / f"{stem}.geojson",
        list(meta["type_names"]),
        float(meta["mpp"]),
        overlay=folder / f"{stem}_overlay.png",
    )
    return {"slide": SLIDE, "nuclei": r.count, "windows": r.windows, "slide_mpp": r.slide_mpp}


def run(
    out: Path,
    data: Path,
    pretrain_steps: int,
    nuclei_steps: int,
    *,
    force: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, float]:
    """Run the stages after tiling/preview. Each writes ``out/STAGE/stage.json`` (seconds,
    device, stage details) last and is skipped when its outputs exist, unless ``force``, a
    different step count was asked for, or an earlier stage ran now (its inputs changed). An
    interrupted pretraining resumes from its last checkpoint. Returns the seconds of the
    stages run now."""
    device = device_name()
    steps = {"pretrain": pretrain_steps, "nuclei": nuclei_steps}
    jobs: dict[str, Callable[[], dict[str, Any]]] = {
        "pretrain": lambda: stage_pretrain(out, data, pretrain_steps, device),
        "knn": lambda: stage_knn(out, data),
        "nuclei": lambda: stage_nuclei(out, data, nuclei_steps, device),
        "predict": lambda: stage_predict(out, data, device),
    }
    times: dict[str, float] = {}
    for stage in STAGES:
        done = stage_done(out, stage)
        info = _read_json(out / stage / STAGE_FILE) or {}
        same_steps = stage not in steps or info.get("steps") == steps[stage]
        if done and same_steps and not force and not times:
            log(f"{stage}: done already ({out / stage}), skipped")
            continue
        (out / stage / STAGE_FILE).unlink(missing_ok=True)
        if stage == "pretrain" and (done or force):  # else: resume an interrupted run
            shutil.rmtree(out / stage / "simclr_resnet18", ignore_errors=True)
        log(f"{stage}: running on {device} ...")
        t0 = time.perf_counter()
        details = jobs[stage]()
        seconds = time.perf_counter() - t0
        times[stage] = seconds
        _write_json(
            out / stage / STAGE_FILE,
            {"stage": stage, "seconds": round(seconds, 1), "device": device, **details},
        )
        log(f"{stage}: {seconds:.1f} s {json.dumps(details, default=str)}")
    return times


# ----------------------------------------------------------------------------- loss curves


def read_losses(path: Path, key: str = "loss") -> tuple[list[float], list[float]]:
    """(steps, values) of ``key`` in a metrics JSONL file (records of kind ``train`` when they
    carry a kind); unreadable lines and non-finite values are left out."""
    steps: list[float] = []
    values: list[float] = []
    if not path.is_file():
        return steps, values
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
            step, value = float(rec["step"]), float(rec[key])
        except (ValueError, KeyError, TypeError):
            continue
        if rec.get("kind", "train") == "train" and math.isfinite(value):
            steps.append(step)
            values.append(value)
    return steps, values


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values covering [lo, hi]."""
    if not hi > lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def draw_curve(
    steps: Sequence[float],
    values: Sequence[float],
    out_png: Path,
    *,
    title: str = "training loss",
    xlabel: str = "step",
    ylabel: str = "loss",
    size: tuple[int, int] = CURVE_SIZE,
) -> Path:
    """Line plot (OpenCV only) of ``values`` against ``steps``: axes, ticks, axis labels and a
    title on a white ``size`` = (height, width) canvas, written atomically as a PNG."""
    h, w = size
    img = np.full((h, w, 3), 255, np.uint8)
    font, fs, ink, grid = cv2.FONT_HERSHEY_SIMPLEX, 0.42, (40, 40, 40), (225, 225, 225)
    left, right, top, bottom = 70, 20, 34, 52
    x0, x1, y0, y1 = left, w - right, top, h - bottom  # plot box in pixels
    xs = np.asarray(steps, np.float64)
    ys = np.asarray(values, np.float64)
    if len(xs):
        xlo, xhi = float(xs.min()), float(xs.max())
        ylo, yhi = float(ys.min()), float(ys.max())
    else:
        xlo, xhi, ylo, yhi = 0.0, 1.0, 0.0, 1.0
    if xhi <= xlo:
        xlo, xhi = xlo - 1, xhi + 1
    pad = (yhi - ylo) * 0.05 or max(abs(yhi) * 0.05, 0.05)
    ylo, yhi = ylo - pad, yhi + pad

    def px(x: float, y: float) -> tuple[int, int]:
        return (
            int(round(x0 + (x - xlo) / (xhi - xlo) * (x1 - x0))),
            int(round(y1 - (y - ylo) / (yhi - ylo) * (y1 - y0))),
        )

    for t in _nice_ticks(ylo, yhi):
        y = px(xlo, t)[1]
        cv2.line(img, (x0, y), (x1, y), grid, 1)
        cv2.line(img, (x0 - 4, y), (x0, y), ink, 1)
        label = f"{t:.4g}"
        tw = cv2.getTextSize(label, font, fs, 1)[0][0]
        cv2.putText(img, label, (x0 - 8 - tw, y + 4), font, fs, ink, 1, cv2.LINE_AA)
    for t in _nice_ticks(xlo, xhi):
        x = px(t, ylo)[0]
        cv2.line(img, (x, y1), (x, y1 + 4), ink, 1)
        label = f"{t:g}"
        tw = cv2.getTextSize(label, font, fs, 1)[0][0]
        cv2.putText(img, label, (x - tw // 2, y1 + 18), font, fs, ink, 1, cv2.LINE_AA)
    cv2.rectangle(img, (x0, y0), (x1, y1), ink, 1)
    if len(xs):
        pts = np.array([px(float(a), float(b)) for a, b in zip(xs, ys, strict=True)], np.int32)
        cv2.polylines(img, [pts.reshape(-1, 1, 2)], False, CURVE_RGB, 2, cv2.LINE_AA)
        if len(pts) == 1:  # a single record: a dot, not an invisible line
            cv2.circle(img, (int(pts[0, 0]), int(pts[0, 1])), 4, CURVE_RGB, -1, cv2.LINE_AA)
    else:
        cv2.putText(img, "no data", (x0 + 10, (y0 + y1) // 2), font, 0.6, ink, 1, cv2.LINE_AA)
    tw = cv2.getTextSize(xlabel, font, 0.5, 1)[0][0]
    cv2.putText(img, xlabel, ((x0 + x1 - tw) // 2, h - 12), font, 0.5, ink, 1, cv2.LINE_AA)
    cv2.putText(img, title, (x0, 22), font, 0.55, ink, 1, cv2.LINE_AA)
    side = np.full((20, 200, 3), 255, np.uint8)  # y label, drawn then rotated
    cv2.putText(side, ylabel, (4, 15), font, 0.5, ink, 1, cv2.LINE_AA)
    upright = np.asarray(cv2.rotate(side, cv2.ROTATE_90_COUNTERCLOCKWISE), np.uint8)
    yoff = max(0, (y0 + y1) // 2 - 100)
    img[yoff : yoff + 200, 2:22] = upright[: h - yoff]
    ok, png = cv2.imencode(".png", np.ascontiguousarray(img[:, :, ::-1]))
    if not ok:
        raise RuntimeError(f"could not encode {out_png}")
    _atomic_write(out_png, png.tobytes())
    return out_png


# ----------------------------------------------------------------------------- report

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;max-width:1100px}
h2{margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0}th,td{border:1px solid #ccc;padding:4px 8px}
th{background:#f0f0f0;text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums}
.ok,.done{background:#d8f3dc}.failed{background:#f8d7da}.no_tissue{background:#fff3cd}
.notrun{background:#e9ecef;color:#666}.skipped{background:#e9ecef}
img.thumb{max-height:120px;max-width:160px;border:1px solid #999}
img.figure{max-width:100%;border:1px solid #999}p.note{color:#555}
"""
NOT_RUN = '<p class="notrun">not run</p>'
NUCLEI_KEYS = (
    ("pq", "PQ"),
    ("sq", "SQ"),
    ("dq", "DQ"),
    ("mpq_plus", "mPQ+"),
    ("aji", "AJI"),
    ("aji_plus", "AJI+"),
    ("dice", "Dice"),
    ("dice2", "DICE2"),
    ("f1_detection", "detection F1"),
)


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _href(out: Path, path: Path) -> str:
    """Percent-encoded, HTML-escaped link from ``out`` to ``path`` (relative, posix)."""
    rel = Path(os.path.relpath(path, out)).as_posix()
    return _esc(quote(rel, safe="/"))


def _float(value: Any) -> float | None:
    """A finite float from a number or CSV string, else None."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _num(value: Any, fmt: str = "{:.4f}") -> str:
    """A table cell's text: numbers formatted, None/NaN as an empty cell, else escaped text."""
    if value is None or isinstance(value, bool):
        return ""
    try:
        f = float(value)
    except (TypeError, ValueError):
        return _esc(value)
    return _esc(fmt.format(f)) if math.isfinite(f) else ""


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], numeric: set[int]) -> str:
    """An HTML table; cells are already escaped; columns in ``numeric`` are right-aligned."""
    parts = ["<table><thead><tr>", *(f"<th>{_esc(h)}</th>" for h in head), "</tr></thead><tbody>"]
    for row in rows:
        cells = (
            f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>"
            for i, c in enumerate(row)
        )
        parts.append("<tr>" + "".join(cells) + "</tr>")
    parts.append("</tbody></table>")
    return "".join(parts)


def _img(out: Path, path: Path, alt: str, cls: str = "figure") -> str:
    if not path.is_file():
        return NOT_RUN
    h = _href(out, path)
    return f'<a href="{h}"><img class="{cls}" src="{h}" alt="{_esc(alt)}"></a>'


def _fmt_seconds(s: float) -> str:
    if s < 60:
        return f"{s:.1f} s"
    m, sec = divmod(round(s), 60)
    return f"{m} min {sec:02d} s"


def _section_stages(out: Path, manifest: list[dict[str, str]]) -> str:
    rows, total = [], 0.0
    tiling = [f for r in manifest if (f := _float(r.get("seconds"))) is not None]
    if manifest:
        total += sum(tiling)
        rows.append(
            [
                "tiling",
                '<span class="done">done</span>',
                _esc(_fmt_seconds(sum(tiling))),
                "cpu",
                "sum of per-slide seconds (manifest.csv)",
            ]
        )
    else:
        rows.append(["tiling", '<span class="notrun">not run</span>', "", "", ""])
    preview = (out / "augment-simclr.png").is_file()
    status = '<span class="done">done</span>' if preview else '<span class="notrun">not run</span>'
    rows.append(["augmentation preview", status, "", "cpu" if preview else "", "not timed"])
    for stage in STAGES:
        info = _read_json(out / stage / STAGE_FILE) if stage_done(out, stage) else None
        if info is None:
            rows.append([_esc(stage), '<span class="notrun">not run</span>', "", "", ""])
            continue
        seconds = float(info.get("seconds", 0.0))
        total += seconds
        rows.append(
            [
                _esc(stage),
                '<span class="done">done</span>',
                _esc(_fmt_seconds(seconds)),
                _esc(info.get("device", "")),
                _esc(f"folder {stage}/"),
            ]
        )
    rows.append(["<b>total</b>", "", f"<b>{_esc(_fmt_seconds(total))}</b>", "", ""])
    return "<h2>Stages</h2>" + _table(("stage", "status", "wall time", "device", "note"), rows, {2})


def _section_tiling(out: Path, manifest: list[dict[str, str]]) -> str:
    parts = ["<h2>Tiling</h2>"]
    if not manifest:
        return parts[0] + NOT_RUN
    rows = []
    for r in manifest:
        status = r.get("status", "")
        sid = r.get("slide_id") or Path(r.get("slide", "")).stem
        ov = out / "tiles" / "overviews" / f"{sid}.png"
        rows.append(
            [
                _esc(r.get("slide", "")),
                f'<span class="{_esc(status)}">{_esc(status)}</span>',
                _num(r.get("n_tiles"), "{:,.0f}"),
                _num(r.get("mpp"), "{:.4g}"),
                _num(r.get("seconds"), "{:.2f}"),
                _img(out, ov, f"overview {sid}", "thumb") if ov.is_file() else "",
                _esc(r.get("error", "")),
            ]
        )
    head = ("slide", "status", "tiles", "mpp", "seconds", "overview", "error")
    parts.append(_table(head, rows, {2, 3, 4}))
    if (out / "tiles" / "report.html").is_file():
        parts.append(
            f'<p>Full tiling report: <a href="{_href(out, out / "tiles" / "report.html")}">'
            "tiles/report.html</a></p>"
        )
    return "".join(parts)


def _section_pretrain(out: Path) -> str:
    parts = ["<h2>Augmentation preview (SimCLR recipe)</h2>"]
    parts.append(_img(out, out / "augment-simclr.png", "augmentation preview"))
    parts.append("<h2>Pretraining (SimCLR, ResNet-18)</h2>")
    if not stage_done(out, "pretrain"):
        return "".join(parts) + NOT_RUN
    info = _read_json(out / "pretrain" / STAGE_FILE) or {}
    steps, losses = read_losses(out / "pretrain" / "simclr_resnet18" / "metrics.jsonl")
    png = draw_curve(steps, losses, out / "pretrain" / "loss_curve.png", title="SimCLR loss")
    parts.append(
        f"<p>{_esc(info.get('steps', '?'))} steps on {_esc(info.get('device', '?'))}; last logged "
        f"loss {_num(losses[-1] if losses else None)}.</p>"
    )
    parts.append(_img(out, png, "pretraining loss curve"))
    return "".join(parts)


def _section_knn(out: Path) -> str:
    head = "<h2>kNN probe on nucleus crops (hgsc_nest, left half train, right half test)</h2>"
    res = _read_json(out / "knn" / "knn.json") if stage_done(out, "knn") else None
    if res is None:
        return head + NOT_RUN
    rows = []
    for key, label in (("random_init", "random init"), ("simclr_pretrained", "SimCLR pretrained")):
        r = res.get(key) or {}
        rows.append([_esc(label), _num(r.get("accuracy")), _num(r.get("balanced_accuracy"))])
    rows.append(["majority class", _num(res.get("majority_class_accuracy")), ""])
    note = (
        f"<p class='note'>k = {_esc(res.get('k', '?'))}, cosine on centred features; "
        f"{_esc(res.get('n_train', '?'))} train / {_esc(res.get('n_test', '?'))} test nuclei; "
        "labels come from a segmentation model, not a pathologist.</p>"
    )
    return head + _table(("features", "accuracy", "balanced accuracy"), rows, {1, 2}) + note


def _section_nuclei(out: Path) -> str:
    parts = ["<h2>Nuclei head (hgsc_nest, held-apart right third)</h2>"]
    m = _read_json(out / "nuclei" / "val_metrics.json") if stage_done(out, "nuclei") else None
    if m is None:
        return parts[0] + NOT_RUN
    info = _read_json(out / "nuclei" / STAGE_FILE) or {}
    init = str(info.get("init", "?"))
    init = "random" if init == "random" else "SimCLR trunk"
    parts.append(f"<p>{_esc(info.get('steps', '?'))} steps, encoder init: {_esc(init)}.</p>")
    rows = [[_esc(label), _num(m.get(key))] for key, label in NUCLEI_KEYS]
    parts.append(_table(("metric", "value"), rows, {1}))
    per_class = m.get("per_class_pq") or {}
    names = list(m.get("type_names") or [])
    if per_class:
        crows = []
        for cid, pq in per_class.items():
            i = int(cid) if str(cid).isdigit() else 0
            name = names[i - 1] if 0 < i <= len(names) else str(cid)
            crows.append([_esc(cid), _esc(name), _num(pq)])
        parts.append(_table(("type id", "type", "PQ"), crows, {2}))
    det = m.get("detection") or {}
    if isinstance(det, dict) and det:
        drows = [[_esc(k), _num(v)] for k, v in det.items() if not isinstance(v, dict | list)]
        if drows:
            parts.append("<details><summary>detection</summary>")
            parts.append(_table(("key", "value"), drows, {1}) + "</details>")
    steps, losses = read_losses(out / "nuclei" / "metrics.jsonl")
    png = draw_curve(steps, losses, out / "nuclei" / "loss_curve.png", title="nuclei head loss")
    parts.append(_img(out, png, "nuclei loss curve"))
    return "".join(parts)


def _section_predict(out: Path) -> str:
    stem = Path(SLIDE).stem
    parts = [f"<h2>Nuclei of {_esc(SLIDE)}</h2>"]
    if not stage_done(out, "predict"):
        return parts[0] + NOT_RUN
    info = _read_json(out / "predict" / STAGE_FILE) or {}
    gj = out / "predict" / f"{stem}.geojson"
    parts.append(
        f"<p>{_num(info.get('nuclei'), '{:,.0f}')} nuclei in {_num(info.get('windows'), '{:.0f}')}"
        f' windows; GeoJSON (QuPath detections): <a href="{_href(out, gj)}">{_esc(gj.name)}</a>'
        "</p>"
    )
    parts.append(_img(out, out / "predict" / f"{stem}_overlay.png", "nuclei overlay"))
    return "".join(parts)


def read_manifest(path: Path) -> list[dict[str, str]]:
    """Rows of a tiling ``manifest.csv`` (empty when missing)."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_report(out: Path, title: str = "pathssl demo report") -> Path:
    """Write ``out/report.html`` atomically and return its path: stage wall times, tiling
    table with overviews, augmentation preview, loss curves (PNGs drawn next to each stage's
    metrics), kNN table, nuclei metrics, slide overlay and GeoJSON link. Stages without
    outputs show "not run". Self-contained: inline CSS, no scripts, relative links only."""
    out = Path(out)
    manifest = read_manifest(out / "tiles" / "manifest.csv")
    t = _esc(title)
    parts = [
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{t}</title>',
        f"<style>{_CSS}</style>\n</head>\n<body>\n<h1>{t}</h1>",
        _section_stages(out, manifest),
        _section_tiling(out, manifest),
        _section_pretrain(out),
        _section_knn(out),
        _section_nuclei(out),
        _section_predict(out),
        "</body>\n</html>\n",
    ]
    path = out / "report.html"
    _atomic_write(path, "\n".join(parts).encode("utf-8"))
    return path


def main(argv: list[str] | None = None) -> int:
    doc = __doc__ or "demo pipeline"
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--out", default="demo_out", help="demo folder (holds tiles/ already)")
    ap.add_argument("--data", default=str(DATA), help="shared data folder")
    ap.add_argument("--pretrain-steps", type=int, default=300)
    ap.add_argument("--nuclei-steps", type=int, default=300)
    ap.add_argument("--force", action="store_true", help="rerun stages that are done")
    ap.add_argument("--report-only", action="store_true", help="only (re)write report.html")
    args = ap.parse_args(argv)
    out = Path(args.out)
    t0 = time.perf_counter()
    if not args.report_only:
        run(out, Path(args.data), args.pretrain_steps, args.nuclei_steps, force=args.force)
    path = write_report(out)
    print(f"report -> {path} ({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
