"""``pathssl embed``: one feature row per tile, equal to the backbone applied to that tile;
the checkpoint's trunk loads into a plain torchvision model in two lines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
import zarr
from test_train_methods import tiny_overrides

from pathssl.cli import main
from pathssl.train import build_trainer, load_checkpoint, load_config


@pytest.fixture(scope="module")
def store(cmu_slide: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiling import tile_slides

    out = tmp_path_factory.mktemp("tiles")
    tile_slides([cmu_slide], out, mpp=0.5, size=224, progress=False, report=False)
    return out


def test_embed_matches_backbone_on_each_tile(store: Path, tmp_path: Path) -> None:
    from tiling import open_store
    from tiling.store import find_stores

    run = tmp_path / "run"
    build_trainer(load_config(None, tiny_overrides("simclr", store, run, steps=1))).fit()
    ckpt_path = run / "last.pt"
    (store_path,) = find_stores([store])
    out = tmp_path / "feats.zarr"
    assert (
        main(
            [
                "embed",
                str(store_path),
                "--checkpoint",
                str(ckpt_path),
                "--out",
                str(out),
                "--batch-size",
                "16",
                "--device",
                "cpu",
            ]
        )
        == 0
    )

    g = zarr.open_group(str(out), mode="r")
    feats, coords = np.asarray(g["features"][...]), np.asarray(g["coords"][...])
    s = open_store(store_path)
    assert feats.shape == (len(s), 512) and feats.dtype == np.float32
    np.testing.assert_array_equal(coords, s.coords)
    assert g.attrs["method"] == "simclr" and g.attrs["slide_id"] == s.slide_id

    # the trunk in a plain torchvision ResNet-18, no pathssl code: two lines
    ckpt = load_checkpoint(ckpt_path)
    model = torchvision.models.resnet18()
    missing, unexpected = model.load_state_dict(ckpt["trunk"], strict=False)
    assert set(missing) == {"fc.weight", "fc.bias"} and not unexpected
    model.fc = torch.nn.Identity()
    model.eval()
    mean = torch.tensor(ckpt["meta"]["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(ckpt["meta"]["std"]).view(1, 3, 1, 1)
    for i in (0, 7, len(s) - 1):
        x = torch.from_numpy(s[i]).permute(2, 0, 1)[None].float() / 255.0
        with torch.no_grad():
            ref = model((x - mean) / std)[0].numpy()
        np.testing.assert_allclose(feats[i], ref, rtol=1e-4, atol=1e-4)
    assert not (tmp_path / f".{out.name}.tmp").exists()

    # an earlier embed output is replaced only with --force; nothing else ever is
    argv = ["embed", str(store_path), "--checkpoint", str(ckpt_path), "--device", "cpu"]
    stamp = (out / "zarr.json").stat().st_mtime_ns
    assert main([*argv, "--out", str(out)]) == 2
    assert (out / "zarr.json").stat().st_mtime_ns == stamp
    assert main([*argv, "--out", str(out), "--force"]) == 0
    again = zarr.open_group(str(out), mode="r")
    np.testing.assert_array_equal(np.asarray(again["features"][...]), feats)
    before = sorted(p.relative_to(store) for p in store.rglob("*"))
    for target in (store_path, store, run / "last.pt"):  # the inputs, the tiling output
        assert main([*argv, "--out", str(target), "--force"]) == 2
    assert sorted(p.relative_to(store) for p in store.rglob("*")) == before
    assert load_checkpoint(ckpt_path)["meta"]["method"] == "simclr"


def test_embed_missing_store_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(["embed", str(tmp_path / "none.zarr"), "--checkpoint", "x.pt", "--out", "o.zarr"])
    assert rc == 2
    assert "does not exist" in capsys.readouterr().err
