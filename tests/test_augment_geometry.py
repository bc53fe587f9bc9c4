"""Geometry: dihedral group, random resized crops and multi-field-of-view crops with masks."""

from __future__ import annotations

from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pytest
import torch

from pathssl.augment import Dihedral, dihedral, multi_fov_crop
from pathssl.augment.torch_geometry import crop_boxes, fov_boxes
from pathssl.augment.torch_ops import BatchDihedral, BatchMultiFOVCrop, BatchRandomResizedCrop


@pytest.fixture(scope="module")
def nest(data_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    d = data_dir / "nuclei"
    img = cv2.cvtColor(cv2.imread(str(d / "hgsc_nest.jpg")), cv2.COLOR_BGR2RGB)
    inst = np.load(d / "hgsc_nest_inst_mask.npz")["nuc_raster"].astype(np.int32)
    typ = np.load(d / "hgsc_nest_type_mask.npz")["nuc_raster"].astype(np.int32)
    return img[:448, :448].copy(), inst[:448, :448].copy(), typ[:448, :448].copy()


def coords(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:h, 0:w]
    return yy.astype(np.int32), xx.astype(np.int32)


def test_dihedral_group_has_8_distinct_elements_and_matches_torch(nest):
    img = nest[0][:64, :64]
    outs = [dihedral(img, k) for k in range(8)]
    assert len({o.tobytes() for o in outs}) == 8
    assert np.array_equal(outs[0], img)
    x = torch.from_numpy(np.stack([img] * 8)).permute(0, 3, 1, 2)
    y = BatchDihedral().transform(x, k=torch.arange(8)).permute(0, 2, 3, 1).numpy()
    for k in range(8):
        assert np.array_equal(y[k], outs[k])
    with pytest.raises(ValueError):
        dihedral(img, 8)


def test_dihedral_moves_image_and_masks_with_one_draw(nest):
    img, inst, typ = nest
    yy, xx = coords(*inst.shape)
    c = A.Compose([Dihedral()], seed=3)
    seen = set()
    for _ in range(24):
        out = c(image=img, masks=[inst, typ, yy, xx])
        oy, ox = out["masks"][2], out["masks"][3]
        # every output pixel of the image comes from the source position its masks say
        assert np.array_equal(out["image"], img[oy, ox])
        assert np.array_equal(out["masks"][0], inst[oy, ox])
        assert np.array_equal(out["masks"][1], typ[oy, ox])
        seen.add((int(oy[0, 0]), int(ox[0, 0]), int(oy[0, 1]), int(ox[0, 1])))
    assert len(seen) == 8


def aligned(view: np.ndarray, img: np.ndarray, oy: np.ndarray, ox: np.ndarray) -> bool:
    """The (bilinear) view matches the source at its mask coordinates far better than at
    coordinates shifted by 12 pixels."""
    h, w = img.shape[:2]
    err = np.abs(view.astype(int) - img[oy, ox].astype(int)).mean()
    off = np.abs(view.astype(int) - img[(oy + 12) % h, (ox + 12) % w].astype(int)).mean()
    return bool(err < 0.5 * off)


def test_random_resized_crop_keeps_masks_aligned(nest):
    img, inst, _ = nest
    yy, xx = coords(*inst.shape)
    c = A.Compose([A.RandomResizedCrop(size=(224, 224), scale=(0.2, 1.0), p=1.0)], seed=0)
    for _ in range(5):
        out = c(image=img, masks=[inst, yy, xx])
        oi, oy, ox = out["masks"]
        assert set(np.unique(oi)) <= set(np.unique(inst))
        assert aligned(out["image"], img, oy, ox)
    x = torch.from_numpy(np.stack([img] * 4)).permute(0, 3, 1, 2)
    ms = [torch.from_numpy(np.stack([m] * 4)) for m in (inst, yy, xx)]
    view, (bi, by, bx) = BatchRandomResizedCrop(224, scale=(0.2, 1.0)).forward_with_masks(
        x, ms, torch.Generator().manual_seed(0)
    )
    assert view.shape == (4, 3, 224, 224) and view.dtype == torch.uint8
    for b in range(4):
        assert aligned(view[b].permute(1, 2, 0).numpy(), img, by[b].numpy(), bx[b].numpy())
        assert set(np.unique(bi[b].numpy())) <= set(np.unique(inst))
    assert len({tuple(by[b, :2, 0].tolist()) for b in range(4)}) > 1  # per-sample boxes


def test_crop_boxes_full_box_is_identity(nest):
    x = torch.from_numpy(nest[0][None]).permute(0, 3, 1, 2)
    y = crop_boxes(x, torch.tensor([[0.0, 0.0, 448.0, 448.0]]), (448, 448))
    assert torch.equal(x, y)


def test_multi_fov_crops_share_one_centre_and_masks(nest):
    img, inst, typ = nest
    yy, xx = coords(*inst.shape)
    rng = np.random.default_rng(0)
    for _ in range(5):
        small, big = multi_fov_crop(img, 0.25, (28.0, 112.0), 112, rng, masks=[inst, typ, yy, xx])
        assert small.image.shape == big.image.shape == (112, 112, 3)
        assert small.box[2] == 112 and big.box[2] == 448
        cs = (small.box[0] + small.box[2] / 2, small.box[1] + small.box[2] / 2)
        cb = (big.box[0] + big.box[2] / 2, big.box[1] + big.box[2] / 2)
        assert cs == cb
        # small field at native resolution: image, masks and coordinates line up exactly
        sy, sx = small.masks[2], small.masks[3]
        assert np.array_equal(small.image, img[sy, sx])
        assert np.array_equal(small.masks[0], inst[sy, sx])
        assert set(np.unique(big.masks[1])) <= set(np.unique(typ))
        assert big.field_um == 112.0
    with pytest.raises(ValueError):
        multi_fov_crop(img, 0.5, (448.0,), 112, rng)


def test_batched_multi_fov_crop(nest):
    img, inst, _ = nest
    x = torch.from_numpy(np.stack([img] * 3)).permute(0, 3, 1, 2)
    m = torch.from_numpy(np.stack([inst] * 3))
    boxes = fov_boxes(3, 448, 448, 0.5, (56.0, 224.0), torch.Generator().manual_seed(0))
    assert torch.allclose(
        boxes[0][:, :2] + boxes[0][:, 2:] / 2, boxes[1][:, :2] + boxes[1][:, 2:] / 2
    )
    views = BatchMultiFOVCrop((56.0, 224.0), 112)(x, 0.5, [m], torch.Generator().manual_seed(0))
    (v_small, (m_small,)), (v_big, _) = views
    assert v_small.shape == v_big.shape == (3, 3, 112, 112)
    b0 = boxes[0][0].long().tolist()
    assert torch.equal(v_small[0], x[0, :, b0[1] : b0[1] + 112, b0[0] : b0[0] + 112])
    assert torch.equal(m_small[0], m[0, b0[1] : b0[1] + 112, b0[0] : b0[0] + 112])
