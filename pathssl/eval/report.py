"""Evaluation outputs: a metrics JSON (``nan`` written as ``null``) and a confusion-matrix PNG
drawn with OpenCV (no matplotlib); a benchmark's table (markdown, CSV, JSON) and bar-chart PNG
(:func:`benchmark_report`, :func:`write_benchmark`). Torch-free."""

from __future__ import annotations

import csv
import io
import json
import math
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from numpy.typing import ArrayLike, NDArray

from tiling.atomic import atomic_write


def to_json_ready(value: Any) -> Any:
    """Plain-Python copy of ``value``: numpy scalars/arrays converted, ``nan``/``inf`` -> None."""
    if isinstance(value, dict):
        return {str(k): to_json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json_ready(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_json_ready(value.tolist())
    if isinstance(value, np.generic):
        return to_json_ready(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def json_text(data: dict[str, Any]) -> str:
    """``data`` as indented, strict JSON text (:func:`to_json_ready`: NaN and inf as null)."""
    return json.dumps(to_json_ready(data), indent=2, allow_nan=False) + "\n"


def write_json(path: str | Path, data: dict[str, Any]) -> Path:
    """Write :func:`json_text` of ``data`` (atomically, fsynced: :mod:`tiling.atomic`)."""
    return atomic_write(path, json_text(data))


def confusion_image(
    matrix: ArrayLike, class_names: Sequence[str], title: str = "", cell: int = 72
) -> NDArray[np.uint8]:
    """``(H, W, 3)`` uint8 RGB picture of a ``(C, C)`` confusion matrix (rows = true class,
    columns = predicted): cells shaded by row-normalised frequency, with counts."""
    cm = np.asarray(matrix, dtype=np.int64)
    c = cm.shape[0]
    if cm.shape != (c, c) or len(class_names) != c:
        raise ValueError(f"matrix {cm.shape} and {len(class_names)} class names do not agree")
    font = cv2.FONT_HERSHEY_SIMPLEX
    names = [str(n)[:14] for n in class_names]
    label_w = max([cv2.getTextSize(n, font, 0.5, 1)[0][0] for n in names] + [40]) + 16
    top = 56 if title else 32
    left = label_w + 24
    h = top + c * cell + label_w + 24
    w = left + c * cell + 16
    img = np.full((h, w, 3), 255, dtype=np.uint8)
    rows = cm.sum(axis=1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0)
    for i in range(c):
        for j in range(c):
            x0, y0 = left + j * cell, top + i * cell
            shade = int(round(255 - 200 * frac[i, j]))
            cv2.rectangle(img, (x0, y0), (x0 + cell, y0 + cell), (shade, shade, 255), -1)
            cv2.rectangle(img, (x0, y0), (x0 + cell, y0 + cell), (120, 120, 120), 1)
            text = str(int(cm[i, j]))
            (tw, th), _ = cv2.getTextSize(text, font, 0.5, 1)
            ink = (255, 255, 255) if frac[i, j] > 0.6 else (0, 0, 0)
            org = (x0 + (cell - tw) // 2, y0 + (cell + th) // 2)
            cv2.putText(img, text, org, font, 0.5, ink, 1, cv2.LINE_AA)
    for k, name in enumerate(names):
        y = top + k * cell + cell // 2 + 5
        cv2.putText(img, name, (8, y), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    # column names, written horizontally then rotated to run upwards under the grid
    strip = np.full((cell * c, label_w, 3), 255, dtype=np.uint8)
    for k, name in enumerate(names):
        cv2.putText(
            strip, name, (4, k * cell + cell // 2 + 5), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA
        )
    strip = np.ascontiguousarray(np.rot90(strip))
    img[top + c * cell + 8 : top + c * cell + 8 + label_w, left : left + c * cell] = strip
    cv2.putText(img, "true \\ predicted", (8, top - 10), font, 0.45, (80, 80, 80), 1, cv2.LINE_AA)
    if title:
        cv2.putText(img, title[:60], (8, 22), font, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    return img


def write_confusion_png(
    path: str | Path, matrix: ArrayLike, class_names: Sequence[str], title: str = ""
) -> Path:
    """Write :func:`confusion_image` as a PNG (atomically); returns ``path``."""
    rgb = confusion_image(matrix, class_names, title)
    ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"could not encode the confusion matrix PNG for {path}")
    return atomic_write(path, png.tobytes())


# ------------------------------------------------------------------- benchmark table and figure

PALETTE = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
]  # RGB, one per encoder


def benchmark_report(
    records: Sequence[dict[str, Any]],
    encoders: Sequence[str],
    tasks: Sequence[tuple[str, str, str]],
    skipped: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Table of a benchmark from its cell ``records`` (``encoder, task, fraction, seed,
    scores{protocol: {metric: value}}``): one row per encoder x task x protocol x fraction x
    metric with mean, sd (over seeds, :func:`pathssl.data.sweep.mean_sd`) and the values.
    ``tasks``: (name, headline metric, note) in order; ``skipped``: encoder name -> why."""
    from pathssl.data.sweep import mean_sd

    groups: dict[tuple[str, str, str, float, str], dict[int, Any]] = {}
    for r in records:
        for protocol, scores in r["scores"].items():
            for metric, value in scores.items():
                key = (r["encoder"], r["task"], protocol, float(r["fraction"]), metric)
                groups.setdefault(key, {})[int(r["seed"])] = value
    order = {n: i for i, n in enumerate(encoders)}
    task_order = {t[0]: i for i, t in enumerate(tasks)}
    rows = []
    for key in sorted(
        (k for k in groups if k[0] in order and k[1] in task_order),
        key=lambda k: (task_order[k[1]], k[2], k[4], k[3], order[k[0]]),
    ):
        by_seed = groups[key]
        seeds = sorted(by_seed)
        values = [by_seed[s] for s in seeds]
        rows.append(
            dict(zip(("encoder", "task", "protocol", "fraction", "metric"), key, strict=True))
            | mean_sd(values)
            | {"seeds": seeds, "values": values}
        )
    notes = [f"{name}: {note}" for name, _, note in tasks if note]
    notes += [f"encoder {n} skipped: {why}" for n, why in (skipped or {}).items()]
    notes.append(
        "mean +- sample sd over seeds (a stratified, seeded, nested subset of the training "
        "labels per fraction and seed); a single run shows no sd"
    )
    return {
        "encoders": list(encoders),
        "tasks": [{"name": n, "metric": m, "note": note} for n, m, note in tasks],
        "skipped": dict(skipped or {}),
        "rows": rows,
        "notes": notes,
    }


def _fmt(row: dict[str, Any] | None) -> str:
    if row is None or row["mean"] is None:
        return "-"
    return f"{row['mean']:.3f}" if row["sd"] is None else f"{row['mean']:.3f} ± {row['sd']:.3f}"


def headline(report: dict[str, Any]) -> list[tuple[str, str, float, str]]:
    """The table's columns: (task, protocol, fraction, metric) of each task's headline
    metric, in the report's order."""
    metric = {t["name"]: t["metric"] for t in report["tasks"]}
    cols: list[tuple[str, str, float, str]] = []
    for r in report["rows"]:
        col = (r["task"], r["protocol"], r["fraction"], r["metric"])
        if r["metric"] == metric[r["task"]] and col not in cols:
            cols.append(col)
    return cols


def benchmark_markdown(report: dict[str, Any]) -> str:
    """The headline table: one row per encoder, one column per task x protocol x fraction."""
    cols = headline(report)
    index = {
        (r["encoder"], r["task"], r["protocol"], r["fraction"], r["metric"]): r
        for r in report["rows"]
    }
    head = ["encoder"] + [f"{t} · {p} · {m} @ {f:.0%}" for t, p, f, m in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for enc in report["encoders"]:
        cells = [_fmt(index.get((enc, t, p, f, m))) for t, p, f, m in cols]
        lines.append("| " + " | ".join([enc, *cells]) + " |")
    notes = [f"- {n}" for n in report["notes"]]
    return "\n".join(lines + [""] + notes) + "\n"


def benchmark_csv(report: dict[str, Any]) -> str:
    """Every row (all metrics): ``encoder,task,protocol,metric,fraction,mean,sd,n``."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    keys = ("encoder", "task", "protocol", "metric", "fraction", "mean", "sd", "n")
    writer.writerow(keys)
    for r in report["rows"]:
        writer.writerow(["" if r[k] is None else r[k] for k in keys])
    return buf.getvalue()


def benchmark_image(
    report: dict[str, Any], panel: tuple[int, int] = (440, 300)
) -> NDArray[np.uint8]:
    """``(H, W, 3)`` uint8 RGB bar chart: one panel per task x protocol (headline metric,
    0..1), bars grouped by label fraction, one colour per encoder, +-sd whiskers; legend on top,
    the report's notes below."""
    font = cv2.FONT_HERSHEY_SIMPLEX
    cols = headline(report)
    panels: list[tuple[str, str, str]] = []
    for t, p, _, m in cols:
        if (t, p, m) not in panels:
            panels.append((t, p, m))
    index = {
        (r["encoder"], r["task"], r["protocol"], r["fraction"], r["metric"]): r
        for r in report["rows"]
    }
    encs = report["encoders"]
    pw, ph = panel
    ncol = max(1, min(3, len(panels)))
    nrow = max(1, -(-len(panels) // ncol))
    width = max(ncol * pw, 640)
    wrap = (width - 16) // 7  # characters per note line at this font size
    notes = [line for n in report["notes"] for line in textwrap.wrap(n, wrap)]  # at spaces
    top, bottom = 40, 18 * len(notes) + 16
    img = np.full((top + nrow * ph + bottom, width, 3), 255, np.uint8)
    x = 10
    for k, enc in enumerate(encs):  # legend
        colour = PALETTE[k % len(PALETTE)]
        cv2.rectangle(img, (x, 14), (x + 14, 28), colour, -1)
        cv2.putText(img, enc[:24], (x + 20, 27), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        x += 40 + 10 * len(enc[:24])
    for n, (task, protocol, metric) in enumerate(panels):
        ox, oy = (n % ncol) * pw, top + (n // ncol) * ph
        left, right, ptop, pbot = ox + 44, ox + pw - 12, oy + 30, oy + ph - 34
        cv2.putText(
            img,
            f"{task} / {protocol} ({metric})"[:48],
            (ox + 8, oy + 18),
            font,
            0.45,
            (0, 0, 0),
            1,
            cv2.LINE_AA,
        )
        for t in np.linspace(0, 1, 6):
            y = int(pbot - t * (pbot - ptop))
            cv2.line(img, (left, y), (right, y), (225, 225, 225), 1)
            cv2.putText(img, f"{t:.1f}", (ox + 10, y + 4), font, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
        fracs = [f for t, p, f, m in cols if (t, p, m) == (task, protocol, metric)]
        gw = (right - left) / max(1, len(fracs))
        bw = max(2, int(gw * 0.8 / max(1, len(encs))))
        for g, frac in enumerate(fracs):
            gx = int(left + g * gw + gw * 0.1)
            cv2.putText(
                img,
                f"{frac:.0%}",
                (int(left + g * gw + gw / 2) - 12, pbot + 18),
                font,
                0.45,
                (0, 0, 0),
                1,
                cv2.LINE_AA,
            )
            for k, enc in enumerate(encs):
                row = index.get((enc, task, protocol, frac, metric))
                if row is None or row["mean"] is None:
                    continue
                x0 = gx + k * bw
                y = int(pbot - min(max(row["mean"], 0.0), 1.0) * (pbot - ptop))
                cv2.rectangle(img, (x0, y), (x0 + bw - 2, pbot), PALETTE[k % len(PALETTE)], -1)
                cv2.putText(
                    img, f"{row['mean']:.2f}", (x0, y - 4), font, 0.33, (0, 0, 0), 1, cv2.LINE_AA
                )
                if row["sd"] is not None:
                    d = int(row["sd"] * (pbot - ptop))
                    xc = x0 + (bw - 2) // 2
                    cv2.line(img, (xc, y - d), (xc, y + d), (0, 0, 0), 1)
        cv2.rectangle(img, (left, ptop), (right, pbot), (0, 0, 0), 1)
    for i, note in enumerate(notes):
        y = top + nrow * ph + 14 + 18 * i
        cv2.putText(img, note, (8, y), font, 0.4, (60, 60, 60), 1, cv2.LINE_AA)
    return img


def write_benchmark(out: str | Path, report: dict[str, Any]) -> dict[str, Path]:
    """``benchmark.json`` / ``.csv`` / ``.md`` / ``.png`` of a report in ``out`` (atomically)."""
    out = Path(out)
    rgb = benchmark_image(report)
    ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"could not encode the benchmark figure for {out}")
    return {
        "json": write_json(out / "benchmark.json", report),
        "csv": atomic_write(out / "benchmark.csv", benchmark_csv(report)),
        "md": atomic_write(out / "benchmark.md", benchmark_markdown(report)),
        "png": atomic_write(out / "benchmark.png", png.tobytes()),
    }
