"""The HoVer-Net style head on ResNet and ViT encoders; fine-tuning modes; datasets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.io import savemat

from pathssl.augment.geometry import dihedral
from pathssl.models.backbones import build_backbone, trunk_state_dict
from pathssl.nuclei.data import (
    LabelledImage,
    NucleiCropDataset,
    load_mat_labels,
    load_npz_pair,
    load_pannuke,
    pannuke_maps,
)
from pathssl.nuclei.model import HV_KEY, NP_KEY, TP_KEY, build_nuclei_model


@pytest.mark.parametrize(
    ("backbone", "params"), [("resnet18", {}), ("vit_tiny", {"image_size": 64})]
)
def test_output_shapes_any_size(backbone: str, params: dict[str, object]) -> None:
    model = build_nuclei_model(backbone, 3, backbone_params=params, widths=(8, 8, 8, 8, 8)).eval()
    x = torch.randint(0, 256, (2, 3, 70, 100), dtype=torch.uint8)
    with torch.no_grad():
        out = model(x)
    assert out[NP_KEY].shape == (2, 2, 70, 100)
    assert out[HV_KEY].shape == (2, 2, 70, 100)
    assert out[TP_KEY].shape == (2, 4, 70, 100)


def test_vit_of_another_patch_size_reads_a_stride_16_grid() -> None:
    """A patch-8 ViT (as a patch-14 ViT-H would) sees the input resized by 8/16, so that its
    token grid is H/16 x W/16, and the model's maps come back at the input's size."""
    model = build_nuclei_model("vit_tiny", 3, backbone_params={"patch_size": 8}).eval()
    seen: list[tuple[int, ...]] = []
    patchify = model.encoder.backbone.conv_proj  # the ViT's first layer sees the image
    patchify.register_forward_pre_hook(lambda _m, args: seen.append(tuple(args[0].shape)))
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        feats = model.encoder(x)
        out = model(x)
    assert seen[0] == (2, 3, 32, 48)  # (64 / 16 * 8, 96 / 16 * 8)
    assert feats[3].shape[-2:] == (4, 6) and out[NP_KEY].shape == (2, 2, 64, 96)


def test_finetune_modes_and_pretrained_trunk() -> None:
    trunk = build_backbone("resnet18")
    torch.nn.init.constant_(trunk.layer4[1].conv2.weight, 0.01)
    state = trunk_state_dict(trunk)
    model = build_nuclei_model("resnet18", 1, trunk_state=state, finetune="frozen")
    enc = model.encoder.backbone
    assert torch.equal(enc.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])
    assert not any(p.requires_grad for p in enc.parameters())
    assert all(p.requires_grad for p in model.head.parameters())
    model.train()
    assert not enc.bn1.training and model.head.training  # frozen BN statistics kept
    model.set_finetune("partial", trainable_stages=1)
    assert all(p.requires_grad for p in enc.layer4.parameters())
    assert not any(p.requires_grad for p in enc.layer3.parameters())
    model.set_finetune("full")
    assert all(p.requires_grad for p in model.parameters())
    vit = build_nuclei_model("vit_tiny", 1, finetune="partial", trainable_stages=1)
    layers = vit.encoder.backbone.encoder.layers
    assert not any(p.requires_grad for p in layers[-2].parameters())
    assert all(p.requires_grad for p in layers[-1].parameters())  # the last block trains
    assert not vit.encoder.backbone.class_token.requires_grad
    assert not vit.encoder.backbone.encoder.pos_embedding.requires_grad
    assert all(p.requires_grad for p in vit.encoder.up4.parameters())  # the adapter trains
    frozen = build_nuclei_model("vit_tiny", 1, finetune="frozen")
    assert not any(p.requires_grad for p in frozen.encoder.backbone.parameters())
    assert all(p.requires_grad for p in vit.encoder.backbone.encoder.ln.parameters())
    with pytest.raises(ValueError, match="finetune"):
        model.set_finetune("some")  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def hgsc(data_dir: Path) -> LabelledImage:
    d = data_dir / "nuclei"
    return load_npz_pair(
        d / "hgsc_nest.jpg", d / "hgsc_nest_inst_mask.npz", d / "hgsc_nest_type_mask.npz"
    )


def test_npz_pair(hgsc: LabelledImage) -> None:
    assert hgsc.image.shape == (1500, 1500, 3) and hgsc.image.dtype == np.uint8
    assert len(np.unique(hgsc.inst)) - 1 == 1294
    assert set(np.unique(hgsc.types)) == {0, 1, 2, 3}


def test_pannuke_layout_roundtrip(tmp_path: Path, hgsc: LabelledImage) -> None:
    crops = [hgsc.region(x, 0, 256, 256) for x in (0, 256)]
    masks = np.zeros((2, 256, 256, 6), np.float64)
    for n, c in enumerate(crops):
        next_id = [1] * 5  # PanNuke numbers nuclei per channel: ids repeat across channels
        for i in np.unique(c.inst[c.inst > 0]):
            t = int(np.bincount(c.types[c.inst == i]).argmax())
            masks[n, ..., t - 1][c.inst == i] = next_id[t - 1]
            next_id[t - 1] += 1
        masks[n, ..., 5] = c.inst == 0
    np.save(tmp_path / "images.npy", np.stack([c.image for c in crops]).astype(np.float64))
    np.save(tmp_path / "masks.npy", masks)
    np.save(tmp_path / "types.npy", np.array(["Ovary", "Ovary"]))
    images = load_pannuke(tmp_path)
    assert len(images) == 2 and images[0].tissue == "Ovary"
    for im, c in zip(images, crops, strict=True):
        np.testing.assert_array_equal(im.image, c.image)
        # same partition into nuclei, same types
        pairs = {(a, b) for a, b in zip(im.inst.ravel(), c.inst.ravel(), strict=True)}
        assert len(pairs) == len(np.unique(c.inst)) == len(np.unique(im.inst))
        np.testing.assert_array_equal(im.types, np.where(c.inst > 0, c.types, 0))
    inst, types = pannuke_maps(masks[0])
    assert inst.max() == len(np.unique(crops[0].inst)) - 1


def test_mat_labels(tmp_path: Path, hgsc: LabelledImage) -> None:
    c = hgsc.region(0, 0, 128, 128)
    savemat(tmp_path / "consep.mat", {"inst_map": c.inst, "type_map": c.types})
    inst, types = load_mat_labels(tmp_path / "consep.mat")
    np.testing.assert_array_equal(inst, c.inst)
    np.testing.assert_array_equal(types, c.types)
    ids = np.unique(c.inst[c.inst > 0])
    cls = np.array([np.bincount(c.types[c.inst == i]).argmax() for i in ids])
    savemat(
        tmp_path / "lizard.mat", {"inst_map": c.inst, "id": ids[:, None], "class": cls[:, None]}
    )
    inst, types = load_mat_labels(tmp_path / "lizard.mat")
    np.testing.assert_array_equal(types, c.types)


def test_crops_share_one_draw(hgsc: LabelledImage) -> None:
    ds = NucleiCropDataset([hgsc.region(0, 0, 300, 300)], crop=96, length=16, seed=3)
    plain = NucleiCropDataset(
        [hgsc.region(0, 0, 300, 300)], crop=96, length=16, seed=3, augment=False
    )
    seen = set()
    for i in range(16):
        a, p = ds[i], plain[i]
        img_a = a["image"].numpy().transpose(1, 2, 0)
        img_p = p["image"].numpy().transpose(1, 2, 0)
        ks = [k for k in range(8) if np.array_equal(dihedral(img_p, k), img_a)]
        assert ks, "augmented crop is no dihedral image of the crop"
        k = ks[0]
        seen.add(k)
        # the same element moved the nucleus and type maps
        np.testing.assert_array_equal(dihedral(p["np"].numpy(), k), a["np"].numpy())
        np.testing.assert_array_equal(dihedral(p["tp"].numpy(), k), a["tp"].numpy())
        assert torch.equal(ds[i]["hv"], a["hv"])  # deterministic per index
    assert len(seen) >= 3


def test_stain_jitter_changes_colours_only(hgsc: LabelledImage) -> None:
    """HED jitter on the image only: the maps, the geometry (same dihedral draw) and the
    haematoxylin-dominated nuclei stay put; the jittered image equals the plain crop after a
    per-image OD-space affine map (checked by least squares on optical densities)."""
    kw = {"crop": 96, "length": 12, "seed": 5}
    plain = NucleiCropDataset([hgsc.region(0, 0, 300, 300)], **kw)  # type: ignore[arg-type]
    jit = NucleiCropDataset([hgsc.region(0, 0, 300, 300)], stain_jitter=0.2, **kw)  # type: ignore[arg-type]
    changed = 0
    for i in range(12):
        a, b = plain[i], jit[i]
        for key in ("np", "hv", "tp"):
            assert torch.equal(a[key], b[key]), key
        x = a["image"].numpy().reshape(3, -1).T.astype(np.float64)
        y = b["image"].numpy().reshape(3, -1).T.astype(np.float64)
        if np.array_equal(x, y):
            continue
        changed += 1
        od_x = -np.log(np.maximum(x, 1) / 255)
        od_y = -np.log(np.maximum(y, 1) / 255)
        ok = (x > 5).all(1) & (x < 250).all(1) & (y > 5).all(1) & (y < 250).all(1)
        design = np.c_[od_x[ok], np.ones(ok.sum())]
        coef, *_ = np.linalg.lstsq(design, od_y[ok], rcond=None)
        resid = od_y[ok] - design @ coef
        assert np.abs(resid).mean() < 0.01, i  # an affine map in OD space (uint8 rounding)
    assert 6 <= changed <= 12  # p = 0.8


def test_label_subsets_are_nested_and_cover(hgsc: LabelledImage) -> None:
    from pathssl.nuclei.splits import subset_labels

    train = hgsc.region(0, 0, 1000, 1500)
    subsets = {f: subset_labels([train], f, 256, seed=1) for f in (0.1, 0.3, 1.0)}
    keys = {
        f: {(s.image.__array_interface__["data"][0]) for s in sub} for f, sub in subsets.items()
    }
    assert keys[0.1] < keys[0.3] < keys[1.0]
    assert len(subsets[0.1]) == 3 and len(subsets[1.0]) == 24
    covered = np.zeros((1500, 1000), bool)
    base = train.image.__array_interface__["data"][0]
    for s in subsets[1.0]:
        off = s.image.__array_interface__["data"][0] - base
        y, x = divmod(off // 3, hgsc.image.shape[1])
        covered[y : y + 256, x : x + 256] = True
        assert s.origin == (x + 0, y + 0)  # regions know where they were cut from
    assert covered.all()
    from pathssl.nuclei.label_efficiency import labelled_pixels

    # 4 x 6 tiles of 256 px, last column / row moved back: distinct pixels = the whole region
    assert len(subsets[1.0]) == 24 and labelled_pixels(subsets[1.0]) == 1000 * 1500
    assert labelled_pixels(subsets[0.1]) < 3 * 256 * 256 + 1


def test_config_rejects_unknown_keys() -> None:
    from pathssl.nuclei.config import config_from_dict, load_config

    with pytest.raises(ValueError, match="unknown config key 'train.stepz'"):
        config_from_dict({"train": {"stepz": 3}})
    config = Path(__file__).parents[1] / "configs/nuclei/hgsc_resnet18_cpu.yaml"
    cfg = load_config(config, ["train.max_steps=7", "postprocess.sobel_kernel_size=5"])
    assert cfg.train.max_steps == 7 and cfg.postprocess.sobel_kernel_size == 5
    assert (cfg.data.batch_size, cfg.data.crop, cfg.optim.lr) == (4, 128, 1e-3)
    assert cfg.data.type_names == ["connective", "inflammatory", "neoplastic"]


def test_config_uses_the_shared_sections() -> None:
    """Nuclei ``optim``/``train`` are pretraining's sections: old keys name their new place,
    configs stored in older checkpoints migrate, and value ranges are checked."""
    from pathssl.nuclei.config import config_from_dict

    with pytest.raises(ValueError, match="'train.steps' is now 'train.max_steps'"):
        config_from_dict({"train": {"steps": 3}})
    with pytest.raises(ValueError, match="'train.lr' is now 'optim.lr'"):
        config_from_dict({"train": {"lr": 0.1}})
    old = {"train": {"steps": 3, "lr": 0.01, "batch_size": 2, "crop": 64, "clip_grad": None}}
    cfg = config_from_dict(old, migrate=True)
    assert (cfg.train.max_steps, cfg.optim.lr, cfg.data.batch_size, cfg.data.crop) == (
        3,
        0.01,
        2,
        64,
    )
    assert cfg.optim.clip_grad is None and cfg.optim.name == "adamw"
    with pytest.raises(ValueError, match=r"optim\.lr must be > 0, got -1"):
        config_from_dict({"optim": {"lr": -1}})
    with pytest.raises(ValueError, match=r"data\.crop must be >= 1"):
        config_from_dict({"data": {"crop": 0}})
    with pytest.raises(ValueError, match=r"train\.monitor: 'pqq' is not one of"):
        config_from_dict({"train": {"monitor": "pqq"}})
