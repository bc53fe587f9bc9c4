"""View recipes, configs, preview picture and the augment-preview command."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from pathssl.augment import RECIPES, build_recipe, load_recipe, preview_grid

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs" / "augment").glob("*.yaml"))
EXPECTED = {
    "simclr": 2,
    "moco": 2,
    "byol": 2,
    "barlow_twins": 2,
    "dino": 8,
    "swav": 8,
    "mae": 1,
    "maskfeat": 1,
}


@pytest.fixture(scope="module")
def tile(data_dir: Path) -> np.ndarray:
    img = cv2.cvtColor(cv2.imread(str(data_dir / "nuclei/hgsc_nest.jpg")), cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(img[200:456, 300:556])


def test_all_recipes_are_registered_and_have_a_config():
    assert set(EXPECTED) <= set(RECIPES.names())
    assert {p.stem for p in CONFIGS} >= set(EXPECTED)
    for p in CONFIGS:
        if p.stem in RECIPES:  # the registered recipes' configs hold their defaults
            assert load_recipe(p) == build_recipe(p.stem)
        else:  # example recipes (simclr_stain) name a registered recipe with other parameters
            assert load_recipe(p).name in RECIPES
    with pytest.raises(KeyError, match="known"):
        build_recipe("nope")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_recipe_views_on_cpu_and_torch(name, tile):
    recipe = build_recipe(name)
    assert recipe.n_views == EXPECTED[name]
    out = recipe.cpu(seed=0)(tile)
    again = recipe.cpu(seed=0)(tile)
    other = recipe.cpu(seed=1)(tile)
    assert len(out["views"]) == EXPECTED[name]
    assert all(v.dtype == np.uint8 and v.shape[2] == 3 for v in out["views"])
    assert all(np.array_equal(a, b) for a, b in zip(out["views"], again["views"], strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(out["views"], other["views"], strict=True))
    x = torch.from_numpy(np.stack([tile] * 3)).permute(0, 3, 1, 2)
    res = recipe.torch()(x, torch.Generator().manual_seed(0))
    assert len(res["views"]) == EXPECTED[name]
    for cpu_view, v in zip(out["views"], res["views"], strict=True):
        assert v.shape == (3, 3, *cpu_view.shape[:2]) and v.dtype == torch.float32
        assert float(v.min()) >= 0.0 and float(v.max()) <= 1.0
        assert not torch.equal(v[0], v[1])  # per-sample draws
    if recipe.mask_ratio > 0:
        assert out["patch_mask"].shape == (recipe.num_patches,)
        assert out["patch_mask"].sum() == round(recipe.mask_ratio * recipe.num_patches)
        assert res["patch_mask"].shape == (3, recipe.num_patches)
    else:
        assert out["patch_mask"] is None and res["patch_mask"] is None


def test_no_hue_jitter_in_pathology_defaults(tile):
    """Views keep H&E colours: mean hue of the views stays close to the tile's."""
    recipe = build_recipe("simclr")
    hue = lambda im: cv2.cvtColor(im, cv2.COLOR_RGB2HSV_FULL)[..., 0].astype(float)  # noqa: E731
    run = recipe.cpu(seed=0)
    shifts = [
        abs(np.median(hue(v)) - np.median(hue(tile))) for _ in range(5) for v in run(tile)["views"]
    ]
    assert np.median(shifts) < 12


def test_preview_grid_and_command(tile, tmp_path, data_dir):
    recipe = build_recipe("dino", n_local=2)
    grid = preview_grid([tile], recipe, rows=2, cell=64)
    assert grid.shape == (2 * 68, (1 + 4) * 68, 3)
    np.testing.assert_array_equal(
        grid[:64, :64], cv2.resize(tile, (64, 64), interpolation=cv2.INTER_AREA)
    )
    from pathssl.cli import main

    out = tmp_path / "grid.png"
    src = data_dir / "tiles/stain/source_image.png"
    assert (
        main(["augment-preview", str(src), "--recipe", "mae", "--out", str(out), "--rows", "2"])
        == 0
    )
    pic = cv2.imread(str(out))
    assert pic is not None and pic.shape[0] == 2 * 164
    # an unknown recipe is a bad argument: exit code 2 (the CLI's error contract)
    assert main(["augment-preview", str(src), "--recipe", "nope", "--out", str(out)]) == 2
