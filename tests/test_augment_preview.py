"""``pathssl augment-preview --config``: the views of a pretraining config are the training
step's. Independent path: the trainer that ``pathssl.train.build_trainer`` assembles, its view
module and generator, on the same batch."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from pathssl.cli import main
from pathssl.commands.augment_preview import training_views
from pathssl.train import build_trainer, load_config
from pathssl.train.distributed import DistInfo
from tiling import open_store, tile_slides

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def store(cmu_slide: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiles")
    tile_slides([cmu_slide], out, mpp=0.5, size=224, progress=False, report=False)
    return out / "CMU-1-Small-Region.zarr"


@pytest.fixture(scope="module")
def stats(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """RandStainNA statistics as the command writes them."""
    path = tmp_path_factory.mktemp("stats") / "stain_stats.yaml"
    assert main(["stain-stats", str(store), "--out", str(path), "--max-tiles", "40"]) == 0
    return path


def small(store: Path, out: Path, *extra: str) -> list[str]:
    """Overrides for a small CPU run of a shipped pretraining config."""
    return [
        f"data.stores=[{store}]",
        "data.batch_size=4",
        "data.num_workers=0",
        "data.norm_tiles=8",
        "data.decode=cpu",
        f"train.out_dir={out}",
        "train.device=cpu",
        "train.precision=fp32",
        "train.channels_last=false",
        *extra,
    ]


def batch(store: Path, n: int = 4) -> np.ndarray:
    s = open_store(str(store))
    return np.stack([np.asarray(s[i]) for i in np.linspace(0, len(s) - 1, n).round().astype(int)])


def training_step_views(cfg, images: np.ndarray) -> dict:
    """What the training loop's ViewStep module makes of ``images`` at the first step."""
    trainer = build_trainer(cfg, DistInfo(), torch.device("cpu"))
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
        return trainer.views(x, trainer.batch_step.generator)


def same(a: dict, b: dict) -> bool:
    views = all(torch.equal(u, v) for u, v in zip(a["views"], b["views"], strict=True))
    ma, mb = a["patch_mask"], b["patch_mask"]
    return views and (ma is None and mb is None or torch.equal(ma, mb))


@pytest.mark.parametrize(
    "config, extra",
    [
        (
            "simclr",
            [
                "model.backbone=resnet18",
                "augment.params.size=112",
                "augment.params.fov_scales=[2.0, 1.0]",
                "augment.params.randstain_p=0.5",
                "augment.params.macenko_p=0.5",
                "train.seed=3",
            ],
        ),
        (
            "mae",  # a ViT with 8 px patches: the mask grid follows the backbone (align_mask)
            [
                "model.backbone=vit_tiny",
                "model.params={patch_size: 8}",
                "augment.params.size=64",
                "method.params={mask_ratio: 0.75, decoder_dim: 32, decoder_depth: 1, decoder_heads: 2}",
            ],
        ),
    ],
)
def test_preview_views_are_the_training_steps(config, extra, store, stats, tmp_path):
    if config == "simclr":
        extra = [*extra, f"augment.params.randstain_stats={stats}"]
    cfg = load_config(
        REPO / f"configs/pretrain/{config}.yaml", small(store, tmp_path / "run", *extra)
    )
    images = batch(store)
    preview = training_views(cfg, images, tile_mpp=open_store(str(store)).mpp)
    trained = training_step_views(cfg, images)
    assert same(preview, trained)
    if config == "mae":
        assert preview["recipe"].patch_size == 8 and preview["patch_mask"].shape == (4, 64)
    else:
        assert [m.median().item() for m in preview["mpp"]] == pytest.approx([1.0, 0.5], rel=0.01)
    # the comparison can fail: another seed draws other views
    cfg.train.seed += 1
    assert not same(training_views(cfg, images), trained)


def test_preview_command_with_a_pretraining_config(store, stats, tmp_path, capsys):
    out = tmp_path / "grid.png"
    sets = small(store, tmp_path / "run", "model.backbone=resnet18")
    sets += [f"augment.params.randstain_stats={stats}", "augment.params.randstain_p=0.8"]
    sets += ["augment.params.size=112", "augment.params.fov_scales=[2, 1]"]
    argv = ["augment-preview", "--config", str(REPO / "configs/pretrain/simclr.yaml")]
    argv += [a for s in sets for a in ("--set", s)] + ["--out", str(out), "--rows", "3"]
    assert main(argv + ["--cell", "64"]) == 0
    line = capsys.readouterr().out
    assert "recipe simclr: 2 views, views at 0.998, 0.499 um/px" in line, line
    pic = cv2.imread(str(out))
    assert pic is not None and pic.shape[:2] == (3 * 68, 3 * 68)
    # tiles of a given store instead of the config's data.stores
    again = tmp_path / "again.png"
    argv2 = ["augment-preview", str(store), "--config", str(REPO / "configs/pretrain/simclr.yaml")]
    argv2 += [a for s in sets for a in ("--set", s)] + ["--out", str(again), "--rows", "2"]
    assert main(argv2) == 0 and cv2.imread(str(again)).shape[:2] == (2 * 164, 3 * 164)
    # --set needs --config, --recipe and --config exclude each other: bad arguments (exit 2)
    assert main(["augment-preview", str(store), "--set", "a=1", "--out", str(again)]) == 2
    with pytest.raises(SystemExit) as exc:  # argparse's own error
        main(["augment-preview", str(store), "--recipe", "mae", "--config", "x.yaml"])
    assert exc.value.code == 2
