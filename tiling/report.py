"""Pictures of a tiling run: a per-slide overview PNG and an HTML report over all slides.

numpy + OpenCV only (no torch, no matplotlib). Every file is written atomically by the one
atomic writer (:func:`tiling.atomic.atomic_write`).
"""

from __future__ import annotations

import html
import math
import os
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import quote

import cv2
import numpy as np

from tiling.atomic import atomic_write

__all__ = ["ALPHA", "COLORMAP", "OUTLINE_RGB", "overview_size", "render_overview", "score_to_rgb"]

ALPHA = 0.45  # opacity of a tile's filled square over the thumbnail
COLORMAP = cv2.COLORMAP_VIRIDIS  # score 0 -> dark purple, score 1 -> yellow
NO_SCORE_RGB = (0, 160, 255)  # tile colour when no scores are given
OUTLINE_RGB = (255, 0, 0)  # tissue outline
MIN_WIDTH = 360  # narrower thumbnails get white margin on the right so the legend fits
MIN_SIDE = 256  # smaller thumbnails are enlarged (nearest neighbour) by an integer factor
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_TEXT_RGB = (40, 40, 40)
_STATUS_ORDER = ("ok", "failed", "no_tissue", "skipped")


def score_to_rgb(scores: np.ndarray) -> np.ndarray:
    """Colour-map scores in [0, 1] (clipped; NaN counts as 0) to (N, 3) uint8 RGB."""
    s = np.nan_to_num(np.asarray(scores, dtype=np.float64).ravel(), nan=0.0)
    if s.size == 0:
        return np.zeros((0, 3), np.uint8)
    idx = np.rint(np.clip(s, 0.0, 1.0) * 255.0).astype(np.uint8)
    bgr = cv2.applyColorMap(idx.reshape(-1, 1), COLORMAP).reshape(-1, 3)
    return np.ascontiguousarray(bgr[:, ::-1])


def _upscale_factor(h: int, w: int) -> int:
    return max(1, math.ceil(MIN_SIDE / max(h, w, 1)))


def _nearest(n_out: int, n_in: int) -> np.ndarray:
    """Source index of each output pixel when resampling n_in -> n_out by nearest neighbour."""
    return np.minimum(((np.arange(n_out) + 0.5) * n_in / n_out).astype(np.intp), n_in - 1)


def _font_scale(width: int) -> float:
    return float(np.clip(width / 900.0, 0.4, 1.2))


def _row_height(width: int) -> int:
    return round(30 * _font_scale(width))


def overview_size(thumbnail_shape: tuple[int, ...]) -> tuple[int, int]:
    """(height, width) of the PNG that :func:`render_overview` writes for this thumbnail shape.

    The (possibly enlarged) thumbnail sits at the top-left corner, pixel for pixel; below it a
    white footer of two text rows holds the title and the legend.
    """
    k = _upscale_factor(thumbnail_shape[0], thumbnail_shape[1])
    h, w = thumbnail_shape[0] * k, thumbnail_shape[1] * k
    width = max(w, MIN_WIDTH)
    return h + 2 * _row_height(width) + 8, width


def _fit_text(text: str, scale: float, max_width: int) -> str:
    """ASCII-only (Hershey fonts) and shortened with '...' to fit ``max_width`` pixels."""
    text = "".join(c if 32 <= ord(c) < 127 else "?" for c in text)
    if cv2.getTextSize(text, _FONT, scale, 1)[0][0] <= max_width:
        return text
    while text and cv2.getTextSize(text + "...", _FONT, scale, 1)[0][0] > max_width:
        text = text[:-1]
    return text + "..."


def _put(img: np.ndarray, text: str, x: int, baseline: int, scale: float) -> int:
    """Draw ``text``; return the x just after it."""
    cv2.putText(img, text, (x, baseline), _FONT, scale, _TEXT_RGB, 1, cv2.LINE_AA)
    return x + cv2.getTextSize(text, _FONT, scale, 1)[0][0]


def _draw_footer(
    canvas: np.ndarray, top: int, title: str, n_tiles: int, scored: bool, score_name: str
) -> None:
    width = canvas.shape[1]
    fs, row = _font_scale(width), _row_height(width)
    pad = max(4, row // 4)
    text_h = cv2.getTextSize("Ag", _FONT, fs, 1)[0][1]
    base1 = top + (row + text_h) // 2
    count = f"{n_tiles} tiles"
    count_w = cv2.getTextSize(count, _FONT, fs, 1)[0][0]
    _put(canvas, count, width - pad - count_w, base1, fs)
    _put(canvas, _fit_text(title, fs, width - 4 * pad - count_w), pad, base1, fs)
    base2 = base1 + row
    y0, y1 = base2 - text_h, base2
    x = pad
    if scored:
        x = _put(canvas, _fit_text(score_name, fs, width // 3) + ": 0", x, base2, fs) + pad
        bar_w = max(60, width // 5)
        ramp = score_to_rgb(np.linspace(0.0, 1.0, bar_w))
        canvas[y0:y1, x : x + bar_w] = ramp[None, :, :]
        x = _put(canvas, "1", x + bar_w + pad, base2, fs)
    else:
        canvas[y0:y1, x : x + text_h] = NO_SCORE_RGB
        x = _put(canvas, "tile", x + text_h + pad, base2, fs)
    x += 2 * pad
    ymid = (y0 + y1) // 2
    cv2.line(canvas, (x, ymid), (x + 2 * text_h, ymid), OUTLINE_RGB, 2)
    _put(canvas, "tissue outline", x + 2 * text_h + pad, base2, fs)


def render_overview(
    thumbnail: np.ndarray,
    tissue_mask: np.ndarray,
    coords: np.ndarray,
    tile_size_level0: float,
    level0_dims: tuple[int, int],
    scores: np.ndarray | None,
    out_png: str | Path,
    *,
    title: str = "",
    score_name: str = "tissue",
) -> None:
    """Write a PNG overview of one slide's tiling.

    ``thumbnail`` (h, w, 3) uint8 RGB of the whole slide (an alpha channel is dropped);
    ``tissue_mask`` (mh, mw) bool over the same slide extent, rescaled to the thumbnail with
    nearest neighbour; ``coords`` (N, 2) level-0 x, y of each kept tile's top-left (int or
    float); ``tile_size_level0`` tile side in level-0 pixels; ``level0_dims`` (width, height) of
    level 0; ``scores`` (N,) in [0, 1] or None. Thumbnail x = level-0 x * thumb_w / level0_w and
    likewise for y. Tiles are filled squares coloured by :func:`score_to_rgb` blended with opacity
    :data:`ALPHA` (opaque 1-px border when the square is at least 8 px wide); tiles partly
    outside the slide are clipped, fully outside ones skipped. The tissue outline is drawn on top
    in :data:`OUTLINE_RGB`. Layout: see :func:`overview_size`. Thumbnails whose longer side is
    under ``MIN_SIDE`` are enlarged by an integer factor first.
    """
    thumb = np.asarray(thumbnail)
    if thumb.ndim != 3 or thumb.shape[2] not in (3, 4) or thumb.dtype != np.uint8:
        raise ValueError(f"thumbnail must be (h, w, 3) uint8 RGB, got {thumb.shape} {thumb.dtype}")
    mask = np.asarray(tissue_mask)
    if mask.ndim != 2:
        raise ValueError(f"tissue_mask must be 2-D, got shape {mask.shape}")
    xy = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    if scores is not None and np.asarray(scores).size != len(xy):
        raise ValueError(f"{np.asarray(scores).size} scores for {len(xy)} tiles")
    w0, h0 = level0_dims
    if w0 <= 0 or h0 <= 0 or not tile_size_level0 > 0:
        raise ValueError(f"bad level0_dims {level0_dims} or tile_size_level0 {tile_size_level0}")

    k = _upscale_factor(thumb.shape[0], thumb.shape[1])
    img = np.repeat(np.repeat(thumb[:, :, :3], k, axis=0), k, axis=1) if k > 1 else thumb[..., :3]
    h, w = img.shape[:2]
    sx, sy = w / w0, h / h0

    # Tiles: paint an overlay + coverage, blend once (overlapping tiles do not darken twice).
    overlay = np.zeros((h, w, 3), dtype=np.uint8)
    covered_u8 = np.zeros((h, w), dtype=np.uint8)
    colours = score_to_rgb(scores) if scores is not None else np.tile(NO_SCORE_RGB, (len(xy), 1))
    with np.errstate(invalid="ignore"):
        finite: np.ndarray = np.asarray(np.isfinite(xy).all(axis=1))
        safe = np.where(finite[:, None], xy, 0.0)
        c0 = np.maximum(0, np.floor(safe[:, 0] * sx)).astype(np.int64)
        r0 = np.maximum(0, np.floor(safe[:, 1] * sy)).astype(np.int64)
        c1 = np.minimum(w, np.ceil((safe[:, 0] + tile_size_level0) * sx)).astype(np.int64)
        r1 = np.minimum(h, np.ceil((safe[:, 1] + tile_size_level0) * sy)).astype(np.int64)
    keep = np.flatnonzero(finite & (c1 > c0) & (r1 > r0))
    boxes = [
        ((int(c0[i]), int(r0[i])), (int(c1[i]) - 1, int(r1[i]) - 1), tuple(colours[i].tolist()))
        for i in keep
    ]
    for p0, p1, colour in boxes:  # filled rectangles, in C
        cv2.rectangle(overlay, p0, p1, colour, -1)
        cv2.rectangle(covered_u8, p0, p1, 255, -1)
    view = np.array(img, dtype=np.uint8, order="C")  # contiguous copy: cv2 draws in place
    blended = cv2.addWeighted(view, 1 - ALPHA, overlay, ALPHA, 0.0)
    np.copyto(view, blended, where=covered_u8[:, :, None].astype(bool))
    if tile_size_level0 * min(sx, sy) >= 8:
        for p0, p1, colour in boxes:
            cv2.rectangle(view, p0, p1, colour, 1)

    # Tissue outline: mask -> thumbnail grid by nearest neighbour (pixel centres), then contours.
    if mask.size:
        big = mask.astype(np.uint8)
        if big.shape != (h, w):
            rows, cols = _nearest(h, mask.shape[0]), _nearest(w, mask.shape[1])
            big = big[np.ix_(rows, cols)]
        contours, _ = cv2.findContours(big, cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
        thickness = max(1, round(max(h, w) / 1000))
        cv2.drawContours(view, contours, -1, OUTLINE_RGB, thickness)

    canvas_h, canvas_w = overview_size(thumb.shape)
    canvas = np.full((canvas_h, canvas_w, 3), 255, dtype=np.uint8)
    canvas[:h, :w] = view
    _draw_footer(canvas, h + 4, title, len(xy), scores is not None, score_name)
    ok, png = cv2.imencode(
        ".png", np.ascontiguousarray(canvas[:, :, ::-1]), [cv2.IMWRITE_PNG_COMPRESSION, 1]
    )
    if not ok:
        raise RuntimeError(f"could not encode overview PNG for {out_png}")
    atomic_write(Path(out_png), png.tobytes())


def _num(value: Any) -> float | None:
    """A finite float from a manifest cell (number or CSV string), else None."""
    if value is None or isinstance(value, bool):
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _fmt_seconds(s: float) -> str:
    if s < 60:
        return f"{s:.1f} s"
    m, s = divmod(round(s), 60)
    return f"{m // 60} h {m % 60:02d} min" if m >= 60 else f"{m} min {s:02d} s"


def _cell(value: Any, fmt: str = "{}") -> str:
    """Escaped cell text; numbers formatted with ``fmt``; None / NaN / empty show nothing."""
    if value is None or str(value).strip().lower() in ("", "nan", "none"):
        return ""
    num = _num(value)
    return html.escape(fmt.format(num) if num is not None and fmt != "{}" else str(value))


def _overview_href(out_dir: Path, overview: Any) -> str | None:
    if not overview:
        return None
    p = Path(str(overview))
    if p.is_absolute():
        p = Path(os.path.relpath(p, out_dir))
    return html.escape(quote(p.as_posix(), safe="/"), quote=True)


_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse}th,td{border:1px solid #ccc;padding:4px 8px;vertical-align:top}
th{background:#f0f0f0;text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums}
.totals{margin-bottom:1.2em}.totals td{text-align:right}
.ok{background:#d8f3dc}.failed{background:#f8d7da}.no_tissue{background:#fff3cd}
.skipped{background:#e9ecef}.other{background:#e2e3f3}
td.error{max-width:40em;white-space:pre-wrap;font-family:monospace;font-size:12px}
img{max-height:120px;max-width:160px;border:1px solid #999}
"""


def write_report(
    out_dir: str | Path, rows: list[dict[str, Any]], *, title: str = "pathssl tile report"
) -> Path:
    """Write ``<out_dir>/report.html`` atomically and return its path.

    One table row per slide, with the manifest keys ``slide``, ``status`` (ok | failed |
    no_tissue | skipped), ``n_tiles``, ``mpp``, ``mpp_source``, ``seconds``, ``error`` (values may
    be numbers or CSV strings; missing keys show empty) and an optional ``overview``: a PNG path
    relative to ``out_dir`` shown as a clickable thumbnail. Totals on top: slides per status,
    tiles, and seconds summed over slides. Self-contained (inline CSS, no scripts, no network);
    all text is HTML-escaped and hrefs are percent-encoded.
    """
    out = Path(out_dir)
    counts = Counter(str(r.get("status", "")) for r in rows)
    n_tiles = sum(int(n) for r in rows if (n := _num(r.get("n_tiles"))) is not None)
    seconds = sum(s for r in rows if (s := _num(r.get("seconds"))) is not None)
    statuses = list(_STATUS_ORDER) + sorted(set(counts) - set(_STATUS_ORDER))

    def css_class(status: str) -> str:
        return status if status in _STATUS_ORDER else "other"

    totals = [("slides", "slides", str(len(rows)))]
    totals += [(f"status-{s}", s or "(no status)", str(counts[s])) for s in statuses]
    totals += [("tiles", "tiles", f"{n_tiles:,}"), ("seconds", "time (sum)", _fmt_seconds(seconds))]
    t = html.escape(title)
    parts = [
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{t}</title>',
        f'<style>{_CSS}</style>\n</head>\n<body>\n<h1>{t}</h1>\n<table class="totals"><tbody>',
    ]
    for key, label, value in totals:
        cls = f' class="{css_class(key[7:])}"' if key.startswith("status-") else ""
        parts.append(
            f'<tr><th>{html.escape(label)}</th><td{cls} id="total-{html.escape(key, quote=True)}">'
            f"{html.escape(value)}</td></tr>"
        )
    head = ("slide", "status", "tiles", "mpp", "mpp source", "seconds", "overview", "error")
    parts.append('</tbody></table>\n<table class="slides">\n<thead><tr>')
    parts.append("".join(f"<th>{h}</th>" for h in head) + "</tr></thead>\n<tbody>")
    for r in rows:
        status = str(r.get("status", ""))
        href = _overview_href(out, r.get("overview"))
        img = f'<a href="{href}"><img src="{href}" alt="overview"></a>' if href else ""
        error = _cell(r.get("error"))
        if len(error) > 300 or "\n" in error:  # long tracebacks fold away behind their first line
            first = html.escape(str(r.get("error")).strip().splitlines()[0][:120])
            error = f"<details><summary>{first}</summary>{error}</details>"
        parts.append(
            f'<tr><td>{_cell(r.get("slide"))}</td><td class="{css_class(status)}">'
            f"{html.escape(status)}</td>"
            f'<td class="num">{_cell(r.get("n_tiles"), "{:,.0f}")}</td>'
            f'<td class="num">{_cell(r.get("mpp"), "{:.4g}")}</td>'
            f"<td>{_cell(r.get('mpp_source'))}</td>"
            f'<td class="num">{_cell(r.get("seconds"), "{:.1f}")}</td>'
            f'<td>{img}</td><td class="error">{error}</td></tr>'
        )
    parts.append("</tbody>\n</table>\n</body>\n</html>\n")
    path = out / "report.html"
    atomic_write(path, "\n".join(parts).encode("utf-8"))
    return path
