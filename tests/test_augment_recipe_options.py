"""The stain and field-of-view options of view recipes: typed parameters, files named by path
(resolved from the working directory), and clear errors before any compute."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest
import torch

from pathssl.augment import RECIPES, ViewSpec, build_recipe, load_recipe, stats_from_images
from pathssl.augment.randstainna import StainStats

REPO = Path(__file__).resolve().parents[1]
NEW = (
    "hed_p",
    "randstain_p",
    "randstain_stats",
    "randstain_std_scale",
    "randstain_gmm",
    "macenko_p",
    "macenko_stains",
    "macenko_sigma",
    "macenko_alpha",
    "macenko_beta",
    "stain_norm",
    "stain_norm_target",
    "stain_norm_space",
    "fov_scales",
)


@pytest.fixture(scope="module")
def stats(data_dir: Path) -> StainStats:
    import cv2

    img = cv2.cvtColor(cv2.imread(str(data_dir / "nuclei/hgsc_nest.jpg")), cv2.COLOR_BGR2RGB)
    return stats_from_images([img[y : y + 128, 0:128] for y in range(0, 1280, 128)], "lab")


@pytest.mark.parametrize("name", sorted(RECIPES.names()))
def test_every_recipe_takes_the_stain_and_fov_options_off_by_default(name: str) -> None:
    params = inspect.signature(RECIPES.get(name)).parameters
    assert set(NEW) <= set(params)
    assert params["randstain_p"].default == 0 and params["macenko_p"].default == 0
    assert params["stain_norm"].default == "none" and params["fov_scales"].default == ()
    recipe = build_recipe(name)
    assert all(s.fov_scale == 0 and s.randstain_p == 0 for s, _ in recipe.views)


def test_fov_scales_go_to_the_first_views_in_order() -> None:
    dino = build_recipe("dino", n_local=2, fov_scales=[2.0, 1.0], size=112)
    flat = [s for s, c in dino.views for _ in range(c)]
    assert [s.fov_scale for s in flat] == [2.0, 1.0, 0.0, 0.0]  # locals keep random crops
    assert [s.fov_side for s in flat[:2]] == [224, 112] and dino.fov_side == 224
    assert flat[0].blur_p == 1.0 and flat[1].solarize_p == 0.2  # the family's asymmetry stays
    with pytest.raises(ValueError, match="fov_scales: 3 scales for the 2 views"):
        build_recipe("simclr", fov_scales=[2, 1, 1])
    with pytest.raises(ValueError, match="needs a 224 px field, tiles are 200x200"):
        dino.check_tile(200)
    x = torch.zeros(2, 3, 200, 200, dtype=torch.uint8)
    with pytest.raises(ValueError, match="needs a 224 px field"):
        dino.torch()(x)


def test_files_resolve_from_the_working_directory(
    stats: StainStats, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "run").mkdir()
    stats.save(tmp_path / "run" / "stats.yaml")
    recipe = build_recipe("simclr", size=64, randstain_p=1.0, randstain_stats="stats.yaml")
    monkeypatch.chdir(tmp_path)  # not there: the error names the key and the resolved path
    where = rf"randstain_stats: no such file {tmp_path}/stats.yaml \(relative paths are read"
    with pytest.raises(FileNotFoundError, match=where):
        recipe.check_inputs()
    monkeypatch.chdir(tmp_path / "run")
    recipe.check_inputs()
    x = torch.randint(0, 256, (2, 3, 96, 96), dtype=torch.uint8)
    assert len(recipe.torch()(x, torch.Generator().manual_seed(0))["views"]) == 2


def test_the_example_recipe_loads_and_runs(
    stats: StainStats, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    recipe = load_recipe(REPO / "configs/augment/simclr_stain.yaml")
    with pytest.raises(FileNotFoundError, match="randstain_stats"):
        recipe.check_inputs()
    stats.save("stain_stats.yaml")  # what `pathssl stain-stats ... --out stain_stats.yaml` writes
    recipe.check_inputs()
    assert recipe.name == "simclr" and recipe.n_views == 2 and recipe.fov_side == 224
    tile = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    out = recipe.cpu(seed=0, tile_mpp=0.5)(tile)
    assert out["mpp"] == [1.0, 0.5] and [v.shape for v in out["views"]] == [(112, 112, 3)] * 2


def test_bad_options_are_refused_with_the_key(stats: StainStats, tmp_path: Path) -> None:
    bad = [
        ({"randstain_p": 0.5}, "randstain_stats: randstain_p > 0 needs"),
        ({"stain_norm": "macenko"}, "stain_norm_target: stain_norm macenko needs a target"),
        ({"stain_norm": "vahadane", "stain_norm_target": "x.png"}, "stain_norm: must be one of"),
        ({"macenko_p": 1.5}, "macenko_p: a probability"),
        ({"stain_norm_space": "rgb"}, "stain_norm_space: must be one of"),
        ({"fov_scales": [-1.0]}, "fov_scale: must be >= 0"),
    ]
    for params, message in bad:
        with pytest.raises(ValueError, match=message):
            build_recipe("simclr", **params)
    with pytest.raises(TypeError, match="randstain_sats"):
        build_recipe("simclr", randstain_sats="x.yaml")
    path = tmp_path / "hed.yaml"
    stats_hed = StainStats("hed", *(np.ones(3),) * 4)
    stats_hed.save(path)
    no_gmm = build_recipe("simclr", randstain_p=1.0, randstain_stats=str(path), randstain_gmm=True)
    with pytest.raises(ValueError, match="randstain_gmm: .* has no mixture"):
        no_gmm.check_inputs()
    other_space = build_recipe("simclr", stain_norm="reinhard", stain_norm_target=str(path))
    with pytest.raises(ValueError, match="holds hed statistics; set stain_norm_space: hed"):
        other_space.check_inputs()
    not_stats = tmp_path / "notes.yaml"
    not_stats.write_text("just: notes\n")
    with pytest.raises(ValueError, match="not a `pathssl stain-stats` output"):
        build_recipe("simclr", randstain_p=1.0, randstain_stats=str(not_stats)).check_inputs()
    assert ViewSpec().fov_side == 0
