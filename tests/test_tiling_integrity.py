"""Damaged tile stores are found: cheaply before a store is skipped on rerun or opened (every
recorded file present with its size), fully by ``pathssl tile --verify`` (every tile decoded).
A damaged store is redone on rerun and reported as such; opening one names it and --verify."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from pathssl.cli import main
from tiling import open_store, tile_slides
from tiling.errors import DamagedStoreError
from tiling.store import check_store, verify_store

STORE = "CMU-1-Small-Region.zarr"


@pytest.fixture(scope="module")
def pristine(cmu_slide: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pristine")
    (res,) = tile_slides([cmu_slide], out, progress=False, report=False)
    assert res.status == "ok" and res.n_tiles > 0
    return out


@pytest.fixture
def tiles(pristine: Path, tmp_path: Path) -> Path:
    out = tmp_path / "tiles"
    shutil.copytree(pristine, out)
    return out


def _tile_bytes(store: Path) -> list[bytes]:
    s = open_store(store)
    return [s.read_bytes(i) for i in range(len(s))]


def _shard(store: Path) -> Path:
    return store / "tiles" / "0.0.0.0"


def _truncate(store: Path) -> None:
    with open(_shard(store), "r+b") as fh:
        fh.truncate(_shard(store).stat().st_size // 2)


DAMAGE = {
    "shard deleted": lambda s: _shard(s).unlink(),
    "shard truncated": _truncate,
    "qc array removed": lambda s: shutil.rmtree(s / "qc" / "blur"),
    "coords chunk removed": lambda s: (s / "coords" / "c" / "0" / "0").unlink(),
}


def test_the_sizes_of_every_file_are_recorded(pristine: Path) -> None:
    store = pristine / STORE
    recorded = json.loads((store / "zarr.json").read_text())["attributes"]["files"]
    on_disk = {
        p.relative_to(store).as_posix(): p.stat().st_size
        for p in store.rglob("*")
        if p.is_file() and p != store / "zarr.json"
    }
    assert recorded == on_disk and "tiles/0.0.0.0" in recorded and "qc/blur/zarr.json" in recorded
    assert check_store(store) == [] and verify_store(store) == []


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damage_is_found_redone_and_reported(
    damage: str, tiles: Path, pristine: Path, cmu_slide: Path
) -> None:
    store = tiles / STORE
    DAMAGE[damage](store)
    problems = check_store(store)
    assert problems, damage
    with pytest.raises(DamagedStoreError, match=f"{STORE}.*pathssl tile --verify"):
        open_store(store)
    (res,) = tile_slides([cmu_slide], tiles, progress=False, report=False)
    assert res.status == "ok" and res.error.startswith("damaged store redone"), res
    with open(tiles / "manifest.csv") as fh:
        (row,) = list(csv.DictReader(fh))
    assert row["error"].startswith("damaged store redone")
    assert check_store(store) == []
    assert _tile_bytes(store) == _tile_bytes(pristine / STORE)
    (again,) = tile_slides([cmu_slide], tiles, progress=False, report=False)
    assert again.status == "skipped" and again.error == ""


def test_lost_zarr_json_is_redone(tiles: Path, pristine: Path, cmu_slide: Path) -> None:
    store = tiles / STORE
    (store / "zarr.json").unlink()
    (res,) = tile_slides([cmu_slide], tiles, progress=False, report=False)
    assert res.status == "ok" and "zarr.json missing" in res.error
    assert _tile_bytes(store) == _tile_bytes(pristine / STORE)


def test_stores_without_the_record_are_still_checked(tiles: Path) -> None:
    """Stores written before ``attrs["files"]``: arrays and shard indexes are checked."""
    store = tiles / STORE
    meta = json.loads((store / "zarr.json").read_text())
    del meta["attributes"]["files"]
    (store / "zarr.json").write_text(json.dumps(meta))
    assert check_store(store) == []
    _truncate(store)
    assert any("tiles/0.0.0.0" in p for p in check_store(store))
    shutil.rmtree(store / "qc" / "pen")
    assert any("qc/pen" in p for p in check_store(store))


def test_verify_decodes_every_tile(
    tiles: Path, capsys: pytest.CaptureFixture[str], cmu_slide: Path
) -> None:
    assert main(["tile", "--verify", str(tiles)]) == 0
    assert "1 stores verified (every tile decoded): 1 whole, 0 damaged" in capsys.readouterr().out
    # same size, broken content: the cheap check cannot see it, the full one decodes and can
    store = tiles / STORE
    s = open_store(store)
    raw = _shard(store).read_bytes()
    first = raw.index(s.read_bytes(3))
    broken = raw[:first] + b"\0" * 64 + raw[first + 64 :]
    _shard(store).write_bytes(broken)
    assert check_store(store) == []
    assert main(["tile", "--verify", str(tiles)]) == 1
    out = capsys.readouterr().out
    assert f"DAMAGED {store}: tile 3 cannot be decoded" in out and "1 damaged" in out
    # a shard removed: listed too
    _shard(store).unlink()
    assert main(["tile", "--verify", str(store)]) == 1
    assert "tiles/0.0.0.0 missing" in capsys.readouterr().out
