"""Every registered SSL method x a tiny backbone runs 2 steps through the real training loop
(config -> build -> Trainer.fit) on a tiny real tile store, with 64x64 views."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from pathssl.ssl import METHODS
from pathssl.train import build_trainer, load_checkpoint, load_config
from pathssl.train.logger import read_metrics

# multi-task: two tasks with their own views (1 + 2) and heads
TINY_TASKS = {
    "rotation": {"params": {"head_hidden_dim": 32}},
    "simclr": {"weight": 0.5, "params": {"proj_hidden_dim": 64, "proj_dim": 32}},
}
# small heads / views for the CPU; backbones: ViT-only methods and a few others on vit_tiny
TINY: dict[str, dict[str, Any]] = {
    "simclr": {"proj_hidden_dim": 64, "proj_dim": 32},
    "moco_v2": {"proj_hidden_dim": 64, "proj_dim": 32, "queue_size": 64},
    "moco_v3": {"hidden_dim": 64, "out_dim": 32},
    "byol": {"proj_hidden_dim": 64, "proj_dim": 32},
    "barlow_twins": {"proj_dim": 64},
    "swav": {"proj_hidden_dim": 64, "proj_dim": 32, "num_prototypes": 16},
    "dino": {"out_dim": 128, "hidden_dim": 64, "bottleneck_dim": 32},
    "mae": {"decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2},
    "maskfeat": {},
    "rotation": {"head_hidden_dim": 32},
    "context": {"pair_dim": 16, "hidden_dim": 64},
    "jigsaw": {"num_permutations": 100, "tile_dim": 16, "hidden_dim": 64},
    "pirl": {"proj_dim": 16, "bank_size": 512, "num_negatives": 64, "num_permutations": 24},
    "colorization": {"head_dim": 32, "grid_step": 20.0, "rebalance": True},
    "orl": {"proj_hidden_dim": 64, "proj_dim": 32, "patch_size": 32},
    "multitask": {"tasks": TINY_TASKS},
    "s4l_rotation": {"head_hidden_dim": 32},
    "s4l_exemplar": {"triplet_dim": 32},
    "supervised": {},
    "split_brain": {"head_dim": 32, "grid_step": 20.0, "l_bins": 20},
}
MULTI_CROP = {"local_size": 32, "n_local": 2}
VIT = {"mae", "maskfeat", "dino", "moco_v3"}


def tiny_overrides(method: str, store: Path, out: Path, steps: int = 2) -> list[str]:
    """``key=value`` overrides for a tiny CPU run of ``method``."""
    aug: dict[str, Any] = {"size": 64}
    if method in ("dino", "swav"):
        aug.update(MULTI_CROP)
    ov = [
        f"method.name={method}",
        f"method.params={TINY.get(method, {})}",
        f"model.backbone={'vit_tiny' if method in VIT else 'resnet18'}",
        f"augment.params={aug}",
        f"data.stores=[{store}]",
        "data.batch_size=4",
        "data.num_workers=0",
        "data.norm_tiles=8",
        "optim.name=adamw",
        "optim.lr=0.0005",
        "optim.lr_scaling=none",
        f"train.max_steps={steps}",
        f"train.ckpt_every={steps}",
        "train.log_every=1",
        f"train.out_dir={out}",
        "train.threads=1",
        "train.progress=false",
    ]
    if METHODS.get(method).needs_labels:  # a labelled batch of 4 from a quarter of the crops
        ov.append("data.labelled={batch_size: 4, num_workers: 0, fraction: 0.25}")
    return ov


def write_hgsc_crops(data_dir: Path, folder: Path, crop: int = 32) -> Path:
    """Nucleus-centred crops of the real ``hgsc_nest.jpg`` labelled with their (model-made)
    nucleus type, as the demo writes them (``pathssl.demo.knn``): ``folder/train.csv`` (left
    half) is returned, ``folder/test.csv`` holds the right half."""
    import numpy as np

    from pathssl.data.images import read_rgb
    from pathssl.demo.knn import nucleus_crops, write_crops

    nuclei = data_dir / "nuclei"
    image = read_rgb(nuclei / "hgsc_nest.jpg")
    inst = np.load(nuclei / "hgsc_nest_inst_mask.npz")["nuc_raster"]
    types = np.load(nuclei / "hgsc_nest_type_mask.npz")["nuc_raster"]
    crops, labels, centres = nucleus_crops(image, inst, types, crop)
    names = ["connective", "inflammatory", "neoplastic"]
    train_csv, _ = write_crops(folder, crops, labels, centres, names, image.shape[1] // 2)
    return train_csv


def csv_source(train_csv: Path, image_size: int = 64) -> Any:
    """The :data:`pathssl.train.labelled.LabelledSource` ``pathssl pretrain`` builds from
    ``data.labelled.config``: a ``pathssl eval`` config of the crops (train/test CSVs) written
    beside them, read by :func:`pathssl.eval.online.labelled_source`."""
    from pathssl.eval.online import labelled_source

    return labelled_source(crops_eval_config(train_csv, image_size), backbone="resnet18", log=None)


def crops_eval_config(train_csv: Path, image_size: int = 64) -> Path:
    """A ``pathssl eval`` config of the crops ``write_hgsc_crops`` wrote (left half trains)."""
    import yaml

    cfg = {
        "data": {
            "source": {"format": "csv", "csv": str(train_csv)},
            "test": {"format": "csv", "csv": str(train_csv.with_name("test.csv"))},
            "image_size": image_size,
        }
    }
    path = train_csv.with_name("eval.yaml")
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def labelled(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    return csv_source(write_hgsc_crops(data_dir, tmp_path_factory.mktemp("crops") / "hgsc"))


def build_tiny(method: str, overrides: list[str], labelled: Any) -> Any:
    """``build_trainer`` of a tiny run, with ``labelled`` for a method that trains on labels."""
    needs = METHODS.get(method).needs_labels
    return build_trainer(load_config(None, overrides), labelled=labelled if needs else None)


@pytest.fixture(scope="module")
def store(cmu_slide: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiling import tile_slides

    out = tmp_path_factory.mktemp("tiles")
    tile_slides([cmu_slide], out, mpp=0.5, size=224, progress=False, report=False)
    return out


def test_every_method_is_covered() -> None:
    assert set(METHODS.names()) <= set(TINY), "add tiny settings for new methods"


@pytest.mark.parametrize("method", METHODS.names())
def test_two_steps_through_the_loop(
    method: str, store: Path, tmp_path: Path, labelled: Any
) -> None:
    trainer = build_tiny(method, tiny_overrides(method, store, tmp_path), labelled)
    trainer.fit()
    assert trainer.step == 2
    records = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r["kind"] == "train"]
    assert [r["step"] for r in records] == [1, 2]
    for r in records:
        assert math.isfinite(r["loss"]), r
        assert "embed_std" in r and r["images_per_s"] > 0
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt["step"] == 2
    assert ckpt["meta"]["method"] == method
    assert ckpt["meta"]["tile_mpp"] == pytest.approx(0.499)
    assert len(ckpt["meta"]["mean"]) == 3 and all(0 < s < 1 for s in ckpt["meta"]["std"])
    assert int(ckpt["method"]["global_step"]) == 2
    assert all(torch.isfinite(v).all() for v in ckpt["trunk"].values() if v.is_floating_point())


@pytest.mark.parametrize("method", ["mae", "maskfeat"])
def test_masked_methods_take_the_recipe_mask(method: str, store: Path, tmp_path: Path) -> None:
    """``augment.params.mask_ratio`` decides the mask the method trains with (it used to be drawn
    by the recipe and dropped by the loop), on the backbone's patch grid; a second, different
    ratio in ``method.params`` is refused."""
    from pathssl.train import build_trainer, load_config
    from pathssl.train.config import ConfigError

    ov = tiny_overrides(method, store, tmp_path / "run")
    ov = [o for o in ov if not o.startswith("augment.params=")]
    ov += ["augment.params={size: 64, mask_ratio: 0.5}"]
    trainer = build_trainer(load_config(None, ov))
    patch = trainer.method.backbone.patch_size
    n = (64 // patch) ** 2
    inputs = trainer.batch_step.prepare(next(iter(trainer.loader)))
    views, mask = inputs.views, inputs.patch_mask
    assert mask is not None and tuple(mask.shape) == (4, n)
    assert mask.sum(1).tolist() == [round(0.5 * n)] * 4
    assert trainer.method.mask_ratio == 0.5
    # the loss the loop computes is the method's loss under exactly that mask
    torch.manual_seed(1)
    ref = trainer.method(views, patch_mask=mask)["loss"]
    torch.manual_seed(1)
    got = trainer.batch_step.forward(trainer.method, inputs)["loss"]
    torch.testing.assert_close(got, ref)
    with pytest.raises(ConfigError, match="mask_ratio 0.75 differs"):
        build_trainer(load_config(None, [*ov, "method.params={mask_ratio: 0.75}"]))
