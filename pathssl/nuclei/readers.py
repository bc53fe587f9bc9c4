"""Readers of the formats hand-drawn nuclei come in; each gives a
:class:`~pathssl.nuclei.labelled.LabelledImage` at the mpp of the file, else the caller's value,
else a clear error naming the file and the option to set (``mpp_option``).

* **Aperio ImageScope XML** (MoNuSeg): ``Annotations/Annotation/Regions/Region`` per nucleus,
  ``Vertices/Vertex`` with ``X``, ``Y`` in image pixels, ``MicronsPerPixel`` on the root when
  recorded. Class name: the Region's ``Text``, else its Annotation's ``Name`` (often empty).
* **QuPath GeoJSON**: a ``FeatureCollection`` (or a list of features) of ``Polygon`` /
  ``MultiPolygon`` objects (a cell's ``properties.nucleusGeometry`` when present); class name:
  ``properties.classification.name``. The files record no pixel size.
* **Binary masks** (TNBC): nuclei = 4-connected components of the non-zero pixels, so touching
  nuclei that share a component become ONE instance (the caller is told, :data:`MASK_NOTE`).
* **HoVer-Net / CoNSeP / Lizard ``.mat``**: :func:`pathssl.nuclei.data.load_mat_labels`.

Polygons are rasterised here without a drawing library: x right, y down, ``(0, 0)`` the top-left
corner of the top-left pixel, so pixel ``(i, j)`` is the square ``[j, j+1) x [i, i+1)`` (QuPath's
and ImageScope's convention); a pixel belongs to a polygon when its centre lies inside (even-odd
rule; holes are not cut out). That is unbiased in area: on MoNuSeg the pixel counts match the
polygon areas ImageScope records (median ratio 1.000), where OpenCV's ``fillPoly`` and PIL, which
add every pixel the outline touches, give +15 %. **Overlaps: smaller wins**: polygons are painted
from the largest to the smallest, so a nucleus drawn over a larger one keeps its pixels.
Polygons left without a pixel (fewer than 3 vertices, slivers between pixel centres, or wholly
under smaller ones) give no instance; their count is returned.

Class names map to type ids through ``type_map`` (``{name: id}``; ``""`` is the unclassified
name); without a map every nucleus is type 1; a name missing from a given map is an error.
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from pathssl.data.images import read_rgb
from pathssl.nuclei.data import load_mat_labels
from pathssl.nuclei.labelled import LabelledImage

POLYGON_SUFFIXES = {".xml": "imagescope", ".geojson": "geojson", ".json": "geojson"}
MASK_NOTE = "instances are connected components of binary masks: touching nuclei count as one"


@dataclass
class Polygon:
    """One nucleus: ``rings`` the outer rings of its parts (one for a Polygon, several for a
    MultiPolygon), each ``(K, 2)`` float (x, y) in pixel-corner coordinates (see the module
    doc); ``name`` its class name (``""``: none)."""

    rings: list[NDArray[np.float64]]
    name: str = ""


@dataclass
class Annotations:
    """The polygons of one annotation file and the pixel size it records (None: none)."""

    polygons: list[Polygon]
    mpp: float | None
    path: Path


def read_imagescope(path: str | Path) -> Annotations:
    """An Aperio ImageScope XML file's regions (see the module doc)."""
    path = Path(path)
    root = ET.parse(path).getroot()
    raw = root.get("MicronsPerPixel")
    mpp = float(raw) if raw not in (None, "") and float(raw) > 0 else None
    polygons = []
    for ann in root.iter("Annotation"):
        for region in ann.iter("Region"):
            xy = [
                (float(v.get("X", "nan")), float(v.get("Y", "nan"))) for v in region.iter("Vertex")
            ]
            name = region.get("Text") or ann.get("Name") or ""
            polygons.append(Polygon([np.asarray(xy, np.float64).reshape(-1, 2)], name))
    return Annotations(polygons, mpp, path)


def read_geojson(path: str | Path) -> Annotations:
    """A QuPath GeoJSON export's polygons (see the module doc); a MultiPolygon is one nucleus
    (its parts share one id)."""
    path = Path(path)
    doc = json.loads(path.read_text())
    features = doc.get("features", []) if isinstance(doc, dict) else doc
    if isinstance(doc, dict) and doc.get("type") == "Feature":
        features = [doc]
    polygons = []
    for i, feat in enumerate(features):
        props = feat.get("properties") or {}
        geom = props.get("nucleusGeometry") or feat.get("geometry") or {}
        cls = props.get("classification")
        name = cls.get("name", "") if isinstance(cls, dict) else str(cls or "")
        if geom.get("type") == "Polygon":
            parts = [geom["coordinates"]]
        elif geom.get("type") == "MultiPolygon":
            parts = geom["coordinates"]
        else:
            raise ValueError(f"{path}: feature {i} is a {geom.get('type')!r}, not a polygon")
        outer = [np.asarray(p[0], np.float64).reshape(-1, 2) for p in parts if p]
        polygons.append(Polygon(outer, name))
    return Annotations(polygons, None, path)


def polygon_pixels(
    xy: NDArray[np.float64], shape: tuple[int, int]
) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """``(rows, cols)`` of the pixels of an ``(H, W)`` grid whose centres lie inside the polygon
    ``xy`` ``(K, 2)`` (even-odd rule, pixel-corner coordinates; scanline at each row centre)."""
    h, w = shape
    x0, y0 = xy[:, 0], xy[:, 1]
    if len(xy) < 3 or not np.all(np.isfinite(xy)):
        return np.zeros(0, np.intp), np.zeros(0, np.intp)
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    lo, hi = max(0, math.ceil(y0.min() - 0.5)), min(h - 1, math.floor(y0.max() - 0.5))
    if hi < lo:
        return np.zeros(0, np.intp), np.zeros(0, np.intp)
    yc = np.arange(lo, hi + 1, dtype=np.float64)[:, None] + 0.5  # (R, 1) row centres
    cross = (y0 <= yc) != (y1 <= yc)  # (R, E) edges crossing the row (half-open in y)
    dy = np.where(y1 == y0, 1.0, y1 - y0)
    xs = np.where(cross, x0 + (yc - y0) / dy * (x1 - x0), np.inf)
    xs.sort(axis=1)
    if xs.shape[1] % 2:
        xs = np.pad(xs, ((0, 0), (0, 1)), constant_values=np.inf)
    a, b = xs[:, 0::2], xs[:, 1::2]  # inside between pairs of crossings
    j0 = np.clip(np.ceil(a - 0.5), 0, w)
    j1 = np.clip(np.ceil(b - 0.5), 0, w)
    n = np.where(np.isfinite(a) & np.isfinite(b), np.maximum(j1 - j0, 0), 0)
    n = n.astype(np.intp).ravel()
    row = np.broadcast_to(np.arange(lo, hi + 1, dtype=np.intp)[:, None], a.shape).ravel()
    first = np.where(n > 0, j0.ravel(), 0).astype(np.intp)
    offset = np.arange(n.sum(), dtype=np.intp) - np.repeat(np.cumsum(n) - n, n)
    return np.repeat(row, n), np.repeat(first, n) + offset


def rasterise(
    polygons: Sequence[Polygon], shape: tuple[int, int], type_of: Callable[[str], int]
) -> tuple[NDArray[np.int32], NDArray[np.int32], int]:
    """Polygons -> (instance map, type map, polygons left without a pixel), both ``(H, W)``
    int32; polygon ``k`` is instance ``k + 1``; smaller wins where they overlap."""
    inst = np.zeros(shape, np.int32)
    types = np.zeros(shape, np.int32)
    pixels = []
    for p in polygons:
        parts = [polygon_pixels(xy, shape) for xy in p.rings]
        pixels.append(
            (np.concatenate([r for r, _ in parts]), np.concatenate([c for _, c in parts]))
        )
    order = sorted(range(len(polygons)), key=lambda k: -len(pixels[k][0]))  # largest first
    for k in order:
        rows, cols = pixels[k]
        inst[rows, cols] = k + 1
        types[rows, cols] = type_of(polygons[k].name)
    present = np.zeros(len(polygons) + 1, bool)
    present[np.unique(inst)] = True
    return inst, types, int(len(polygons) - present[1:].sum())


def name_types(type_map: Mapping[str, int] | None, where: str, option: str) -> Callable[[str], int]:
    """Class name -> type id through ``type_map`` (see the module doc)."""

    def type_of(name: str) -> int:
        if not type_map:
            return 1
        if name not in type_map:
            names = ", ".join(repr(k) for k in type_map)
            raise ValueError(f"{where}: class {name!r} is not in {option} ({names})")
        return int(type_map[name])

    return type_of


def id_lut(
    type_map: Mapping[str, int] | None, ids: Iterable[int], where: str, option: str
) -> NDArray[np.int32] | None:
    """Stored type ids -> ours through ``type_map`` (keys: the ids as text), as a look-up table
    over 0..max(ids); None without a map. 0 stays background; each of ``ids`` (the ids the
    labels hold) missing from a given map is an error."""
    if not type_map:
        return None
    ids = sorted({int(i) for i in ids} - {0})
    lut = np.zeros((ids[-1] if ids else 0) + 1, np.int32)
    type_of = name_types(type_map, where, option)
    for i in ids:
        lut[i] = type_of(str(i))
    return lut


def _map_option(option: str) -> str:
    """The type-map key next to an mpp key (``data.sources.x.mpp`` -> ``...x.type_map``)."""
    return option[: -len("mpp")] + "type_map" if option.endswith("mpp") else "type_map"


def file_mpp(found: float | None, given: float | None, path: Path, option: str) -> float:
    """The pixel size: the file's, else the config's, else an error naming both."""
    if found is not None:
        return found
    if given is not None:
        return float(given)
    raise ValueError(
        f"{path} records no pixel size (mpp); set {option} to the micrometres per pixel of its "
        "images (e.g. 0.25 at 40x, 0.5 at 20x)"
    )


def read_polygon_image(
    labels: str | Path,
    image: str | Path,
    mpp: float | None = None,
    type_map: Mapping[str, int] | None = None,
    option: str = "mpp",
    log: Callable[[str], None] | None = None,
) -> LabelledImage:
    """An image with its ImageScope XML or GeoJSON polygons (by suffix: ``.xml`` /
    ``.geojson``, ``.json``), rasterised on the image's grid."""
    labels = Path(labels)
    kind = POLYGON_SUFFIXES.get(labels.suffix.lower())
    if kind is None:
        raise ValueError(f"{labels}: not a polygon file ({', '.join(POLYGON_SUFFIXES)})")
    ann = read_imagescope(labels) if kind == "imagescope" else read_geojson(labels)
    where = file_mpp(ann.mpp, mpp, labels, option)
    rgb = read_rgb(image)
    type_of = name_types(type_map, str(labels), _map_option(option))
    inst, types, empty = rasterise(ann.polygons, rgb.shape[:2], type_of)
    if empty and log is not None:
        log(f"note: {labels.name}: {empty} of {len(ann.polygons)} polygons left no pixel")
    return LabelledImage(rgb, inst, types, Path(image).stem, mpp=where)


def mask_instances(mask: NDArray[Any]) -> NDArray[np.int32]:
    """A binary mask ``(H, W)`` (any non-zero value is nucleus) -> instance map of its
    4-connected components, ids 1..N."""
    import cv2

    fg = (np.asarray(mask) > 0).astype(np.uint8)
    _, labels = cv2.connectedComponents(fg, connectivity=4, ltype=cv2.CV_32S)
    return np.asarray(labels, np.int32)


def read_mask_image(
    mask: str | Path, image: str | Path, mpp: float | None = None, option: str = "mpp"
) -> LabelledImage:
    """An image with its binary mask (PNG/TIFF, 0 = background); every nucleus type 1; see
    :data:`MASK_NOTE`."""
    import cv2

    where = file_mpp(None, mpp, Path(mask), option)
    raw = cv2.imread(str(mask), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise FileNotFoundError(f"cannot read mask {mask}")
    inst = mask_instances(raw if raw.ndim == 2 else raw[..., :3].max(axis=2))
    rgb = read_rgb(image)
    if inst.shape != rgb.shape[:2]:
        raise ValueError(f"{mask}: mask {inst.shape} != image {rgb.shape[:2]} ({image})")
    types = (inst > 0).astype(np.int32)
    return LabelledImage(rgb, inst, types, Path(image).stem, mpp=where)


def read_mat_image(
    labels: str | Path,
    image: str | Path,
    mpp: float | None = None,
    type_map: Mapping[str, int] | None = None,
    option: str = "mpp",
) -> LabelledImage:
    """An image with its HoVer-Net-style ``.mat`` labels, types through ``type_map``."""
    where = file_mpp(None, mpp, Path(labels), option)
    inst, types = load_mat_labels(labels)
    lut = id_lut(type_map, np.unique(types).tolist(), str(labels), _map_option(option))
    if lut is not None:
        types = np.where(inst > 0, lut[types], 0).astype(np.int32)
    rgb = read_rgb(image)
    if inst.shape != rgb.shape[:2]:
        raise ValueError(f"{labels}: labels {inst.shape} != image {rgb.shape[:2]} ({image})")
    return LabelledImage(rgb, inst, types, Path(image).stem, mpp=where)
