"""Dihedral test-time augmentation against a naive per-transform reference written from pixel
coordinates (no rot90/flip), and on a model that is D4-equivariant by construction (its merged
output must be its own output; a merge that forgot the HV sign/axis fixes is not)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.typing import NDArray
from scipy import ndimage as ndi
from torch import Tensor, nn

from pathssl.nuclei.data import read_rgb
from pathssl.nuclei.model import HV_KEY, NP_KEY, TP_KEY, build_nuclei_model
from pathssl.nuclei.predict import NucleiPredictor
from pathssl.nuclei.targets import hover_maps
from pathssl.nuclei.tta import DIHEDRAL, apply, invert, invert_hv, tta_forward

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")
Point = Callable[[NDArray[np.int64], NDArray[np.int64]], tuple[NDArray[np.int64], ...]]


def point_map(k: int, flip: bool, s: int) -> Point:
    """Where pixel (r, c) of an s x s image goes: a mirror sends it to (r, s - 1 - c), a
    counter-clockwise quarter turn to (s - 1 - c, r); first the mirror, then k turns."""

    def p(r: NDArray[np.int64], c: NDArray[np.int64]) -> tuple[NDArray[np.int64], ...]:
        if flip:
            c = s - 1 - c
        for _ in range(k):
            r, c = s - 1 - c, r
        return r, c

    return p


def naive_tta(model: nn.Module, x: Tensor) -> dict[str, NDArray[np.float64]]:
    """Mean probabilities (NP, TP) and mean HV over the 8 transforms, one pixel index at a time
    (fancy indexing) and the HV vectors mapped back by the inverse of the point map's linear
    part, measured from the map itself."""
    s = x.shape[-1]
    r, c = np.meshgrid(np.arange(s), np.arange(s), indexing="ij")
    acc: dict[str, NDArray[np.float64]] = {}
    for k, flip in DIHEDRAL:
        p = point_map(k, flip, s)
        pr, pc = p(r, c)
        y = torch.zeros_like(x)
        y[..., pr, pc] = x[..., r, c]
        with torch.no_grad():
            out = {key: v.double().numpy() for key, v in model(y).items()}
        back = {key: v[..., pr, pc] for key, v in out.items()}  # output at p(r, c) -> (r, c)
        o = np.array(p(np.array(0), np.array(0)), float)
        lin = np.stack(
            [np.array(p(np.array(1), np.array(0))) - o, np.array(p(np.array(0), np.array(1))) - o],
            1,
        )  # (dr, dc) -> (dr', dc')
        inv = np.linalg.inv(lin)
        hv = back[HV_KEY]  # channel 0: dc' (h), channel 1: dr' (v)
        dr = inv[0, 0] * hv[:, 1] + inv[0, 1] * hv[:, 0]
        dc = inv[1, 0] * hv[:, 1] + inv[1, 1] * hv[:, 0]
        merged = {
            NP_KEY: torch.softmax(torch.from_numpy(back[NP_KEY]), 1).numpy(),
            HV_KEY: np.stack([dc, dr], 1),
        }
        if TP_KEY in back:
            merged[TP_KEY] = torch.softmax(torch.from_numpy(back[TP_KEY]), 1).numpy()
        for key, v in merged.items():
            acc[key] = acc.get(key, 0) + v / len(DIHEDRAL)
    return acc


@pytest.fixture(scope="module")
def crops(data_dir: Path) -> Tensor:
    img = read_rgb(data_dir / "nuclei" / "hgsc_nest.jpg")
    batch = np.stack([img[100:164, 200:264], img[700:764, 900:964]])
    return torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 3, 1, 2)))


def test_transforms_match_the_point_map_and_invert(crops: Tensor) -> None:
    s = crops.shape[-1]
    r, c = np.meshgrid(np.arange(s), np.arange(s), indexing="ij")
    seen = set()
    for k, flip in DIHEDRAL:
        pr, pc = point_map(k, flip, s)(r, c)
        ref = torch.zeros_like(crops)
        ref[..., pr, pc] = crops[..., r, c]
        got = apply(crops, k, flip)
        assert torch.equal(got, ref), (k, flip)
        assert torch.equal(invert(got, k, flip), crops)
        seen.add(got.numpy().tobytes())
    assert len(seen) == 8  # eight different images: the whole group


def test_merged_outputs_equal_the_naive_reference(crops: Tensor) -> None:
    """An untrained network (not equivariant: every transform gives other outputs)."""
    torch.manual_seed(0)
    model = build_nuclei_model("resnet18", 3, widths=(8, 8, 8, 8, 8)).eval()
    with torch.no_grad():
        got = tta_forward(model, crops)
        plain = model(crops)
    ref = naive_tta(model, crops)
    for key in (NP_KEY, TP_KEY):
        np.testing.assert_allclose(torch.softmax(got[key], 1).numpy(), ref[key], atol=1e-5)
    np.testing.assert_allclose(got[HV_KEY].numpy(), ref[HV_KEY], atol=1e-5)
    # and TTA did something: the merge is not the plain output
    assert (got[HV_KEY] - plain[HV_KEY]).abs().max() > 1e-3


class DarkBlobs(nn.Module):
    """D4-equivariant by construction: nuclei = pixels darker than 150 (mean RGB), instances
    their 4-connected components (a D4-symmetric neighbourhood), HV maps from those."""

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        dark = (x.float().mean(1) < 150).numpy()
        hv = np.stack([hover_maps(ndi.label(m)[0]) for m in dark])
        nuc = torch.from_numpy(dark.astype(np.float32))
        return {NP_KEY: torch.stack([-nuc, nuc], 1) * 4, HV_KEY: torch.from_numpy(hv)}


def test_an_equivariant_model_is_its_own_merge(crops: Tensor, data_dir: Path) -> None:
    model = DarkBlobs()
    plain, merged = model(crops), tta_forward(model, crops)
    assert plain[HV_KEY].abs().max() > 0.9  # real nuclei: the HV maps are not empty
    np.testing.assert_allclose(merged[HV_KEY].numpy(), plain[HV_KEY].numpy(), atol=1e-5)
    np.testing.assert_allclose(
        torch.softmax(merged[NP_KEY], 1).numpy(), torch.softmax(plain[NP_KEY], 1).numpy(), atol=1e-5
    )
    # a merge that maps positions back but not the vectors is far off
    wrong = sum(invert(model(apply(crops, k, f))[HV_KEY], k, f) for k, f in DIHEDRAL) / 8
    assert (wrong - plain[HV_KEY]).abs().max() > 0.5
    # each vector fix alone (one quarter turn) is right: invert_hv of the turned output
    turned = model(apply(crops, 1, False))[HV_KEY]
    np.testing.assert_allclose(
        invert_hv(turned, 1, False).numpy(), plain[HV_KEY].numpy(), atol=1e-5
    )

    # through the predictor: the same instances with and without TTA
    img = read_rgb(data_dir / "nuclei" / "hgsc_nest.jpg")[:200, :200]
    a = NucleiPredictor(model, window=128, overlap=32, progress=False).predict_image(img)
    b = NucleiPredictor(model, window=128, overlap=32, progress=False, tta=True).predict_image(img)
    assert len(a) > 10
    np.testing.assert_array_equal(a.inst, b.inst)


def test_tta_needs_a_network() -> None:
    from pathssl.nuclei.classical import ClassicalNuclei

    with pytest.raises(ValueError, match="test-time augmentation"):
        NucleiPredictor(ClassicalNuclei(), tta=True)
