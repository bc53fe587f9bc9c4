"""Build a large, realistic, deterministic benchmark slide from real H&E pixels.

The slide is a pyramidal generic tiled TIFF (JPEG tiles of 256 px, YCbCr 4:2:0 with shared
JPEGTables, one page per level, resolution tags in centimetres) that OpenSlide opens with vendor
``generic-tiff``. Its content is built only from real pixels in ``../shared/data``:

* **glass**: the background colour measured on the real Aperio slide's glass, with a smooth
  shading field and faint pixel noise;
* **tissue islands**: irregular blobs (perturbed ellipses plus smooth noise, thresholded at the
  exact quantile so they cover ``tissue_fraction`` of the slide) filled with a Voronoi patchwork of
  real tissue: each cell (~320 px) shows a 640 px window of dense tissue (>= 80% stained pixels)
  cut from the real Aperio H&E slide ``CMU-1-Small-Region.svs`` (0.499 mpp, so pixel scale and
  stain are those of one real slide), turned by one of the 8 flips / 90-degree rotations
  (mirror-extended beyond the window's edge, which only the largest cells reach).

Level 0 is generated one row of tiles at a time; each lower level is the 2x2 area average of the
level above, built in the same pass from a two-row strip buffer and kept JPEG-compressed in memory
until its page is written, so memory stays around a few hundred MB for a 32k x 32k slide.
The same parameters give the same bytes. ``build_benchmark_slide`` reuses an existing file whose
``.json`` sidecar records the same parameters.

Usage::

    python benchmarks/make_slide.py bench_out/bench-slide.tiff [--size 32768] [--seed 0]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import cv2
import imagecodecs
import numpy as np

GENERATOR_VERSION = 1
REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("PATHSSL_DATA", REPO.parent / "shared" / "data"))
CMU = Path("slides") / "CMU-1-Small-Region.svs"

WINDOW = 640  # side of a texture window cut from the real slide
CELL = 320  # Voronoi cell spacing (level-0 px)
JITTER = 0.3  # seed jitter as a fraction of CELL: < 1/3 keeps the nearest seed in a 3x3 block
MIN_LEVEL_SIDE = 1024  # keep halving while the level's longest side is larger than this
N_NOISE = 8  # glass pixel-noise tiles

# (a, b, c, d): texture offset (u, v) = (a*dx + b*dy, c*dx + d*dy): the 8 flips / 90-degree turns.
DIHEDRAL = np.array(
    [
        (1, 0, 0, 1),
        (-1, 0, 0, 1),
        (1, 0, 0, -1),
        (-1, 0, 0, -1),
        (0, 1, 1, 0),
        (0, -1, 1, 0),
        (0, 1, -1, 0),
        (0, -1, -1, 0),
    ],
    dtype=np.int64,
)


@dataclass(frozen=True)
class SlideSpec:
    """Everything that determines the slide's bytes (recorded in the ``.json`` sidecar)."""

    size: int = 32768
    tile: int = 256
    quality: int = 85
    mpp: float = 0.5
    seed: int = 0
    tissue_fraction: float = 0.5

    def __post_init__(self) -> None:
        if self.size < self.tile:
            raise ValueError(f"size must be at least one tile ({self.tile}), got {self.size}")
        if self.tile % 64 or self.tile <= 0:
            raise ValueError(f"tile must be a positive multiple of 64, got {self.tile}")
        if not 1 <= self.quality <= 100:
            raise ValueError(f"quality must be in 1..100, got {self.quality}")
        if not self.mpp > 0:
            raise ValueError(f"mpp must be positive, got {self.mpp}")
        if not 0.0 <= self.tissue_fraction <= 1.0:
            raise ValueError(f"tissue_fraction must be in [0, 1], got {self.tissue_fraction}")


def level_sizes(size: int) -> list[int]:
    """Side of each pyramid level: halve (rounding up) while the side exceeds MIN_LEVEL_SIDE."""
    sides = [size]
    while sides[-1] > MIN_LEVEL_SIDE:
        sides.append(-(-sides[-1] // 2))
    return sides


# --------------------------------------------------------------------------------------------
# Real source pixels


def _gauss_kernel(sigma: float) -> np.ndarray:
    r = max(1, int(np.ceil(3.5 * sigma)))
    x = np.arange(-r, r + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _blur(a: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur in float64 numpy (bit-reproducible), reflected borders."""
    k = _gauss_kernel(sigma)
    r = len(k) // 2
    out = np.asarray(a, dtype=np.float64)
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (r, r)
        p = np.pad(out, pad, mode="reflect")
        n = out.shape[axis]
        acc = np.zeros_like(out)
        for i, w in enumerate(k):
            acc += w * (p[i : i + n] if axis == 0 else p[:, i : i + n])
        out = acc
    return out


def _saturation(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[..., 1]


@dataclass
class Sources:
    """Texture windows (K, WINDOW, WINDOW, 3) cut from the real slide, and its glass colour."""

    bank: np.ndarray
    glass: np.ndarray  # (3,) float64 RGB


def load_sources(data_dir: Path, seed: int, n_windows: int = 48) -> Sources:
    """Cut ``n_windows`` dense-tissue windows (>= 80% saturated pixels) from the real slide."""
    import openslide

    path = data_dir / CMU
    if not path.is_file():
        raise FileNotFoundError(f"real source slide not found: {path} (set PATHSSL_DATA)")
    slide = openslide.OpenSlide(str(path))
    try:
        w, h = slide.dimensions
        rgb = np.ascontiguousarray(np.asarray(slide.read_region((0, 0), 0, (w, h)))[..., :3])
    finally:
        slide.close()
    sat = _saturation(rgb)
    dens = cv2.integral((sat > 40).astype(np.uint8))
    step = 16
    ys = np.arange(0, h - WINDOW + 1, step)
    xs = np.arange(0, w - WINDOW + 1, step)
    yy, xx = (a.ravel() for a in np.meshgrid(ys, xs, indexing="ij"))
    count = dens[yy + WINDOW, xx + WINDOW] - dens[yy, xx + WINDOW] - dens[yy + WINDOW, xx]
    count += dens[yy, xx]
    good = np.flatnonzero(count >= 0.8 * WINDOW * WINDOW)
    if good.size == 0:
        raise RuntimeError(f"no dense tissue window found in {path}")
    rng = np.random.default_rng([seed, 0xBA4C])
    pick = rng.choice(good, size=min(n_windows, good.size), replace=False)
    bank = np.stack([rgb[yy[i] : yy[i] + WINDOW, xx[i] : xx[i] + WINDOW] for i in pick])
    glass = np.median(rgb[(sat < 12) & (rgb.min(axis=2) > 200)], axis=0).astype(np.float64)
    return Sources(bank=np.ascontiguousarray(bank), glass=glass)


# --------------------------------------------------------------------------------------------
# The procedural slide: every level-0 pixel is a function of (spec, sources)


class SlideModel:
    """Level-0 pixels of the benchmark slide, one row of tiles at a time."""

    def __init__(self, spec: SlideSpec, sources: Sources) -> None:
        self.spec = spec
        self.src = sources
        t = spec.tile
        self.ntx = -(-spec.size // t)  # tiles per row (square slide)
        self.pad = self.ntx * t  # padded canvas side
        # low-resolution grid (one value per `cell` px, one cell of margin on each side)
        self.cell = int(min(64, t // 4, max(8, 2 ** round(np.log2(spec.size / 512)))))
        rng = np.random.default_rng([spec.seed, 0x7155])
        self.field, self.threshold = self._island_field(rng)
        self.shade = _blur(rng.standard_normal(self.field.shape), 1024 / self.cell)
        self.shade /= max(float(np.abs(self.shade).max()), 1e-9) / 1.5  # +-1.5 grey levels
        self._voronoi(rng)
        self.noise = np.rint(rng.normal(0.0, 0.6, (N_NOISE, t, t, 3))).astype(np.int16)

    # ---- islands
    def _island_field(self, rng: np.random.Generator) -> tuple[np.ndarray, float]:
        size, cell = self.spec.size, self.cell
        g = self.pad // cell + 2
        c = (np.arange(g) - 1 + 0.5) * cell
        gx, gy = np.meshgrid(c, c)
        f = np.full((g, g), -1.0)
        n = int(rng.integers(6, 12))
        areas = rng.lognormal(0.0, 0.5, n)
        areas *= max(self.spec.tissue_fraction, 0.05) * size * size / areas.sum()
        placed: list[tuple[float, float, float]] = []
        for area in areas:
            aspect = rng.uniform(1.0, 2.2)
            sa = float(np.sqrt(area * aspect / np.pi))
            sb = sa / aspect
            cx = cy = 0.5 * size
            for _ in range(100):
                cx, cy = (float(v) for v in rng.uniform(0.12, 0.88, 2) * size)
                if all(np.hypot(cx - px, cy - py) > 0.7 * (sa + pr) for px, py, pr in placed):
                    break
            placed.append((cx, cy, sa))
            th = rng.uniform(0.0, np.pi)
            dx, dy = gx - cx, gy - cy
            u = dx * np.cos(th) + dy * np.sin(th)
            v = -dx * np.sin(th) + dy * np.cos(th)
            ang = np.arctan2(v / sb, u / sa)
            rho = np.hypot(u / sa, v / sb)
            mod = np.ones_like(ang)
            for k in range(2, 7):
                mod += rng.uniform(0.0, 0.3 / k) * np.cos(k * ang + rng.uniform(0.0, 2 * np.pi))
            f = np.maximum(f, 1.0 - rho / mod)
        n1 = _blur(rng.standard_normal((g, g)), size / 80 / cell)
        n2 = _blur(rng.standard_normal((g, g)), max(0.8, size / 400 / cell))
        f += 0.07 * n1 / n1.std() + 0.03 * n2 / n2.std()
        inner = f[1 : 1 + -(-size // cell), 1 : 1 + -(-size // cell)]
        frac = self.spec.tissue_fraction
        thr = float(np.quantile(inner, 1.0 - frac)) if frac > 0 else float(f.max()) + 1.0
        return f.astype(np.float32), thr

    # ---- Voronoi patchwork of real tissue windows
    def _voronoi(self, rng: np.random.Generator) -> None:
        n = self.pad // CELL + 3  # cells -1 .. n-2 (one margin cell each side)
        idx = np.arange(n) - 1
        jx = rng.uniform(-JITTER, JITTER, (n, n))
        jy = rng.uniform(-JITTER, JITTER, (n, n))
        seed_x = ((idx[None, :] + 0.5 + jx) * CELL).astype(np.int64)
        seed_y = ((idx[:, None] + 0.5 + jy) * CELL).astype(np.int64)
        win = rng.integers(0, len(self.src.bank), (n, n))
        dih = DIHEDRAL[rng.integers(0, 8, (n, n))]
        cu = rng.integers(WINDOW // 2 - 32, WINDOW // 2 + 33, (n, n))
        cv = rng.integers(WINDOW // 2 - 32, WINDOW // 2 + 33, (n, n))
        # per cell: seed x, y; dihedral a, b, c, d; window centre u, v; window offset in the bank
        self.params = np.concatenate(
            [
                seed_x[..., None],
                seed_y[..., None],
                dih,
                cu[..., None],
                cv[..., None],
                (win * WINDOW * WINDOW)[..., None],
            ],
            axis=-1,
        ).astype(np.int32)
        bank = self.src.bank
        rgbx = np.zeros(bank.shape[:3] + (4,), np.uint8)
        rgbx[..., :3] = bank
        self.bank32 = rgbx.view(np.uint32).reshape(-1)

    def _fields_strip(self, ty: int) -> tuple[np.ndarray, np.ndarray]:
        """Island field and glass shading at every pixel of tile row ``ty`` (bilinear)."""
        t, cell = self.spec.tile, self.cell
        r0 = ty * t // cell
        sub = np.stack(
            [self.field[r0 : r0 + t // cell + 2], self.shade[r0 : r0 + t // cell + 2]], axis=-1
        ).astype(np.float32)
        up = cv2.resize(
            sub, (sub.shape[1] * cell, sub.shape[0] * cell), interpolation=cv2.INTER_LINEAR
        )
        up = up[cell : cell + t, cell : cell + self.pad]
        return up[..., 0], up[..., 1]

    def _texture(self, x0: int, y0: int) -> np.ndarray:
        """Tissue texture (t, t, 3) for the tile whose top-left level-0 pixel is (x0, y0)."""
        t = self.spec.tile
        # candidate seeds: the cells the tile touches and their neighbours (margin-shifted index)
        rows = slice(y0 // CELL, (y0 + t - 1) // CELL + 3)
        cols = slice(x0 // CELL, (x0 + t - 1) // CELL + 3)
        cand = self.params[rows, cols].reshape(-1, self.params.shape[-1])
        # nearest seed, decided on a 2 px lattice (pixel-pair centres) for speed
        hx = (np.arange(x0, x0 + t, 2, dtype=np.int32) + 1)[None, None, :]
        hy = (np.arange(y0, y0 + t, 2, dtype=np.int32) + 1)[None, :, None]
        d2 = (hx - cand[:, 0, None, None]) ** 2 + (hy - cand[:, 1, None, None]) ** 2
        lab = np.argmin(d2, axis=0).astype(np.intp)
        lab = np.repeat(np.repeat(lab, 2, axis=0), 2, axis=1)
        p = cand[lab]  # (t, t, 9)
        dx = np.arange(x0, x0 + t, dtype=np.int32)[None, :] - p[..., 0]
        dy = np.arange(y0, y0 + t, dtype=np.int32)[:, None] - p[..., 1]
        u = p[..., 2] * dx + p[..., 3] * dy + p[..., 6]
        v = p[..., 4] * dx + p[..., 5] * dy + p[..., 7]
        period = 2 * WINDOW - 2  # mirror-extend the window (reflect-101)
        u, v = np.mod(u, period), np.mod(v, period)
        u = np.where(u >= WINDOW, period - u, u)
        v = np.where(v >= WINDOW, period - v, v)
        flat = p[..., 8] + v * WINDOW + u
        rgbx = np.take(self.bank32, flat)
        return rgbx.view(np.uint8).reshape(t, t, 4)[..., :3]

    def strip(self, ty: int) -> np.ndarray:
        """Level-0 pixels of tile row ``ty``: (tile, padded width, 3) uint8."""
        t = self.spec.tile
        field, shade = self._fields_strip(ty)
        glass = np.rint(self.src.glass.astype(np.float32) + shade[..., None]).astype(np.int16)
        out = np.empty((t, self.pad, 3), dtype=np.uint8)
        for tx in range(self.ntx):
            x0 = tx * t
            m = field[:, x0 : x0 + t] > self.threshold
            if m.all():
                out[:, x0 : x0 + t] = self._texture(x0, ty * t)
                continue
            k = (tx * 31 + ty * 17 + self.spec.seed) % N_NOISE
            tile = np.clip(glass[:, x0 : x0 + t] + self.noise[k], 0, 255).astype(np.uint8)
            if m.any():
                tile = np.where(m[..., None], self._texture(x0, ty * t), tile)
            out[:, x0 : x0 + t] = tile
        return out

    def tissue_mask(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        """The generator's own island mask for a level-0 region (True = tissue)."""
        rows = []
        for ty in range(y // self.spec.tile, (y + h - 1) // self.spec.tile + 1):
            rows.append(self._fields_strip(ty)[0] > self.threshold)
        full = np.concatenate(rows, axis=0)
        oy = (y // self.spec.tile) * self.spec.tile
        return full[y - oy : y - oy + h, x : x + w]

    def region(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Level-0 RGB pixels of a region, exactly as they are before JPEG encoding."""
        t = self.spec.tile
        if x < 0 or y < 0 or x + w > self.spec.size or y + h > self.spec.size:
            raise ValueError("region outside the slide")
        ty0, ty1 = y // t, (y + h - 1) // t
        full = np.concatenate([self.strip(ty) for ty in range(ty0, ty1 + 1)], axis=0)
        return full[y - ty0 * t : y - ty0 * t + h, x : x + w]


# --------------------------------------------------------------------------------------------
# JPEG tiles with shared tables


def _segments(jpeg: bytes) -> list[tuple[int, bytes]]:
    """Split a baseline JPEG stream into (marker, segment bytes) up to and including SOS+data."""
    out: list[tuple[int, bytes]] = []
    i = 2  # after SOI
    while i < len(jpeg):
        if jpeg[i] != 0xFF:
            raise ValueError("bad JPEG marker")
        marker = jpeg[i + 1]
        length = int.from_bytes(jpeg[i + 2 : i + 4], "big")
        if marker == 0xDA:  # SOS: the rest is entropy-coded data + EOI
            out.append((marker, jpeg[i:]))
            return out
        out.append((marker, jpeg[i : i + 2 + length]))
        i += 2 + length
    raise ValueError("JPEG stream without SOS")


class TileEncoder:
    """JPEG-encode 256 px tiles as abbreviated streams that share one JPEGTables blob."""

    def __init__(self, tile: int, quality: int) -> None:
        self.tile, self.quality = tile, quality
        probe = self._full(np.full((tile, tile, 3), 128, np.uint8))
        segs = _segments(probe)
        self.table_segs = b"".join(s for m, s in segs if m in (0xDB, 0xC4))
        self.tables = b"\xff\xd8" + self.table_segs + b"\xff\xd9"

    def _full(self, tile: np.ndarray) -> bytes:
        return bytes(
            imagecodecs.jpeg8_encode(
                tile,
                level=self.quality,
                colorspace="RGB",
                outcolorspace="YCBCR",
                subsampling="420",
                optimize=False,
            )
        )

    def encode(self, tile: np.ndarray) -> bytes:
        segs = _segments(self._full(np.ascontiguousarray(tile)))
        tables = b"".join(s for m, s in segs if m in (0xDB, 0xC4))
        if tables != self.table_segs:  # never expected with fixed quality and standard tables
            raise RuntimeError("JPEG tables differ between tiles")
        body = b"".join(s for m, s in segs if m not in (0xDB, 0xC4) and not 0xE0 <= m <= 0xEF)
        return b"\xff\xd8" + body


def _half(strip: np.ndarray) -> np.ndarray:
    """2x2 area average (rounded), as a scanner's pyramid does."""
    h, w = strip.shape[:2]
    return cv2.resize(strip, (w // 2, h // 2), interpolation=cv2.INTER_AREA)


class _Pyramid:
    """Streams tile rows down the pyramid, keeping lower levels JPEG-compressed in memory."""

    def __init__(self, sides: list[int], tile: int, encoder: TileEncoder) -> None:
        self.tile, self.enc = tile, encoder
        self.ntiles = [-(-s // tile) for s in sides]
        self.tiles: list[list[bytes]] = [[] for _ in sides]
        self.pending: list[list[np.ndarray]] = [[] for _ in sides]

    def push(self, level: int, strip: np.ndarray, keep: bool = True) -> list[bytes]:
        t = self.tile
        encoded = [
            self.enc.encode(strip[:, i * t : (i + 1) * t]) for i in range(self.ntiles[level])
        ]
        if keep:
            self.tiles[level].extend(encoded)
        if level + 1 < len(self.ntiles):
            half = _half(strip)
            width = self.ntiles[level + 1] * t
            if half.shape[1] < width:  # odd tile count: pad the last tile
                half = np.pad(half, ((0, 0), (0, width - half.shape[1]), (0, 0)), mode="edge")
            self.pending[level + 1].append(half[:, :width])
            if sum(p.shape[0] for p in self.pending[level + 1]) == t:
                self._emit(level + 1)
        return encoded

    def _emit(self, level: int) -> None:
        strip = np.concatenate(self.pending[level], axis=0)
        self.pending[level] = []
        if strip.shape[0] < self.tile:
            strip = np.pad(strip, ((0, self.tile - strip.shape[0]), (0, 0), (0, 0)), mode="edge")
        self.push(level, strip)

    def flush(self) -> None:
        for level in range(1, len(self.ntiles)):
            if self.pending[level]:
                self._emit(level)


# --------------------------------------------------------------------------------------------
# Writing


def _resolution(mpp: float, downsample: int) -> tuple[int, int]:
    """Pixels per centimetre as a TIFF rational."""
    px_per_cm = Fraction(10_000) / (Fraction(str(mpp)) * downsample)
    r = px_per_cm.limit_denominator(1 << 16)
    return r.numerator, r.denominator


def _sidecar(out_path: Path) -> Path:
    return out_path.with_name(out_path.name + ".json")


def _params(spec: SlideSpec, sources_digest: str) -> dict[str, object]:
    return {"generator": GENERATOR_VERSION, "sources": sources_digest, **asdict(spec)}


def _sources_digest(data_dir: Path) -> str:
    h = hashlib.sha256()
    h.update((data_dir / CMU).read_bytes())
    return h.hexdigest()[:16]


def build_benchmark_slide(
    out_path: str | Path,
    *,
    size: int = 32768,
    tile: int = 256,
    quality: int = 85,
    mpp: float = 0.5,
    seed: int = 0,
    tissue_fraction: float = 0.5,
    data_dir: str | Path | None = None,
    force: bool = False,
    verbose: bool = False,
) -> Path:
    """Write the benchmark slide to ``out_path`` (reused when its sidecar matches) and return it."""
    import tifffile

    spec = SlideSpec(size, tile, quality, mpp, seed, tissue_fraction)
    data = Path(data_dir) if data_dir is not None else DEFAULT_DATA
    out = Path(out_path)
    side = _sidecar(out)
    params = _params(spec, _sources_digest(data))
    if not force and out.is_file() and side.is_file():
        try:
            if json.loads(side.read_text()) == params:
                return out
        except (OSError, ValueError):
            pass
    t0 = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    side.unlink(missing_ok=True)
    model = SlideModel(spec, load_sources(data, seed))
    sides = level_sizes(size)
    enc = TileEncoder(tile, quality)
    pyr = _Pyramid(sides, tile, enc)

    def level0() -> Iterator[bytes]:
        for ty in range(model.ntx):
            yield from pyr.push(0, model.strip(ty), keep=False)
            if verbose and (ty % 16 == 15 or ty == model.ntx - 1):
                el = time.perf_counter() - t0
                print(f"  level 0: row {ty + 1}/{model.ntx} ({el:.0f} s)", file=sys.stderr)

    common: dict[str, object] = {
        "dtype": np.uint8,
        "tile": (tile, tile),
        "compression": "jpeg",
        "photometric": "rgb",
        "subsampling": (2, 2),
        "jpegtables": enc.tables,
        "resolutionunit": "CENTIMETER",
        "metadata": None,
        "software": "pathssl benchmarks/make_slide.py",
    }
    description = (
        f"pathssl benchmark slide {size}x{size} seed={seed} mpp={mpp}: real H&E pixels from "
        "CMU-1-Small-Region.svs and hgsc_nest.jpg"
    )
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    big = size * size * 3 >= (1 << 32)
    try:
        with tifffile.TiffWriter(tmp, bigtiff=big) as tif:
            res0 = _resolution(mpp, 1)
            tif.write(
                level0(),
                shape=(size, size, 3),
                resolution=(res0, res0),
                subfiletype=0,
                description=description,
                **common,  # type: ignore[arg-type]
            )
            pyr.flush()  # tifffile stops pulling after the last tile: finish lower levels here
            for level in range(1, len(sides)):
                res = _resolution(mpp, 2**level)
                tif.write(
                    iter(pyr.tiles[level]),
                    shape=(sides[level], sides[level], 3),
                    resolution=(res, res),
                    subfiletype=1,
                    **common,  # type: ignore[arg-type]
                )
                pyr.tiles[level] = []
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    side.write_text(json.dumps(params, indent=1) + "\n")
    if verbose:
        mb = out.stat().st_size / 1e6
        print(f"wrote {out} ({mb:.0f} MB) in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="output .tiff path")
    ap.add_argument("--size", type=int, default=32768, help="level-0 side in px (default 32768)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quality", type=int, default=85, help="JPEG quality of the slide tiles")
    ap.add_argument("--mpp", type=float, default=0.5)
    ap.add_argument("--tissue-fraction", type=float, default=0.5)
    ap.add_argument("--force", action="store_true", help="rebuild even if a matching file exists")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    path = build_benchmark_slide(
        args.out,
        size=args.size,
        seed=args.seed,
        quality=args.quality,
        mpp=args.mpp,
        tissue_fraction=args.tissue_fraction,
        force=args.force,
        verbose=True,
    )
    print(f"{path} ({path.stat().st_size / 1e6:.1f} MB, {time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
