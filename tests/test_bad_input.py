"""Bad input, as a careless or hostile user types it, through the real CLI (``pathssl.cli.main``
in-process): each case exits with the documented code (2: bad argument, config or input, found
before any work; 1: a failure during work), prints one line ``pathssl <cmd>: error: ...`` naming
the offending input, and changes nothing that existed (every file's bytes hashed before and
after)."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from pathssl.cli import main


def tree_hash(*roots: Path) -> dict[str, str]:
    """Every file and folder under ``roots``: relative path -> sha256 of its bytes ('dir' for
    folders). Two equal results mean nothing was added, removed or changed."""
    out: dict[str, str] = {}
    for root in roots:
        if root.is_file():
            out[str(root)] = hashlib.sha256(root.read_bytes()).hexdigest()
            continue
        for p in sorted(root.rglob("*")):
            key = f"{root}/{p.relative_to(root)}"
            out[key] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def refused(
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    *names: str,
    code: int = 2,
    untouched: tuple[Path, ...] = (),
) -> str:
    """Run ``pathssl argv``; assert the exit code, exactly one stderr line in the CLI's error
    style that contains every one of ``names``, and that ``untouched`` did not change."""
    capsys.readouterr()
    before = tree_hash(*untouched)
    rc = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == code, err
    assert len(lines) == 1, err
    cmd = argv[0] if argv[0] != "nuclei" else f"nuclei {argv[1]}"
    assert lines[0].startswith(f"pathssl {cmd}: error: "), lines[0]
    for name in names:
        assert name in lines[0], (name, lines[0])
    assert tree_hash(*untouched) == before, "an existing file was changed"
    return lines[0]


@pytest.fixture(scope="module")
def tiles(cmu_slide: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real tiling output folder (one store of CMU-1-Small-Region)."""
    out = tmp_path_factory.mktemp("bad") / "tiles"
    rc = main(["tile", str(cmu_slide), "--out", str(out), "--workers", "1", "--no-progress"])
    assert rc == 0
    return out


@pytest.fixture
def foreign(tmp_path: Path) -> Path:
    """A folder of someone's files that no command wrote."""
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    (folder / "manifest.csv").write_text("a,b\n1,2\n")
    return folder


# ---------------------------------------------------------------------------- tile


def test_tile_bad_numbers_and_no_inputs(
    capsys: pytest.CaptureFixture[str], cmu_slide: Path, tmp_path: Path
) -> None:
    out = tmp_path / "o"
    refused(capsys, ["tile", str(cmu_slide), "--out", str(out), "--workers", "0"], "--workers")
    refused(capsys, ["tile", str(cmu_slide), "--out", str(out), "--workers", "-3"], "--workers")
    refused(capsys, ["tile", str(cmu_slide), "--out", str(out), "--mpp", "0"], "--mpp")
    refused(capsys, ["tile", "--out", str(out)], "no slides given")
    refused(capsys, ["tile", str(tmp_path / "nothing.svs"), "--out", str(out)], "nothing.svs")
    assert not out.exists()  # nothing created for a refused command


def test_tile_refuses_a_folder_it_did_not_write(
    capsys: pytest.CaptureFixture[str], cmu_slide: Path, foreign: Path
) -> None:
    refused(
        capsys,
        ["tile", str(cmu_slide), "--out", str(foreign), "--workers", "1"],
        str(foreign),
        "notes.txt",
        untouched=(foreign,),
    )


def test_tile_output_may_not_touch_the_inputs(
    capsys: pytest.CaptureFixture[str], cmu_slide: Path, tmp_path: Path
) -> None:
    slides = tmp_path / "slides"
    slides.mkdir()
    (slides / "case.svs").symlink_to(cmu_slide)
    for out in (slides, slides / "tiles", tmp_path):  # is, is inside, contains the input
        refused(
            capsys,
            ["tile", str(slides), "--out", str(out), "--workers", "1"],
            str(out),
            "input",
            untouched=(tmp_path,),
        )


def test_tile_never_replaces_a_foreign_zarr_folder(
    capsys: pytest.CaptureFixture[str], cmu_slide: Path, tiles: Path, tmp_path: Path
) -> None:
    out = tmp_path / "tiles"
    shutil.copytree(tiles, out)
    store = out / "CMU-1-Small-Region.zarr"
    shutil.rmtree(store)
    store.mkdir()
    (store / "thesis.txt").write_text("not a tile store")
    before = tree_hash(store)
    assert main(["tile", str(cmu_slide), "--out", str(out), "--workers", "1"]) == 1
    assert tree_hash(store) == before
    with open(out / "manifest.csv") as fh:
        (row,) = list(csv.DictReader(fh))
    assert row["status"] == "failed" and "is not a tile store" in row["error"]


def test_tile_without_out_writes_tiles_here_and_says_so(
    capsys: pytest.CaptureFixture[str],
    cmu_slide: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["tile", str(cmu_slide), "--workers", "1", "--no-progress"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert str(tmp_path / "tiles") in first and "no --out" in first
    assert (tmp_path / "tiles" / "CMU-1-Small-Region.zarr" / "zarr.json").is_file()


def test_workers_default_to_the_cores_this_process_may_use() -> None:
    import os

    from pathssl.cli import build_parser
    from pathssl.commands.tile import default_workers

    args = build_parser().parse_args(["tile", "x.svs"])
    assert args.workers is None  # resolved at run time, not a fixed number
    assert default_workers() == len(os.sched_getaffinity(0))


# ---------------------------------------------------------------------------- embed


def test_embed_never_writes_over_its_inputs_or_foreign_folders(
    capsys: pytest.CaptureFixture[str], tiles: Path, foreign: Path, tmp_path: Path
) -> None:
    store = tiles / "CMU-1-Small-Region.zarr"
    ckpt = tmp_path / "last.pt"
    ckpt.write_bytes(b"not used: the output is refused before the checkpoint is read")
    base = ["embed", str(store), "--checkpoint", str(ckpt), "--device", "cpu", "--out"]
    for out in (store, tiles, store / "feats.zarr", ckpt):
        refused(capsys, [*base, str(out)], str(out), "input", untouched=(tiles, ckpt))
    refused(
        capsys,
        [*base, str(foreign), "--force"],
        str(foreign),
        "not written by pathssl embed",
        untouched=(foreign,),
    )
    refused(capsys, [*base, str(tmp_path / "f.zarr"), "--batch-size", "0"], "--batch-size")


# ---------------------------------------------------------------------------- stain-stats


def test_stain_stats_reads_a_folder_of_stores(
    capsys: pytest.CaptureFixture[str], tiles: Path, tmp_path: Path
) -> None:
    from pathssl.augment import compute_stain_stats

    out = tmp_path / "new" / "stats.yaml"
    assert main(["stain-stats", str(tiles), "--out", str(out), "--max-tiles", "20"]) == 0
    got = yaml.safe_load(out.read_text())
    ref = compute_stain_stats([tiles / "CMU-1-Small-Region.zarr"], max_tiles=20).to_dict()
    assert got["n_tiles"] == ref["n_tiles"] > 0
    np.testing.assert_allclose(got["mean"]["avg"], ref["mean"]["avg"])
    # the same output again: refused without --force, replaced with it
    refused(capsys, ["stain-stats", str(tiles), "--out", str(out)], str(out), "--force")
    assert main(["stain-stats", str(tiles), "--out", str(out), "--force"]) == 0


def test_stain_stats_bad_outputs_are_refused_before_computing(
    capsys: pytest.CaptureFixture[str], tiles: Path, foreign: Path, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    base = ["stain-stats", str(tiles), "--out"]
    refused(capsys, [*base, str(blocker / "stats.yaml")], str(blocker), untouched=(blocker,))
    refused(capsys, [*base, str(tiles / "stats.yaml")], "input", untouched=(tiles,))
    notes = foreign / "notes.txt"
    refused(capsys, [*base, str(notes), "--force"], str(notes), untouched=(foreign,))
    refused(capsys, [*base, str(tmp_path / "s.yaml"), "--gmm", "-1"], "--gmm")
    refused(capsys, ["stain-stats", str(foreign), "--out", str(tmp_path / "s.yaml")], "no tile")


# ---------------------------------------------------------------------------- augment-preview


def test_augment_preview_bad_arguments(
    capsys: pytest.CaptureFixture[str], data_dir: Path, foreign: Path, tmp_path: Path
) -> None:
    image = tmp_path / "tile.png"
    shutil.copy(data_dir / "tiles" / "stain" / "source_image.png", image)
    out = str(tmp_path / "p.png")
    base = ["augment-preview", str(image)]
    refused(capsys, [*base, "--rows", "0", "--out", out], "--rows")
    refused(capsys, [*base, "--recipe", "nope", "--out", out], "nope")
    refused(capsys, [*base, "--out", str(image), "--force"], str(image), untouched=(image,))
    not_png = foreign / "notes.png"
    not_png.write_text("my notes, not a picture")
    refused(capsys, [*base, "--out", str(not_png), "--force"], str(not_png), untouched=(foreign,))
    assert not Path(out).exists()


# ---------------------------------------------------------------------------- nuclei predict


def test_nuclei_predict_bad_arguments(
    capsys: pytest.CaptureFixture[str], data_dir: Path, foreign: Path, tmp_path: Path
) -> None:
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(data_dir / "nuclei" / "cellseg-fixture" / "patch1.png", images / "p1.png")
    ckpt = tmp_path / "nuclei.pt"
    ckpt.write_bytes(b"not read: the arguments are refused before the model is loaded")
    base = ["nuclei", "predict", str(images), "--checkpoint", str(ckpt)]
    out = str(tmp_path / "pred")
    refused(capsys, [*base, "--out", out, "--window", "0"], "--window")
    refused(capsys, [*base, "--out", out, "--mpp", "0"], "--mpp")
    refused(capsys, [*base, "--out", out, "--batch-size", "0"], "--batch-size")
    refused(capsys, [*base, "--out", str(images / "pred")], "input", untouched=(images,))
    refused(capsys, [*base, "--out", str(foreign)], str(foreign), untouched=(foreign,))
    refused(
        capsys,
        [*base[:2], str(foreign), *base[3:], "--out", out],
        "no image (.png/.jpg/.bmp) or slide",
    )
    assert not Path(out).exists()


# ---------------------------------------------------------------------------- nuclei evaluate


def test_nuclei_evaluate_names_files_and_expected_keys(
    capsys: pytest.CaptureFixture[str], data_dir: Path, foreign: Path, tmp_path: Path
) -> None:
    true = data_dir / "nuclei" / "hgsc_nest_inst_mask.npz"
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, labels=np.zeros((4, 4), np.int32))
    base = ["nuclei", "evaluate"]
    line = refused(capsys, [*base, "--pred", str(wrong), "--true", str(true)], str(wrong))
    assert "'inst' or 'nuc_raster'" in line and "'labels'" in line
    missing = str(tmp_path / "missing.npz")
    refused(capsys, [*base, "--pred", str(true), "--true", missing], missing)
    refused(capsys, [*base, "--pred", str(true), str(true), "--true", str(true)], "2 predicted")
    notes = foreign / "notes.txt"
    refused(
        capsys,
        [*base, "--pred", str(true), "--true", str(true), "--out", str(notes), "--force"],
        str(notes),
        untouched=(foreign,),
    )
    refused(capsys, [*base, "--pred", str(true), "--true", str(true), "--out", str(true)], "input")
    # a metrics file it wrote is replaced only with --force
    out = tmp_path / "m.json"
    assert main([*base, "--pred", str(true), "--true", str(true), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["pq"] == pytest.approx(1.0)
    refused(capsys, [*base, "--pred", str(true), "--true", str(true), "--out", str(out)], "--force")


# ---------------------------------------------------------------------------- eval


def _eval_config(tmp_path: Path, qc: Path, labels: dict[str, str], out: Path) -> Path:
    table = tmp_path / "labels.csv"
    table.write_text("file,label\n" + "".join(f"{f},{c}\n" for f, c in labels.items()))
    source = {"format": "csv", "csv": str(table), "root": str(qc), "path_column": "file"}
    cfg = {
        "data": {"source": source},
        "model": {"backbone": "resnet18", "checkpoint": None},
        "train": {"device": "cpu", "out_dir": str(out)},
    }
    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_eval_needs_two_classes_and_two_tiles_per_class(
    capsys: pytest.CaptureFixture[str], data_dir: Path, foreign: Path, tmp_path: Path
) -> None:
    qc = data_dir / "tiles" / "qc"
    files = sorted(p.name for p in qc.glob("*.png"))[:5]
    out = tmp_path / "out"
    one = _eval_config(tmp_path, qc, dict.fromkeys(files, "tumour"), out)
    refused(capsys, ["eval", str(one)], "at least 2 classes", "only class")
    lonely = {**dict.fromkeys(files[:4], "a"), files[4]: "b"}
    cfg = _eval_config(tmp_path, qc, lonely, out)
    refused(capsys, ["eval", str(cfg)], "fewer than 2 tiles", "'b': 1")
    assert not out.exists()
    refused(capsys, ["eval", str(cfg), "--out", str(foreign)], str(foreign), untouched=(foreign,))


# ---------------------------------------------------------------------------- the CLI itself


def test_debug_shows_the_traceback(cmu_slide: Path, tmp_path: Path) -> None:
    from tiling.errors import UsageError

    argv = ["tile", str(cmu_slide), "--out", str(tmp_path / "o"), "--workers", "0"]
    with pytest.raises(UsageError, match="--workers"):
        main(["--debug", *argv])


def test_argument_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["tile", "x.svs", "--size", "big"])
    assert info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pathssl tile: error: argument --size")


def test_a_damaged_store_is_named_with_the_way_to_check_it(
    capsys: pytest.CaptureFixture[str], tiles: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "tiles"
    shutil.copytree(tiles, copy)
    store = copy / "CMU-1-Small-Region.zarr"
    (store / "tiles" / "0.0.0.0").unlink()
    out = str(tmp_path / "x.yaml")
    refused(capsys, ["stain-stats", str(copy), "--out", out], str(store), "pathssl tile --verify")
    argv = ["augment-preview", str(store), "--out", str(tmp_path / "p.png")]
    refused(capsys, argv, str(store), "pathssl tile --verify")
    assert main(["tile", "--verify", str(copy)]) == 1
    assert "tiles/0.0.0.0 missing" in capsys.readouterr().out
