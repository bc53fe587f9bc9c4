"""Stain steps and field-of-view crops inside view recipes: the two backends (albumentations
``recipe.cpu`` and batched ``recipe.torch``) against each other and against independent
references (OpenCV colour statistics, plain block means, template matching, the statistics
file itself). Deterministic steps must agree within 2 grey levels; random steps must give the
same distribution of a summary statistic (two-sample Kolmogorov-Smirnov test, seeded draws)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from scipy.stats import ks_2samp

from pathssl.augment import ViewRecipe, ViewSpec, build_recipe, fit_macenko, stats_from_images

TILES = [
    "qc/tissue-level0-4302-10273-4814-10785.png",
    "qc/high-nuclei-score-level0.png",
    "stain/source_image.png",
]
#: every step off: only what a test switches on acts (full-tile field of view, no flips)
PLAIN = dict(dihedral=False, hed_p=0.0, color_p=0.0, blur_p=0.0)


def read_rgb(path: Path, size: int = 224) -> np.ndarray:
    img = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(img[:size, :size])


@pytest.fixture(scope="module")
def tiles(data_dir: Path) -> list[np.ndarray]:
    return [read_rgb(data_dir / "tiles" / t) for t in TILES]


@pytest.fixture(scope="module")
def nest(data_dir: Path) -> np.ndarray:
    return read_rgb(data_dir / "nuclei/hgsc_nest.jpg", 10_000)


@pytest.fixture(scope="module")
def stats_file(nest: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> Path:
    crops = [
        nest[y : y + 224, x : x + 224] for y in range(0, 1200, 240) for x in range(0, 1200, 240)
    ]
    path = tmp_path_factory.mktemp("stats") / "stats.yaml"
    stats_from_images(crops, "lab").save(path)
    return path


def one_view(**kw: object) -> ViewRecipe:
    spec = ViewSpec(**{"size": 224, "fov_scale": 1.0, **PLAIN, **kw})  # type: ignore[arg-type]
    return ViewRecipe("test", ((spec, 1),))


def cpu_views(recipe: ViewRecipe, images: list[np.ndarray], seed: int = 0) -> np.ndarray:
    run = recipe.cpu(seed=seed)
    return np.stack([run(im)["views"][0] for im in images])


def torch_views(recipe: ViewRecipe, images: list[np.ndarray], seed: int = 0) -> np.ndarray:
    module, g = recipe.torch(), torch.Generator().manual_seed(seed)
    out = []
    for i in range(0, len(images), 64):
        x = torch.from_numpy(np.stack(images[i : i + 64])).permute(0, 3, 1, 2).contiguous()
        v = module(x, g)["views"][0]
        out.append((v.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8))
    return np.concatenate(out)


def lab_mean_std(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Independent of pathssl: OpenCV's float L*a*b* of the RGB image."""
    lab = cv2.cvtColor(img.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB).reshape(-1, 3)
    return lab.mean(0), lab.std(0)


def maxdiff(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(int) - b.astype(int)).max())


# ------------------------------------------------------------------ normalisation to a target


def test_reinhard_normalisation_to_an_image_same_on_both_backends(tiles, data_dir):
    target = data_dir / "tiles/stain/target_image.png"
    recipe = one_view(stain_norm="reinhard", stain_norm_target=str(target))
    a, b = cpu_views(recipe, tiles), torch_views(recipe, tiles)
    assert maxdiff(a, b) <= 2
    assert maxdiff(a, np.stack(tiles)) > 20  # the tiles did change
    t_mean, t_std = lab_mean_std(read_rgb(target, 10_000))
    for view in a:
        m, s = lab_mean_std(view)
        np.testing.assert_allclose(m, t_mean, atol=1.5)
        np.testing.assert_allclose(s, t_std, rtol=0.08)


def test_reinhard_normalisation_to_stain_stats_same_on_both_backends(tiles, stats_file):
    from pathssl.augment import StainStats

    stats = StainStats.load(stats_file)
    recipe = one_view(stain_norm="reinhard", stain_norm_target=str(stats_file))
    a, b = cpu_views(recipe, tiles), torch_views(recipe, tiles)
    # the colour-space round trips clip out-of-gamut colours a little differently: measured
    # 0.006 % of values more than 2 grey levels apart (at most 5)
    d = np.abs(a.astype(int) - b.astype(int))
    assert (d > 2).mean() < 1e-3 and d.max() <= 8
    for view in a:  # each tile now has the dataset's average per-tile mean and spread, up to
        # out-of-gamut clipping (measured: means within 1.0, spreads within 10 %)
        m, s = lab_mean_std(view)
        np.testing.assert_allclose(m, stats.mean_avg, atol=1.5)
        np.testing.assert_allclose(s, stats.std_avg, rtol=0.15)


def stain_angles(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.degrees(np.arccos(np.clip((a * b).sum(1), -1, 1)))


@pytest.mark.parametrize("as_yaml", [False, True], ids=["image", "stains-yaml"])
def test_macenko_normalisation_same_on_both_backends(tiles, data_dir, tmp_path, as_yaml):
    import yaml

    image = data_dir / "tiles/stain/target_image.png"
    tgt = fit_macenko(read_rgb(image, 10_000))
    target = image
    if as_yaml:
        target = tmp_path / "stains.yaml"
        target.write_text(yaml.safe_dump(tgt.as_dict()))
    recipe = one_view(stain_norm="macenko", stain_norm_target=str(target))
    a, b = cpu_views(recipe, tiles), torch_views(recipe, tiles)
    assert maxdiff(a, b) <= 2
    for src, view in zip(tiles, a, strict=True):  # stains move onto the target's
        before = stain_angles(fit_macenko(src).matrix, tgt.matrix)
        after = stain_angles(fit_macenko(view).matrix, tgt.matrix)
        # measured (H, E degrees): 0.8/8.8 -> 2.6/4.4, 1.2/5.9 -> 0.05/2.7, 9.1/6.9 -> 0.1/1.2
        assert after.max() < 5.0 and after.max() < before.max()


# ------------------------------------------------------------------------ fields of view


def test_two_fields_of_view_are_the_tile_at_two_resolutions(tiles):
    """224 px tiles, size 112, fov_scales [2, 1]: the wide view is the whole tile averaged over
    2x2 blocks, the narrow one its centre 112 px unchanged; mpp recorded per view."""
    recipe = build_recipe("simclr", size=112, fov_scales=[2.0, 1.0], hed_p=0.0, blur_p=0.0)
    recipe = ViewRecipe(
        "fov", tuple((ViewSpec(**{**s.__dict__, **PLAIN}), c) for s, c in recipe.views)
    )
    x = torch.from_numpy(np.stack(tiles)).permute(0, 3, 1, 2).contiguous()
    res = recipe.torch(tile_mpp=0.5)(x, torch.Generator().manual_seed(0))
    for i, tile in enumerate(tiles):
        block = np.rint(tile.astype(np.float64).reshape(112, 2, 112, 2, 3).mean((1, 3)))
        out = recipe.cpu(seed=i, tile_mpp=0.5)(tile)
        wide_t = (res["views"][0][i].permute(1, 2, 0).numpy() * 255).round()
        narrow_t = (res["views"][1][i].permute(1, 2, 0).numpy() * 255).round()
        assert maxdiff(out["views"][0], block) <= 1 and maxdiff(wide_t, block) <= 1
        assert np.array_equal(out["views"][1], tile[56:168, 56:168])
        assert maxdiff(narrow_t, tile[56:168, 56:168]) == 0
        assert out["scale"] == [2.0, 1.0] and out["mpp"] == [1.0, 0.5]
    assert [m.tolist() for m in res["mpp"]] == [[1.0] * len(tiles), [0.5] * len(tiles)]


def locate(view: np.ndarray, image: np.ndarray, step: int) -> tuple[int, int]:
    """Top-left (x, y) of ``view`` in ``image`` averaged over ``step`` x ``step`` blocks, by
    template matching over the ``step`` ** 2 block phases (exact up to rounding)."""
    best = (np.inf, 0, 0)
    for py in range(step):
        for px in range(step):
            sub = image[py:, px:]
            h, w = (sub.shape[0] // step) * step, (sub.shape[1] // step) * step
            small = sub[:h, :w].astype(np.float32)
            small = small.reshape(h // step, step, w // step, step, 3).mean((1, 3))
            r = cv2.matchTemplate(small, view.astype(np.float32), cv2.TM_SQDIFF)
            _, _, loc, _ = cv2.minMaxLoc(r)
            if r[loc[1], loc[0]] < best[0]:
                best = (r[loc[1], loc[0]], px + step * loc[0], py + step * loc[1])
    return best[1], best[2]


def fov_recipe(size: int, scales: tuple[float, ...]) -> ViewRecipe:
    specs = [ViewSpec(size=size, fov_scale=f, **PLAIN) for f in scales]  # type: ignore[arg-type]
    return ViewRecipe("fov", tuple((s, 1) for s in specs))


def both_backends(
    recipe: ViewRecipe, tile: np.ndarray, n: int
) -> dict[str, list[list[np.ndarray]]]:
    """``n`` draws of every view of ``recipe`` on ``tile``, per backend, as uint8 HWC."""
    run = recipe.cpu(seed=0)
    x = torch.from_numpy(np.stack([tile] * n)).permute(0, 3, 1, 2).contiguous()
    out = recipe.torch()(x, torch.Generator().manual_seed(0))["views"]
    as_u8 = lambda v: (v.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)  # noqa: E731
    return {
        "cpu": [run(tile)["views"] for _ in range(n)],
        "torch": [[as_u8(v[i]) for v in out] for i in range(n)],
    }


def test_fields_of_view_share_one_centre_on_real_tiles(nest):
    """448 px real tiles, size 112, fields of 224 and 112 px: both views of a draw lie around one
    centre, found back in the tile by template matching, on both backends."""
    tile = np.ascontiguousarray(nest[300:748, 400:848])
    for name, draws in both_backends(fov_recipe(112, (2.0, 1.0)), tile, 5).items():
        for wide, narrow in draws:
            xn, yn = locate(narrow, tile, 1)
            xw, yw = locate(wide, tile, 2)
            assert abs((xn + 56) - (xw + 112)) <= 1 and abs((yn + 56) - (yw + 112)) <= 1, name


def test_field_of_view_centres_are_drawn_alike_on_both_backends():
    """The shared centre is uniform where the widest field fits, with the same distribution on
    both backends: a coordinate image (red = x // 2, green = y // 2) gives each view's origin."""
    yy, xx = np.mgrid[0:448, 0:448]
    coords = np.stack([xx // 2, yy // 2, np.zeros_like(xx)], -1).astype(np.uint8)
    centres = {}
    for name, draws in both_backends(fov_recipe(112, (2.0, 1.0)), coords, 300).items():
        c = []
        for wide, narrow in draws:
            cw = 2 * wide[0, 0, :2].astype(int) + 112  # x0 + 112 (+-1: parity lost)
            cn = 2 * narrow[0, 0, :2].astype(int) + 56
            assert np.abs(cw - cn).max() <= 2
            c.append(cn)
        centres[name] = np.array(c)
        assert centres[name].min() >= 110 and centres[name].max() <= 338  # 224 px field fits
    for axis in range(2):
        assert ks_2samp(centres["cpu"][:, axis], centres["torch"][:, axis]).pvalue > 0.01
        assert 55 < centres["cpu"][:, axis].std() < 75  # uniform over 224 px: 64.7


def test_resampling_matches_opencv_for_any_factor(nest):
    from pathssl.augment.geometry import crop_resize
    from pathssl.augment.torch_geometry import crop_squares

    img = nest[:400, :400]
    x = torch.from_numpy(img[None]).permute(0, 3, 1, 2).contiguous()
    for side, size in ((150, 112), (224, 112), (300, 64), (80, 112), (112, 112)):
        box = torch.tensor([[37.0, 21.0, side, side]])
        ours = crop_squares(x, box, size)[0].permute(1, 2, 0).numpy()
        assert maxdiff(ours, crop_resize(img, 37, 21, side, size, nearest=False)) <= 1, side


# -------------------------------------------------------------------- random stain steps


def test_randstainna_views_match_in_distribution(nest, stats_file):
    from pathssl.augment import StainStats

    stats = StainStats.load(stats_file)
    tile = np.ascontiguousarray(nest[600:712, 900:1012])
    recipe = one_view(size=112, randstain_p=1.0, randstain_stats=str(stats_file))
    n = 150
    a = cpu_views(recipe, [tile] * n, seed=1)
    b = torch_views(recipe, [tile] * n, seed=1)
    ma = np.array([lab_mean_std(v)[0] for v in a])
    mb = np.array([lab_mean_std(v)[0] for v in b])
    for c in range(3):
        assert ks_2samp(ma[:, c], mb[:, c]).pvalue > 0.01, c
    # against the statistics file: template means spread like the dataset's tile means
    for m in (ma, mb):
        np.testing.assert_allclose(
            np.median(m, 0), stats.mean_avg, atol=0.3 * stats.mean_std.max() + 1
        )
        np.testing.assert_allclose(m.std(0), stats.mean_std, rtol=0.3)
    # probability: about half of the views move with p = 0.5, on both backends
    half = one_view(size=112, randstain_p=0.5, randstain_stats=str(stats_file))
    for views in (cpu_views(half, [tile] * n, 2), torch_views(half, [tile] * n, 2)):
        moved = np.mean([maxdiff(v, tile) > 2 for v in views])
        assert 0.38 < moved < 0.62


def test_macenko_augmentation_views_match_in_distribution(nest):
    tile = np.ascontiguousarray(nest[600:712, 900:1012])
    recipe = one_view(size=112, macenko_p=1.0, macenko_alpha=0.2)
    n = 150
    od = lambda v: -np.log(np.maximum(v.astype(np.float64), 1) / 255).reshape(-1, 3).mean(0)  # noqa: E731
    a = np.array([od(v) for v in cpu_views(recipe, [tile] * n, seed=3)])
    b = np.array([od(v) for v in torch_views(recipe, [tile] * n, seed=3)])
    for c in range(3):
        assert ks_2samp(a[:, c], b[:, c]).pvalue > 0.01, c
    assert (a.std(0) > 0.01).all()  # the augmentation varies the stain
    still = np.array([od(v) for v in cpu_views(one_view(size=112), [tile] * 5)])
    assert ks_2samp(a[:, 0], np.repeat(still[:, 0], 30)).pvalue < 1e-6  # and the test can fail
