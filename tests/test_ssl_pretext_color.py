"""Colorization (Zhang et al. 2016) and its stain variant: the in-gamut ab bins against
skimage's Lab of random sRGB colours, the loss against a per-cell reference built on skimage's
colour conversions (Lab; the Ruifrok & Johnston matrix for H and E), class rebalancing against
the formula by hand, the training tiles' normalisation reaching the method through the loop,
the trunk loading into ``pathssl eval`` and the nuclei model, and bitwise resume (slow)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import test_ssl_pretext_tasks as pretext
import torch
from skimage import color
from test_train_methods import tiny_overrides

from pathssl.models import build_backbone
from pathssl.ssl import METHODS
from pathssl.ssl.colorization import Colorization, rebalance_weights
from pathssl.ssl.colour_bins import ab_gamut_bins

MEAN, STD = [0.7, 0.5, 0.65], [0.15, 0.2, 0.12]


@pytest.fixture(scope="module")
def store(cmu_slide: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiling import tile_slides

    out = tmp_path_factory.mktemp("tiles")
    tile_slides([cmu_slide], out, mpp=0.5, size=224, progress=False, report=False)
    return out


def build(**kw: object) -> Colorization:
    torch.manual_seed(0)
    m = METHODS.build("colorization", backbone=build_backbone("resnet18"), head_dim=16, **kw)
    assert isinstance(m, Colorization)
    m.set_input_normalisation(MEAN, STD)
    return m.eval()


def real_views(data_dir: Path, n: int = 2, size: int = 64) -> tuple[np.ndarray, torch.Tensor]:
    """``n`` crops of a real H&E image: RGB float64 ``(n, size, size, 3)`` in [0, 1] and the
    normalised views ``(n, 3, size, size)`` float32."""
    import cv2

    img = cv2.cvtColor(cv2.imread(str(data_dir / "nuclei" / "hgsc_nest.jpg")), cv2.COLOR_BGR2RGB)
    crops = np.stack([img[100 + 90 * i : 100 + 90 * i + size, 200 : 200 + size] for i in range(n)])
    rgb = crops.astype(np.float64) / 255.0
    t = torch.from_numpy(rgb).permute(0, 3, 1, 2).float()
    views = (t - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    return rgb, views


def test_ab_bins_cover_the_srgb_gamut() -> None:
    bins = ab_gamut_bins(10.0).numpy()
    assert bins.shape == (261, 2) and len(np.unique(bins, axis=0)) == 261
    assert np.allclose(bins / 10, np.round(bins / 10))  # centres on the grid
    rgb = np.random.default_rng(0).random((1, 20000, 3))
    ab = color.rgb2lab(rgb)[0, :, 1:]
    nearest = np.abs(ab[:, None, :] - bins[None]).max(-1).min(1)  # Chebyshev distance
    assert nearest.max() <= 5.0 + 1e-6  # every colour lies in one of the bins' cells
    used = np.unique(np.round(ab / 10), axis=0)
    assert len(used) > 0.9 * len(bins)  # and the bins are the gamut's, not a padded square
    assert len(ab_gamut_bins(20.0)) == 75 and len(ab_gamut_bins(40.0)) == 23


def reference(
    method: Colorization, rgb: np.ndarray, space: str
) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Per image with skimage's conversions: the normalised input image ``(B, 3, H, W)`` and,
    per 8x8 cell, the soft target ``(B, Q, 8, 8)``: the cell's mean target value, its 5 nearest
    bins with Gaussian weights; and ``(B, 8, 8)`` bool: the 5th and 6th nearest bins are not
    (nearly) tied (on the symmetric ab grid a tie is broken by rounding)."""
    bins = method.bins.double().numpy()
    inputs, soft = [], np.zeros((len(rgb), len(bins), 8, 8))
    clear = np.ones((len(rgb), 8, 8), dtype=bool)
    for b, img in enumerate(rgb):
        if space == "lab":
            lab = color.rgb2lab(img)
            source = color.lab2rgb(np.dstack([lab[..., :1], np.zeros_like(lab[..., 1:])]))
            target = lab[..., 1:]
        else:
            od = -np.log(np.maximum(img * 255.0, 1.0) / 255.0)
            hed = od @ color.hed_from_rgb
            source = np.clip(np.exp(-hed[..., :1] * color.rgb_from_hed[0]), 0.0, 1.0)
            target = np.clip(hed[..., 1:2], 0.0, 1.5)
        x = torch.from_numpy(source).permute(2, 0, 1).float()
        inputs.append((x - method.input_mean[0]) / method.input_std[0])
        for i in range(8):
            for j in range(8):
                v = target[8 * i : 8 * i + 8, 8 * j : 8 * j + 8].reshape(-1, target.shape[-1])
                d2 = ((bins - v.mean(0)) ** 2).sum(1)
                order = np.argsort(d2, kind="stable")
                near = order[:5]
                w = np.exp(-d2[near] / (2 * method.sigma**2))
                soft[b, near, i, j] = w / w.sum()
                clear[b, i, j] = d2[order[5]] - d2[order[4]] > 1e-3 * (1 + d2[order[4]])
    return torch.stack(inputs), soft, clear


@pytest.mark.parametrize("space", ["lab", "hed"])
def test_inputs_targets_and_loss_match_a_per_cell_reference(space: str, data_dir: Path) -> None:
    method = build(space=space)
    with torch.no_grad():  # a confident head, so that the targets decide the loss
        method.head.net[-1].weight.mul_(30)
    rgb, views = real_views(data_dir)
    x_ref, soft_ref, clear = reference(method, rgb, space)
    assert clear.mean() > 0.9
    with torch.no_grad():
        x, soft = method.inputs_and_targets(views)
        got = float(method([views])["loss"])
        logits = method.head(method.backbone.forward_features(x_ref), (8, 8)).double()
    torch.testing.assert_close(x, x_ref, atol=2e-3, rtol=0)
    cells = clear[:, None].repeat(soft_ref.shape[1], 1)
    np.testing.assert_allclose(soft.double().numpy()[cells], soft_ref[cells], atol=2e-3)
    ref = float(-(torch.from_numpy(soft_ref) * torch.log_softmax(logits, 1)).sum(1).mean())
    assert got == pytest.approx(ref, rel=1e-3)
    assert method.num_classes == (261 if space == "lab" else 32)


def test_class_rebalancing_weights_and_counts(data_dir: Path) -> None:
    w = rebalance_weights(torch.tensor([3.0, 1.0, 0.0, 0.0]), 0.5)
    # 1 / (0.5 p + 0.5 / 4) = [2, 4, 8, 8], then scaled so that sum p w = 1 (2.5 before)
    torch.testing.assert_close(w, torch.tensor([0.8, 1.6, 3.2, 3.2]))
    assert torch.equal(rebalance_weights(torch.zeros(5), 0.5), torch.ones(5))
    method = build(rebalance=True).train()
    _, views = real_views(data_dir)
    out = method([views])
    assert float(method.bin_counts.sum()) == 0  # counted only once the step is applied
    method.on_step_end(0, 1)
    assert float(method.bin_counts.sum()) == 2 * 8 * 8
    out = method([views])  # now weighted: the rare bins count more
    plain = build(rebalance=False).train()
    plain.load_state_dict(method.state_dict())
    torch.manual_seed(0)
    weighted, unweighted = float(out["loss"].detach()), float(plain([views])["loss"].detach())
    assert not math.isclose(weighted, unweighted, rel_tol=1e-4)


def test_the_loop_hands_the_tile_normalisation_over(store: Path, tmp_path: Path) -> None:
    from pathssl.train import build_trainer, load_config

    trainer = build_trainer(load_config(None, tiny_overrides("colorization", store, tmp_path)))
    step = trainer.batch_step
    images = step.images(next(iter(trainer.loader)))
    gen = torch.Generator().manual_seed(3)
    step.generator.manual_seed(3)
    raw = step.views(images, gen)["views"][0].float()  # the recipe's views, RGB in [0, 1]
    views, _ = step.make_views(images)
    torch.testing.assert_close(trainer.method.raw_rgb(views[0]), raw.clamp(0, 1))
    trainer.fit()
    ckpt = torch.load(tmp_path / "last.pt", map_location="cpu", weights_only=False)
    assert ckpt["meta"]["mean"] == pytest.approx(trainer.method.input_mean.flatten().tolist())
    assert float(ckpt["method"]["bin_counts"].sum()) == 2 * 4 * 8 * 8  # 2 steps, 4 views


@pytest.mark.parametrize("space", ["lab", "hed"])
def test_trunk_loads_into_eval_and_nuclei(
    space: str, store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import test_train_methods

    tiny = test_train_methods.TINY["colorization"]
    monkeypatch.setitem(test_train_methods.TINY, "colorization", {**tiny, "space": space})
    pretext.test_trunk_loads_into_eval_and_nuclei("colorization", store, tmp_path)


@pytest.mark.slow
def test_resume_after_kill_is_bitwise_exact(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pretext.test_resume_after_kill_is_bitwise_exact("colorization", store, tmp_path, monkeypatch)
