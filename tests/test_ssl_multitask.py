"""Multi-task self-supervision (Doersch & Zisserman 2017): a one-task run equals the plain
method step for step through the real loop; the loss is the weighted sum of independently built
plain methods; each task gets its own recipe's views; the lasso stage mixture; config errors;
exact resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from test_ssl_s4l import resumed_equals_uninterrupted
from test_train_methods import TINY, build_tiny, tiny_overrides

from pathssl.augment import build_recipe
from pathssl.models import build_backbone
from pathssl.ssl import METHODS
from pathssl.ssl.multitask import MultiTask
from pathssl.train import load_checkpoint, load_config
from pathssl.train.build import build_views
from pathssl.train.config import ConfigError
from pathssl.train.logger import read_metrics


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def store(cmu_slide: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiling import tile_slides

    out = tmp_path_factory.mktemp("tiles")
    tile_slides([cmu_slide], out, mpp=0.5, size=224, progress=False, report=False)
    return out


def as_multitask(ov: list[str], tasks: dict[str, Any]) -> list[str]:
    swap = {"method.name": "method.name=multitask", "method.params": f"method.params={tasks}"}
    return [swap.get(o.split("=")[0], o) for o in ov]


@pytest.mark.parametrize("task", ["rotation", "pirl"])  # pirl: the dataset index is handed on
def test_one_task_run_equals_the_plain_method_step_for_step(
    task: str, store: Path, tmp_path: Path
) -> None:
    plain = tiny_overrides(task, store, tmp_path / "plain", steps=3)
    multi = as_multitask(
        tiny_overrides(task, store, tmp_path / "multi", steps=3),
        {"tasks": {task: {"weight": 1.0, "params": TINY[task]}}},
    )
    for ov in (plain, multi):
        build_tiny(task, ov, None).fit()

    def rows(out: str) -> list[dict[str, Any]]:
        return [r for r in read_metrics(tmp_path / out / "metrics.jsonl") if r["kind"] == "train"]

    p, m = rows("plain"), rows("multi")
    assert [r["step"] for r in p] == [r["step"] for r in m] == [1, 2, 3]
    assert [r["loss"] for r in p] == [r["loss"] for r in m] == [r[f"{task}/loss"] for r in m]
    a, b = load_checkpoint(tmp_path / "plain/last.pt"), load_checkpoint(tmp_path / "multi/last.pt")
    for k, v in a["trunk"].items():
        assert torch.equal(v, b["trunk"][k]), k
    for k, v in a["method"].items():  # heads and buffers too, under tasks.<task>.
        other = b["method"][k] if k.startswith("backbone.") else b["method"][f"tasks.{task}.{k}"]
        assert torch.equal(v, other), k
    assert not any(k.startswith(f"tasks.{task}.backbone.") for k in b["method"])  # trunk once


def test_loss_is_the_weighted_sum_of_independent_plain_methods() -> None:
    tasks = {
        "rotation": {"weight": 0.7, "params": {"head_hidden_dim": 16}},
        "simclr": {"weight": 0.3, "params": {"proj_hidden_dim": 32, "proj_dim": 16}},
    }
    multi = MultiTask(build_backbone("resnet18"), tasks)
    assert multi.view_counts == [1, 2] and multi.n_global_views == 3
    rot = METHODS.build("rotation", backbone=build_backbone("resnet18"), head_hidden_dim=16)
    sim = METHODS.build(
        "simclr", backbone=build_backbone("resnet18"), proj_hidden_dim=32, proj_dim=16
    )
    state = multi.state_dict()
    for name, plain in (("rotation", rot), ("simclr", sim)):
        own = {k: v for k, v in state.items() if k.startswith("backbone.")}
        own |= {k.split(".", 2)[2]: v for k, v in state.items() if k.startswith(f"tasks.{name}.")}
        plain.load_state_dict(own)
    views = [torch.randn(4, 3, 32, 32) for _ in range(3)]
    out = multi(views)
    r, s = rot(views[:1])["loss"], sim(views[1:])["loss"]
    torch.testing.assert_close(out["rotation/loss"], r.detach())
    torch.testing.assert_close(out["simclr/loss"], s.detach())
    torch.testing.assert_close(out["loss"], 0.7 * r + 0.3 * s)


def test_each_task_gets_its_own_recipes_views(store: Path) -> None:
    """The run's recipe is the tasks' recipes in turn: the same tiles and generator give
    bitwise the views each recipe makes when run one after the other."""
    from pathssl.data import TileDataset, collate_uint8

    ds = TileDataset([str(store)])
    x = collate_uint8([ds[i] for i in range(3)])["image"]
    tasks = {"rotation": 1.0, "simclr": {"augment": {"blur_p": 0.0, "scale": [0.5, 1.0]}}}
    cfg = load_config(
        None,
        ["method.name=multitask", f"method.params={{tasks: {tasks}}}", "augment.params={size: 48}"],
    )
    recipe = build_views(cfg)
    assert recipe.n_views == 3
    got = recipe.torch()(x, torch.Generator().manual_seed(5))["views"]
    g = torch.Generator().manual_seed(5)
    ref = build_recipe("rotation", size=48).torch()(x, g)["views"]
    ref += build_recipe("simclr", size=48, blur_p=0.0, scale=(0.5, 1.0)).torch()(x, g)["views"]
    assert len(got) == len(ref) == 3
    for a, b in zip(got, ref, strict=True):
        assert a.shape == (3, 3, 48, 48) and torch.equal(a, b)


def test_lasso_starts_at_the_last_stage_and_learns_a_mixture() -> None:
    tasks = {"rotation": {"params": {"head_hidden_dim": 16}}}
    multi = MultiTask(build_backbone("resnet18"), tasks, lasso=True, lasso_l1=0.01)
    mixture = multi.mixtures[0]
    x = torch.randn(4, 3, 64, 64)
    multi.eval()
    with torch.no_grad():
        torch.testing.assert_close(mixture(x), multi.backbone(x))  # one-hot on the last stage
    multi.train()
    out = multi([x])
    assert float(out["lasso_l1"]) == pytest.approx(1.0)
    torch.testing.assert_close(out["loss"], out["rotation/loss"] + 0.01 * 1.0)
    opt = torch.optim.SGD(multi.parameters(), lr=0.1)
    out["loss"].backward()
    opt.step()
    assert (mixture.alpha.detach()[:-1] != 0).all()  # the other stages now take part
    with pytest.raises(ConfigError, match="forward_taps"):
        MultiTask(build_backbone("vit_tiny"), tasks, lasso=True)


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"tasks": {"rotaton": 1.0}}, "not a method a task can be"),
        ({"tasks": {"multitask": 1.0}}, "not a method a task can be"),
        ({"tasks": {"s4l_rotation": 1.0}}, "trains on labels"),
        ({"tasks": {"mae": 1.0}}, "patch mask"),
        ({"tasks": {"rotation": {"wieght": 1.0}}}, "tasks.rotation.wieght"),
        ({"tasks": {"rotation": {"weight": -1}}}, "weight must be a number >= 0"),
        ({"tasks": {"rotation": {"params": {"head_dimm": 3}}}}, "params.head_dimm"),
        ({"tasks": {}}, "one or more"),
    ],
)
def test_config_errors_name_the_key(params: dict[str, Any], match: str) -> None:
    cfg = load_config(
        None, ["method.name=multitask", f"method.params={params}", "model.backbone=resnet18"]
    )
    with pytest.raises(ConfigError, match=match):
        MultiTask(build_backbone("resnet18"), **cfg.method.params)
    cfg = load_config(
        None,
        [
            "method.name=multitask",
            "method.params={tasks: {rotation: 1}}",
            "augment.recipe=rotation",
        ],
    )
    with pytest.raises(ConfigError, match="drop augment.recipe"):
        build_views(cfg)


def test_resume_is_exact(store: Path, tmp_path: Path) -> None:
    ov = tiny_overrides("multitask", store, tmp_path, steps=3)
    resumed_equals_uninterrupted("multitask", ov, None, tmp_path, total=3, cut=2)
