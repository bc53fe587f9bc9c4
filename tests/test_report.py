"""Tests for tiling.report: the overview PNG (pixel checks) and the HTML report."""

from __future__ import annotations

import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import cv2
import numpy as np
import pytest

from tiling.report import ALPHA, OUTLINE_RGB, overview_size, render_overview, write_report

GREY = (120, 130, 140)  # not neutral, so an RGB/BGR swap shows


def _viridis_rgb(score: float) -> np.ndarray:
    """The colour the documented colour map (OpenCV viridis) gives to a score, as RGB."""
    bgr = cv2.applyColorMap(np.array([[round(score * 255)]], dtype=np.uint8), cv2.COLORMAP_VIRIDIS)
    return bgr[0, 0, ::-1].astype(np.float64)


def _read_rgb(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert img is not None, f"{path} is not a readable image"
    return img[:, :, ::-1]


def _grey(h: int, w: int) -> np.ndarray:
    img = np.empty((h, w, 3), dtype=np.uint8)
    img[:] = GREY
    return img


def test_viridis_anchors() -> None:
    # Independent of OpenCV: the published viridis end points.
    np.testing.assert_allclose(_viridis_rgb(0.0), (68, 1, 84), atol=2)
    np.testing.assert_allclose(_viridis_rgb(1.0), (253, 231, 37), atol=2)


def test_tile_squares_have_score_colours(tmp_path: Path) -> None:
    h, w = 300, 400
    level0 = (8000, 3000)  # anisotropic scale: x * 0.05, y * 0.1 (catches swapped axes)
    tile = 600  # -> 30 px wide, 60 px tall in the thumbnail
    coords = np.array([[400, 300], [2000, 300], [4000, 1500], [6000, 2000]], dtype=np.int64)
    scores = np.array([0.0, 0.5, 1.0, 0.25])
    out = tmp_path / "ov.png"
    render_overview(
        _grey(h, w), np.zeros((30, 40), bool), coords, tile, level0, scores, out, title="t"
    )
    img = _read_rgb(out)
    assert img.shape == (*overview_size((h, w, 3)), 3)
    assert img.shape[0] > h and img.shape[1] == w

    covered = np.zeros((h, w), bool)
    for (x, y), s in zip(coords, scores, strict=True):
        c0, r0 = round(x * 0.05), round(y * 0.1)
        c1, r1 = c0 + 30, r0 + 60
        covered[r0:r1, c0:c1] = True
        expected = (1 - ALPHA) * np.array(GREY) + ALPHA * _viridis_rgb(s)
        centre = img[(r0 + r1) // 2, (c0 + c1) // 2].astype(np.float64)
        np.testing.assert_allclose(centre, expected, atol=2, err_msg=f"tile at {x},{y} score {s}")
        # the whole interior (inside the 1-px border) is the same blended colour
        interior = img[r0 + 1 : r1 - 1, c0 + 1 : c1 - 1].reshape(-1, 3).astype(np.float64)
        assert np.abs(interior - expected).max() <= 2
    # everything off the tiles keeps the thumbnail colour exactly
    thumb_part = img[:h, :w]
    assert (thumb_part[~covered] == GREY).all()
    # the footer holds a legend bar with both ends of the colour map
    footer = img[h:].reshape(-1, 3).astype(np.float64)
    for s in (0.0, 1.0):
        assert np.abs(footer - _viridis_rgb(s)).max(axis=1).min() <= 3


def _four_border(mask: np.ndarray) -> np.ndarray:
    """Foreground pixels with a background 4-neighbour (image edge counts as background)."""
    p = np.pad(mask, 1)
    inner = p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return mask & ~inner


def test_outline_is_on_mask_edge(tmp_path: Path) -> None:
    h, w = 200, 300
    small = np.zeros((100, 150), bool)  # half the thumbnail size: upscaled x2 by nearest
    small[20:60, 30:90] = True
    small[35:45, 50:70] = False  # a hole: its edge is outlined too
    cv2.ellipse(small.view(np.uint8), (120, 60), (15, 25), 0, 0, 360, 1, -1)
    out = tmp_path / "outline.png"
    no_tiles = np.zeros((0, 2), np.int64)
    render_overview(_grey(h, w), small, no_tiles, 256, (3000, 2000), None, out)
    img = _read_rgb(out)[:h, :w]
    changed = (img != GREY).any(axis=2)
    assert (img[changed] == OUTLINE_RGB).all()

    big = np.repeat(np.repeat(small, 2, axis=0), 2, axis=1)
    edge = _four_border(big)
    assert changed[40:120, 60:180].any() and not changed[:35].any()
    # rectangle with hole: exactly its edge pixels, no more, no less
    np.testing.assert_array_equal(changed[:, :200], edge[:, :200])
    # ellipse: outline only on edge pixels and covering (nearly) all of them
    assert not (changed[:, 200:] & ~edge[:, 200:]).any()
    assert changed[:, 200:].sum() >= 0.98 * edge[:, 200:].sum()


def test_float_and_out_of_bounds_tiles(tmp_path: Path) -> None:
    h, w = 300, 300
    coords = np.array(
        [[-300.5, -300.5], [2900.25, 2900.75], [9000.0, 50.0], [-5000.0, 0.0], [np.nan, 0.0]]
    )
    out = tmp_path / "edge.png"
    render_overview(
        _grey(h, w), np.zeros((h, w), bool), coords, 600.0, (3000, 3000), None, out, title="x"
    )
    img = _read_rgb(out)[:h, :w]
    assert (img[5, 5] != GREY).any()  # clipped tile at the top-left corner is drawn
    assert (img[296, 296] != GREY).any()  # and the one hanging over the bottom-right
    assert (img[150, 150] == GREY).all()
    assert (img[5, 150] == GREY).all()  # fully outside (or NaN) tiles draw nothing


def test_bad_inputs_raise(tmp_path: Path) -> None:
    thumb, mask, coords = _grey(50, 50), np.ones((5, 5), bool), np.zeros((3, 2), np.int64)
    with pytest.raises(ValueError, match="scores"):
        render_overview(thumb, mask, coords, 10, (100, 100), np.zeros(2), tmp_path / "a.png")
    with pytest.raises(ValueError, match="thumbnail"):
        render_overview(thumb[..., 0], mask, coords, 10, (100, 100), None, tmp_path / "a.png")
    assert list(tmp_path.iterdir()) == []


def test_tiny_thumbnail_is_enlarged(tmp_path: Path) -> None:
    out = tmp_path / "tiny.png"
    render_overview(
        _grey(16, 16), np.ones((16, 16), bool), np.zeros((0, 2)), 4, (16, 16), None, out
    )
    img = _read_rgb(out)
    assert img.shape == (*overview_size((16, 16, 3)), 3)
    assert img.shape[0] >= 256 and img.shape[1] >= 256


def test_real_slide_overview(cmu_slide: Path, tmp_path: Path) -> None:
    openslide = pytest.importorskip("openslide")
    with openslide.OpenSlide(str(cmu_slide)) as slide:
        thumb = np.asarray(slide.get_thumbnail((555, 742)).convert("RGB"))
        dims = slide.dimensions
    assert thumb.shape == (742, 555, 3)
    sat = cv2.cvtColor(thumb, cv2.COLOR_RGB2HSV)[..., 1]
    mask = cv2.resize((sat > 25).astype(np.uint8), (139, 186), interpolation=cv2.INTER_AREA) > 0
    coords = np.array([[800, 900], [1248, 900], [800, 1348], [2000, 2800]], dtype=np.int64)
    scores = np.array([0.9, 0.6, 0.3, 0.05])
    out = tmp_path / "cmu" / "CMU-1-Small-Region.png"
    render_overview(thumb, mask, coords, 448, dims, scores, out, title=cmu_slide.name)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = _read_rgb(out)
    assert img.shape == (*overview_size(thumb.shape), 3) == (img.shape[0], 555, 3)
    same = (img[:742] == thumb).all(axis=2)
    assert 0.5 < same.mean() < 0.99  # mostly the slide, plus tiles and outline
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]


def test_failed_write_leaves_no_temp(tmp_path: Path) -> None:
    (tmp_path / "taken.png").mkdir()  # os.replace onto a directory fails
    with pytest.raises(OSError):
        render_overview(
            _grey(40, 40), np.ones((4, 4), bool), np.zeros((0, 2)), 8, (40, 40), None,
            tmp_path / "taken.png",
        )  # fmt: skip
    assert [p.name for p in tmp_path.iterdir()] == ["taken.png"]


class _StrictParser(HTMLParser):
    """Records what html.parser lets pass (unbalanced tags) and collects cells, ids and links."""

    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.problems: list[str] = []
        self.rows: list[list[str]] = []  # body rows of the slides table, cell texts
        self.ids: dict[str, str] = {}  # id -> text of <td id=...>
        self.srcs: list[str] = []
        self.hrefs: list[str] = []
        self.tags: set[str] = set()
        self._tables: list[str] = []
        self._cell: list[str] | None = None
        self._id: str | None = None

    def _in_slides_body(self) -> bool:
        return self._tables[-1:] == ["slides"] and "tbody" in self.stack

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.add(tag)
        if tag == "table":
            self._tables.append(a.get("class") or "")
        elif tag == "img":
            self.srcs.append(a.get("src") or "")
        elif tag == "a":
            self.hrefs.append(a.get("href") or "")
        elif tag == "tr" and self._in_slides_body():
            self.rows.append([])
        elif tag == "td":
            self._cell, self._id = [], a.get("id")
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in self.VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.problems.append(f"</{tag}> closes {self.stack[-1:]}")
            return
        self.stack.pop()
        if tag == "table":
            self._tables.pop()
        elif tag == "td" and self._cell is not None:
            text = "".join(self._cell)
            if self._id:
                self.ids[self._id] = text
            elif self._in_slides_body():
                self.rows[-1].append(text)
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def test_write_report(tmp_path: Path) -> None:
    evil = '<script>alert("x")</script> & Co\'s.svs'
    (tmp_path / "overviews").mkdir()
    png_a = "overviews/a b&c.png"
    png_b = tmp_path / "overviews" / "b.png"  # absolute inside out_dir -> made relative
    rows = [
        dict(slide=evil, status="ok", n_tiles=1200, mpp=0.499, mpp_source="openslide",
             seconds=12.5, error="", overview=png_a),
        dict(slide="b.svs", status="ok", n_tiles="34", mpp="0.25", mpp_source="tiff",
             seconds="0.5", error=None, overview=str(png_b)),
        dict(slide="broken.svs", status="failed", n_tiles=0, mpp=None, mpp_source="",
             seconds=0.01, error='OpenSlideError: <bad> & "worse"\n  at line 2'),
        dict(slide="white.svs", status="no_tissue", n_tiles=0, mpp=0.5, mpp_source="user",
             seconds=1.0, error=float("nan")),
        dict(slide="old.svs", status="skipped", n_tiles=7, mpp=0.5, mpp_source="openslide",
             seconds=0.0, error=""),
    ]  # fmt: skip
    path = write_report(tmp_path, rows, title="run <1> & co")
    assert path == tmp_path / "report.html"
    text = path.read_text(encoding="utf-8")
    assert "<script" not in text.lower() and "&lt;script&gt;" in text
    assert "http://" not in text and "https://" not in text  # self-contained
    assert not re.search(r"&(?!(amp|lt|gt|quot|#x27|#\d+);)", text)  # every & is an entity

    p = _StrictParser()
    p.feed(text)
    p.close()
    assert p.problems == [] and p.stack == []
    assert "script" not in p.tags and "link" not in p.tags
    assert len(p.rows) == len(rows)
    assert [r[0] for r in p.rows] == [r["slide"] for r in rows]  # escaped, and read back intact
    assert [r[1] for r in p.rows] == [r["status"] for r in rows]
    failed = p.rows[2]
    assert 'OpenSlideError: <bad> & "worse"' in "".join(failed)
    assert p.rows[3][-1] == ""  # NaN error shows nothing

    assert p.ids["total-slides"] == "5"
    counts = {k: p.ids[f"total-status-{k}"] for k in ("ok", "failed", "no_tissue", "skipped")}
    assert counts == {"ok": "2", "failed": "1", "no_tissue": "1", "skipped": "1"}
    assert p.ids["total-tiles"] == "1,241"
    assert p.ids["total-seconds"] == "14.0 s"

    assert len(p.srcs) == 2 and p.hrefs == p.srcs
    for src, want in zip(p.srcs, [png_a, "overviews/b.png"], strict=True):
        parts = urlsplit(src)
        assert not parts.scheme and not parts.netloc and not src.startswith("/")
        assert " " not in src  # percent-encoded
        assert unquote(src) == want
    assert sorted(x.name for x in tmp_path.iterdir()) == ["overviews", "report.html"]

    # rewriting over an existing report leaves no temp files either; empty run works
    write_report(tmp_path, [])
    assert sorted(x.name for x in tmp_path.iterdir()) == ["overviews", "report.html"]
    assert 'id="total-slides">0<' in path.read_text(encoding="utf-8")


def test_report_module_does_not_import_torch() -> None:
    code = "import sys, tiling.report; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
