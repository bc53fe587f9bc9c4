"""RandStainNA: statistics, GMM, template sampling, backend agreement, stain-stats command."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from pathssl.augment import RandStainNA, StainStats, compute_stain_stats, sample_templates
from pathssl.augment.randstainna import fit_gmm, stats_from_images
from pathssl.augment.stain import channel_stats, restandardise, rgb_to_space
from pathssl.augment.torch_ops import BatchRandStainNA


@pytest.fixture(scope="module")
def tiles(data_dir: Path) -> list[np.ndarray]:
    img = cv2.cvtColor(cv2.imread(str(data_dir / "nuclei/hgsc_nest.jpg")), cv2.COLOR_BGR2RGB)
    return [
        np.ascontiguousarray(img[y : y + 128, x : x + 128])
        for y in range(0, 1408, 176)
        for x in range(0, 1408, 352)
    ]


class FakeStore:
    """The tile-store API subset compute_stain_stats uses."""

    def __init__(self, tiles: list[np.ndarray]) -> None:
        self.tiles = tiles
        self.qc = {"tissue": np.linspace(0, 1, len(tiles)).astype(np.float32)}

    def __len__(self) -> int:
        return len(self.tiles)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.tiles[i]


@pytest.mark.parametrize("space", ["lab", "hsv", "hed"])
def test_outputs_follow_the_sampled_templates(tiles, space):
    """Typical tiles land on their template; out-of-gamut values are clipped back to RGB, which
    moves a few tiles (hence medians), and HSV hue wraps modulo 360 (excluded)."""
    stats = stats_from_images(tiles, space)
    mean, std = sample_templates(stats, np.random.default_rng(0), n=len(tiles))
    err_mean, err_std = [], []
    for img, m, s in zip(tiles, mean, std, strict=True):
        om, osd = channel_stats(rgb_to_space(restandardise(img, space, m, s), space))
        err_mean.append(np.abs(om - m) / (stats.mean_std + stats.std_avg))
        err_std.append(np.abs(osd - s) / s)
    ch = slice(1, 3) if space == "hsv" else slice(0, 3)
    assert (np.median(np.array(err_mean)[:, ch], axis=0) < 0.02).all()
    assert (np.median(np.array(err_std)[:, ch], axis=0) < 0.05).all()
    # and the tiles did move: their own statistics differ from the templates
    own = np.array([channel_stats(rgb_to_space(t, space))[0] for t in tiles])
    assert np.median(np.abs(own - mean)[:, ch] / (stats.mean_std + stats.std_avg)[ch]) > 0.1


@pytest.mark.parametrize("space", ["lab", "hsv", "hed"])
def test_randstainna_backends_agree(tiles, space):
    stats = stats_from_images(tiles, space)
    mean, std = sample_templates(stats, np.random.default_rng(1), n=6)
    imgs = tiles[:6]
    t = RandStainNA(stats, p=1.0)
    ref = np.stack([t.apply(i, mean=m, std=s) for i, m, s in zip(imgs, mean, std, strict=True)])
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2)
    out = BatchRandStainNA(stats).transform(
        x, mean=torch.tensor(mean), std=torch.tensor(std), applied=torch.ones(6, dtype=torch.bool)
    )
    diff = np.abs(out.permute(0, 2, 3, 1).numpy().astype(int) - ref.astype(int))
    assert diff.max() <= 2


def test_templates_follow_the_dataset_distribution(tiles):
    stats = stats_from_images(tiles, "lab")
    mean, std = sample_templates(stats, np.random.default_rng(0), n=20000)
    np.testing.assert_allclose(mean.mean(0), stats.mean_avg, atol=0.05 * stats.mean_std.max())
    np.testing.assert_allclose(mean.std(0), stats.mean_std, rtol=0.05)
    wide, _ = sample_templates(stats, np.random.default_rng(0), n=20000, std_scale=2.0)
    np.testing.assert_allclose(wide.std(0), 2 * stats.mean_std, rtol=0.05)
    assert (std > 0).all()


def test_gmm_recovers_two_clusters_and_samples_from_them():
    rng = np.random.default_rng(0)
    a = rng.normal([0, 0, 0, 1, 1, 1], 0.1, (300, 6))
    b = rng.normal([5, 5, 5, 2, 2, 2], 0.1, (100, 6))
    w, m, c = fit_gmm(np.vstack([a, b]), 2, seed=0)
    order = np.argsort(m[:, 0])
    np.testing.assert_allclose(w[order], [0.75, 0.25], atol=0.02)
    np.testing.assert_allclose(m[order][1], [5, 5, 5, 2, 2, 2], atol=0.05)
    st = StainStats("lab", np.zeros(3), np.ones(3), np.ones(3), np.ones(3), 400, w, m, c)
    mean, _ = sample_templates(st, np.random.default_rng(1), n=4000, use_gmm=True)
    frac_b = (mean[:, 0] > 2.5).mean()
    assert 0.22 < frac_b < 0.28  # samples come from the mixture, not one wide normal
    assert np.abs(mean[:, 0] - 2.5).min() > 1.0
    tm = BatchRandStainNA(st, use_gmm=True, p=1.0).sample(4000, torch.Generator().manual_seed(0))
    assert 0.22 < float((tm["mean"][:, 0] > 2.5).float().mean()) < 0.28


def test_compute_stain_stats_from_stores_and_yaml_roundtrip(tiles, tmp_path):
    stats = compute_stain_stats([FakeStore(tiles)], space="lab", n_components=2, min_tissue=0.5)
    assert stats.n_tiles == sum(t >= 0.5 for t in np.linspace(0, 1, len(tiles)))
    ref = stats_from_images(tiles[-stats.n_tiles :], "lab")
    np.testing.assert_allclose(stats.mean_avg, ref.mean_avg)
    stats.save(tmp_path / "s.yaml")
    back = StainStats.load(tmp_path / "s.yaml")
    np.testing.assert_allclose(back.gmm_covs, stats.gmm_covs)
    t = RandStainNA(str(tmp_path / "s.yaml"), use_gmm=True, p=1.0)
    t.set_random_seed(0)
    assert t(image=tiles[0])["image"].shape == tiles[0].shape


def test_stain_stats_command_on_a_tiled_slide(cmu_slide, tmp_path):
    from pathssl.cli import main
    from tiling import tile_slides

    res = tile_slides([cmu_slide], tmp_path / "tiles", mpp=0.5, size=224, progress=False)
    assert res[0].status != "failed", res[0].error
    stores = sorted((tmp_path / "tiles").glob("*.zarr"))
    assert stores
    out = tmp_path / "stats.yaml"
    assert (
        main(
            ["stain-stats", *map(str, stores), "--out", str(out), "--max-tiles", "50", "--gmm", "2"]
        )
        == 0
    )
    st = StainStats.load(out)
    assert st.n_tiles > 0 and st.gmm_weights is not None
    assert 20 < st.mean_avg[0] < 95  # L* of H&E tissue
