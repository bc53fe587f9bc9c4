"""Evaluation outputs: a metrics JSON (``nan`` written as ``null``) and a confusion-matrix PNG
drawn with OpenCV (no matplotlib). Torch-free."""

from __future__ import annotations

import json
import math
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


def write_json(path: str | Path, data: dict[str, Any]) -> Path:
    """Write ``data`` as indented, strict JSON (atomically, fsynced: :mod:`tiling.atomic`)."""
    return atomic_write(path, json.dumps(to_json_ready(data), indent=2, allow_nan=False) + "\n")


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
