"""QuPath GeoJSON conventions: FeatureCollection of detections, classification name + colour,
numeric measurements, closed valid rings, level-0 offsets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pathssl.nuclei.geojson import (
    GeoJSONWriter,
    Nucleus,
    draw_overlay,
    mask_ring,
    nucleus_feature,
    qupath_problems,
    ring_is_valid,
)
from pathssl.nuclei.postprocess import describe
from pathssl.nuclei.predict import instances_to_nuclei


def check_qupath_geojson(doc: Any, type_names: list[str]) -> None:
    """A schema-like check of what QuPath's GeoJSON import expects."""
    assert doc["type"] == "FeatureCollection" and isinstance(doc["features"], list)
    for f in doc["features"]:
        assert f["type"] == "Feature"
        geom, props = f["geometry"], f["properties"]
        assert geom["type"] == "Polygon" and len(geom["coordinates"]) == 1  # exterior ring only
        ring = geom["coordinates"][0]
        assert all(len(p) == 2 and all(isinstance(v, float | int) for v in p) for p in ring)
        assert ring[0] == ring[-1] and len(ring) >= 4
        assert ring_is_valid(ring)
        assert props["objectType"] == "detection"
        cls = props["classification"]
        assert cls["name"] in type_names
        assert len(cls["color"]) == 3 and all(
            isinstance(c, int) and 0 <= c <= 255 for c in cls["color"]
        )
        m = props["measurements"]
        assert isinstance(m, dict) and m and all(isinstance(v, float | int) for v in m.values())
        assert m["Area px^2"] > 0 and 0 <= m["Type probability"] <= 1


def test_ring_validity_checker() -> None:
    square = [[0, 0], [4, 0], [4, 4], [0, 4], [0, 0]]
    assert ring_is_valid(square)
    assert not ring_is_valid(square[:-1])  # not closed
    assert not ring_is_valid([[0, 0], [4, 4], [4, 0], [0, 4], [0, 0]])  # bow tie
    assert not ring_is_valid([[0, 0], [4, 0], [8, 0], [0, 0]])  # zero area
    # touching itself at a vertex (a pinched figure eight made of two squares)
    assert not ring_is_valid(
        [[0, 0], [2, 0], [2, 2], [4, 2], [4, 4], [2, 4], [2, 2], [0, 2], [0, 0]]
    )
    assert not ring_is_valid([[0, 0], [1, 1], [0, 0]])


def test_mask_ring_follows_pixel_edges() -> None:
    m = np.zeros((10, 12), bool)
    m[2:6, 3:9] = True  # rows 2..5, columns 3..8: a 6 x 4 px rectangle
    ring = mask_ring(m, epsilon=0.1)
    assert ring is not None
    x, y = ring[:-1, 0], ring[:-1, 1]
    area = 0.5 * (np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))
    assert area > 0  # positive shoelace area
    assert x.min() == pytest.approx(2.5, abs=0.07) and x.max() == pytest.approx(8.5, abs=0.07)
    assert y.min() == pytest.approx(1.5, abs=0.07) and y.max() == pytest.approx(5.5, abs=0.07)
    assert area == pytest.approx(24, rel=0.06)  # 1/16 px inside the edges: 22.8


def test_mask_ring_on_awkward_masks() -> None:
    m = np.zeros((12, 12), bool)
    m[2:5, 2:5] = m[5:8, 5:8] = True  # two blobs touching at a corner
    ring = mask_ring(m)
    assert ring is not None and ring_is_valid(ring)
    one = np.zeros((5, 5), bool)
    one[2, 2] = True
    assert mask_ring(one) is None or ring_is_valid(mask_ring(one))  # type: ignore[arg-type]


def test_real_nuclei_to_qupath(tmp_path: Path, data_dir: Path) -> None:
    d = data_dir / "nuclei"
    inst = np.load(d / "hgsc_nest_inst_mask.npz")["nuc_raster"][:400, :400]
    types = np.load(d / "hgsc_nest_type_mask.npz")["nuc_raster"][:400, :400]
    res = describe(inst, None)
    res.type = np.array(
        [np.bincount(types[res.inst == i]).argmax() for i in range(1, len(res) + 1)]
    )
    names = ["connective", "inflammatory", "neoplastic"]
    origin = (10_000.0, 20_000.0)
    nuclei = list(instances_to_nuclei(res, scale=2.0, origin=origin))
    # only specks (nuclei cut by the crop to a few pixels) may lack a polygon
    assert len(nuclei) >= (res.area >= 20).sum()
    kept = np.array(
        [
            any(np.allclose(n.centroid, (c + 0.5) * 2.0 + origin) for n in nuclei)
            for c in res.centroid
        ]
    )
    assert kept[res.area >= 20].all()
    res_k = np.nonzero(kept)[0]
    with GeoJSONWriter(tmp_path / "n.geojson", names, mpp=0.25) as gw:
        for n in nuclei:
            gw.write(n)
    doc = json.loads((tmp_path / "n.geojson").read_text())
    check_qupath_geojson(doc, names)
    assert len(doc["features"]) == len(nuclei)
    # level-0 coordinates: origin + 2 * (pixel-corner frame: centre + 0.5); the polygon encloses
    # the nucleus centroid
    for f, k in zip(doc["features"][:20], res_k[:20], strict=False):
        ring = np.asarray(f["geometry"]["coordinates"][0])
        cx, cy = ((res.centroid[k] + 0.5) * 2.0) + origin
        assert ring[:, 0].min() <= cx <= ring[:, 0].max()
        assert ring[:, 1].min() <= cy <= ring[:, 1].max()
        assert f["properties"]["measurements"]["Area px^2"] == pytest.approx(res.area[k] * 4)
        assert f["properties"]["classification"]["name"] == names[int(res.type[k]) - 1]
        assert f["properties"]["measurements"]["Area µm^2"] == pytest.approx(
            res.area[k] * 4 * 0.0625, rel=1e-3
        )
    # the polygon follows the pixel edges: its area matches the mask area (a contour through
    # boundary-pixel centres would give a median ratio of about 0.8 here)
    areas = [
        0.5 * abs(np.dot(r[:-1, 0], r[1:, 1]) - np.dot(r[:-1, 1], r[1:, 0]))
        for r in (n.ring for n in nuclei)
    ]
    ratio = np.array(areas) / np.array([n.area for n in nuclei])
    print(f"median polygon / mask area {np.median(ratio):.3f}")
    assert 0.95 < np.median(ratio) < 1.03, np.median(ratio)


def test_writer_is_atomic_and_overlay(tmp_path: Path) -> None:
    ring = np.array([[1.0, 1], [5, 1], [5, 5], [1, 5], [1, 1]])
    nuc = Nucleus(ring, (3.0, 3.0), 2, 0.9, 16.0)
    with pytest.raises(RuntimeError), GeoJSONWriter(tmp_path / "x.geojson", ["a", "b"]) as gw:
        gw.write(nuc)
        raise RuntimeError("interrupted")
    assert not list(tmp_path.iterdir())  # nothing half-written left behind
    with GeoJSONWriter(tmp_path / "x.geojson", ["a", "b"]) as gw:
        pass
    assert json.loads((tmp_path / "x.geojson").read_text()) == {
        "type": "FeatureCollection",
        "features": [],
    }
    f = nucleus_feature(nuc, ["a", "b"])
    assert f["properties"]["classification"]["name"] == "b"
    unclassified = nucleus_feature(Nucleus(ring, (3.0, 3.0), 0, 0.9, 16.0), ["a", "b"])
    assert "classification" not in unclassified["properties"]
    assert qupath_problems({"type": "FeatureCollection", "features": [unclassified]}) == []
    img = draw_overlay(np.zeros((8, 8, 3), np.uint8), [nuc], ["a", "b"])
    assert img[1, 3].any() and not img[3, 3].any()


def test_level0_polygons_use_pixel_corners() -> None:
    """QuPath (and the level-0 grid) put pixel corners at integers: model pixels x 10..19,
    y 5..14 at 2 level-0 px per model px from origin (100, 200) cover [120, 140] x [210, 230]."""
    inst = np.zeros((32, 32), np.int32)
    inst[5:15, 10:20] = 1
    (nuc,) = instances_to_nuclei(describe(inst, None), scale=2.0, origin=(100.0, 200.0))
    x, y = nuc.ring[:, 0], nuc.ring[:, 1]
    tol = 2.0 / 16 + 1e-9  # the ring is traced 1/16 px inside the edges
    assert 120 <= x.min() <= 120 + tol and 140 - tol <= x.max() <= 140
    assert 210 <= y.min() <= 210 + tol and 230 - tol <= y.max() <= 230
    assert nuc.centroid == pytest.approx((130.0, 220.0))
    assert nuc.area == 100 * 4
