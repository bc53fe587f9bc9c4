"""Training checks through the real CLI, before any compute: exit code 2, one line naming the
offending input and what to do, and nothing existing changed."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_train_methods import tiny_overrides

from pathssl.cli import main
from pathssl.train.checkpoint import save_checkpoint


@pytest.fixture(scope="module")
def store(cmu_slide: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiling import tile_slides

    out = tmp_path_factory.mktemp("tiles")
    tile_slides([cmu_slide], out, mpp=0.5, size=224, progress=False, report=False)
    return out


def pretrain(
    store: Path, out: Path, capsys: pytest.CaptureFixture[str], *extra: str
) -> tuple[int, str]:
    config = out.parent / "empty.yaml"
    config.write_text("{}\n")
    rc = main(["pretrain", str(config), *tiny_overrides("simclr", store, out), *extra])
    err = capsys.readouterr().err.strip()
    return rc, err


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("pathssl pretrain: error: "), lines[0]
    return lines[0]


def test_pretrain_refuses_bad_runs_before_compute(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    rc, err = pretrain(store, out, capsys, "optim.lr=-1")
    assert rc == 2 and "optim.lr must be > 0, got -1" in one_line(err)

    rc, err = pretrain(store, out, capsys, "data.batch_size=100000")
    msg = one_line(err)
    assert rc == 2 and "data.batch_size 100000" in msg and "repeat tiles" in msg

    afile = tmp_path / "afile"
    afile.write_text("keep")
    rc, err = pretrain(store, afile, capsys)
    assert rc == 2 and f"{afile} (train.out_dir): {afile} is a file" in one_line(err)
    assert afile.read_text() == "keep"

    out.mkdir()
    last = out / "last.pt"
    last.write_bytes(b"")
    rc, err = pretrain(store, out, capsys)
    msg = one_line(err)
    assert rc == 2 and str(last) in msg and "empty" in msg and "train.resume=false" in msg
    assert last.read_bytes() == b"" and sorted(p.name for p in out.iterdir()) == ["last.pt"]

    meta = {"method": "byol", "backbone": "resnet18"}
    save_checkpoint(last, {"method": {}, "optimizer": {}, "step": 7, "meta": meta})
    before = last.read_bytes()
    for resume in ("true", "false"):
        rc, err = pretrain(store, out, capsys, f"train.resume={resume}")
        msg = one_line(err)
        assert rc == 2 and "method 'byol'" in msg and "method 'simclr'" in msg, msg
        assert last.read_bytes() == before


def test_nuclei_predict_names_the_checkpoint_kind(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = tmp_path / "x.png"
    image.write_bytes(b"")
    pre = tmp_path / "last.pt"
    save_checkpoint(pre, {"trunk": {}, "method": {}, "optimizer": {}, "step": 3, "meta": {}})
    out = tmp_path / "out"
    rc = main(["nuclei", "predict", str(image), "--checkpoint", str(pre), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert str(pre) in err and "pretraining checkpoint" in err and "expected a nuclei model" in err
