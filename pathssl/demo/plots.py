"""Loss curves for the demo report: read a metrics JSONL file, draw a line plot with OpenCV."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from tiling.atomic import atomic_write

CURVE_SIZE = (360, 640)  # (height, width) of the loss-curve PNGs
CURVE_RGB = (30, 90, 180)  # colour of the plotted line
#: colours of further series (``more=`` of :func:`draw_curve`)
MORE_RGB = ((210, 90, 30), (40, 150, 60), (150, 50, 160))


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


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
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
    label: str = "",
    more: Sequence[tuple[str, Sequence[float], Sequence[float]]] = (),
) -> Path:
    """Line plot of ``values`` against ``steps``: axes, ticks, axis labels and a title on a
    white ``size`` = (height, width) RGB canvas, written atomically as a PNG.

    ``more``: further ``(label, steps, values)`` series on the same axes, in the colours of
    :data:`MORE_RGB`, with a legend naming ``label`` (the first series) and theirs."""
    h, w = size
    img = np.full((h, w, 3), 255, np.uint8)
    font, fs, ink, grid = cv2.FONT_HERSHEY_SIMPLEX, 0.42, (40, 40, 40), (225, 225, 225)
    x0, x1, y0, y1 = 70, w - 20, 34, h - 52  # plot box in pixels
    series = [(label, np.asarray(steps, np.float64), np.asarray(values, np.float64))]
    series += [(n, np.asarray(a, np.float64), np.asarray(b, np.float64)) for n, a, b in more]
    xs = np.concatenate([s[1] for s in series])
    ys = np.concatenate([s[2] for s in series])
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

    def text(label: str, org: tuple[int, int], scale: float = fs) -> None:
        cv2.putText(img, label, org, font, scale, ink, 1, cv2.LINE_AA)

    for t in nice_ticks(ylo, yhi):
        y = px(xlo, t)[1]
        cv2.line(img, (x0, y), (x1, y), grid, 1)
        cv2.line(img, (x0 - 4, y), (x0, y), ink, 1)
        tick = f"{t:.4g}"
        text(tick, (x0 - 8 - cv2.getTextSize(tick, font, fs, 1)[0][0], y + 4))
    for t in nice_ticks(xlo, xhi):
        x = px(t, ylo)[0]
        cv2.line(img, (x, y1), (x, y1 + 4), ink, 1)
        tick = f"{t:g}"
        text(tick, (x - cv2.getTextSize(tick, font, fs, 1)[0][0] // 2, y1 + 18))
    cv2.rectangle(img, (x0, y0), (x1, y1), ink, 1)
    colours = (CURVE_RGB, *MORE_RGB)
    legend_x = x1 - 36 - max(cv2.getTextSize(n, font, fs, 1)[0][0] for n, _, _ in series)
    for i, (name, sx, sy) in reversed(list(enumerate(series))):  # the first series on top
        colour = colours[i % len(colours)]
        if len(sx):
            pts = np.array([px(float(a), float(b)) for a, b in zip(sx, sy, strict=True)], np.int32)
            cv2.polylines(img, [pts.reshape(-1, 1, 2)], False, colour, 2, cv2.LINE_AA)
            if len(pts) == 1:  # a single record: a dot, not an invisible line
                cv2.circle(img, (int(pts[0, 0]), int(pts[0, 1])), 4, colour, -1, cv2.LINE_AA)
        if len(series) > 1 and name:  # legend, top right inside the box
            lx, ly = legend_x, y0 + 16 + 16 * i
            cv2.line(img, (lx, ly - 4), (lx + 20, ly - 4), colour, 2, cv2.LINE_AA)
            text(name, (lx + 26, ly))
    if not len(xs):
        text("no data", (x0 + 10, (y0 + y1) // 2), 0.6)
    text(xlabel, ((x0 + x1 - cv2.getTextSize(xlabel, font, 0.5, 1)[0][0]) // 2, h - 12), 0.5)
    text(title, (x0, 22), 0.55)
    side = np.full((20, 200, 3), 255, np.uint8)  # y label, drawn then rotated
    cv2.putText(side, ylabel, (4, 15), font, 0.5, ink, 1, cv2.LINE_AA)
    upright = np.asarray(cv2.rotate(side, cv2.ROTATE_90_COUNTERCLOCKWISE), np.uint8)
    yoff = max(0, (y0 + y1) // 2 - 100)
    img[yoff : yoff + 200, 2:22] = upright[: h - yoff]
    ok, png = cv2.imencode(".png", np.ascontiguousarray(img[:, :, ::-1]))
    if not ok:
        raise RuntimeError(f"could not encode {out_png}")
    atomic_write(out_png, png.tobytes())
    return out_png
