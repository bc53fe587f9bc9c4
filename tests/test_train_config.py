"""Config parsing: unknown or mistyped keys fail with a message naming the key (and the nearest
valid ones); empty or missing stores fail with a clear error; shipped configs parse."""

from __future__ import annotations

from pathlib import Path

import pytest

from pathssl.cli import main
from pathssl.train.build import build_method, build_views
from pathssl.train.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]


def test_unknown_key_names_the_key_and_nearest() -> None:
    with pytest.raises(ConfigError, match=r"'optim\.lrr'; did you mean 'optim\.lr'"):
        load_config(None, ["optim.lrr=0.1"])
    with pytest.raises(ConfigError, match=r"unknown config key 'trian'.*'train'"):
        load_config(None, ["trian.max_steps=3"])


def test_wrong_type_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"data\.batch_size: expected int, got str 'big'"):
        load_config(None, ["data.batch_size=big"])
    with pytest.raises(ConfigError, match=r"train\.compile: expected bool"):
        load_config(None, ["train.compile=1"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  lr: fast\n")
    with pytest.raises(ConfigError, match=rf"^config {bad} line 2: optim\.lr: expected float"):
        load_config(bad)


def test_values_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"optim\.name: 'adam' is not one of"):
        load_config(None, ["optim.name=adam"])
    cfg = load_config(None, ["optim.lr=1", "data.min_tissue=null"])  # int -> float, None ok
    assert cfg.optim.lr == 1.0 and cfg.data.min_tissue is None


def test_method_and_recipe_params_are_checked() -> None:
    cfg = load_config(None, ["method.params={temprature: 0.2}", "model.backbone=resnet18"])
    with pytest.raises(ConfigError, match=r"'method\.params\.temprature'.*'temperature'"):
        build_method(cfg, build_views(cfg))
    cfg = load_config(None, ["augment.params={sise: 64}"])
    with pytest.raises(ConfigError, match=r"'augment\.params\.sise'.*'size'"):
        build_views(cfg)
    cfg = load_config(None, ["method.name=simclrr"])
    with pytest.raises(ConfigError, match=r"did you mean 'simclr'"):
        build_views(cfg)


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "pretrain").glob("*.yaml")))
def test_shipped_configs_parse(path: Path) -> None:
    cfg = load_config(path)
    recipe = build_views(cfg)
    assert recipe.n_views >= 1
    assert cfg.method.name in path.stem or path.stem in ("base", "simclr_resnet18_cpu_demo")


def test_shipped_configs_exist() -> None:
    from pathssl.ssl import METHODS

    names = {p.stem for p in (REPO / "configs" / "pretrain").glob("*.yaml")}
    assert set(METHODS.names()) <= names
    assert "simclr_resnet18_cpu_demo" in names


def test_cli_missing_and_empty_stores(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("model: {backbone: resnet18}\n")

    def pretrain(*args: str) -> tuple[int, str]:
        rc = main(["pretrain", str(config), *args])
        return rc, capsys.readouterr().err

    rc, err = pretrain(f"data.stores=[{tmp_path / 'nope'}]")
    assert rc == 2 and f"tile store path {tmp_path / 'nope'} does not exist" in err
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    rc, err = pretrain(f"data.stores=[{empty_dir}]")
    assert rc == 2 and "no tile stores" in err and str(empty_dir) in err
    rc, err = pretrain()
    assert rc == 2 and "data.stores is empty" in err
    rc, err = pretrain("optim.weight_decy=0.1")
    assert rc == 2 and "'optim.weight_decy'" in err and "weight_decay" in err
