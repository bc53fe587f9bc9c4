"""The one config loader (``pathssl.config``): composition from base files, overrides, typed
schemas, one-line errors naming file, line and key, ``--print-config``, and every shipped config
loading through its command's schema."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from pathssl.cli import main
from pathssl.config import ConfigError, compose, dump, load, setting
from pathssl.eval.config import EvalConfig
from pathssl.eval.config import load_config as load_eval
from pathssl.nuclei.config import NucleiConfig
from pathssl.nuclei.config import load_config as load_nuclei
from pathssl.train.config import AugmentConfig, PretrainConfig
from pathssl.train.config import load_config as load_pretrain

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@dataclass
class Inner:
    lr: float = setting(0.1, gt=0.0)
    name: str = setting("sgd", choices=("sgd", "adamw"))
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])


@dataclass
class Outer:
    optim: Inner = field(default_factory=Inner)
    tags: list[str] = field(default_factory=list)
    extra: dict[str, int] = field(default_factory=dict)


# ------------------------------------------------------------------------------- composition


def test_composition_order_and_deep_merge(tmp_path: Path) -> None:
    _write(tmp_path / "a.yaml", "optim: {lr: 1.0, name: sgd}\ntags: [a]\nextra: {x: 1, y: 1}\n")
    _write(tmp_path / "b.yaml", "optim: {lr: 2.0}\nextra: {y: 2}\n")
    top = _write(tmp_path / "top.yaml", "defaults: [a, b.yaml]\nextra: {z: 3}\ntags: [t]\n")
    data, _ = compose(top)
    # b overrides a's lr but keeps a's name (deep merge); lists are replaced; the file wins last
    assert data == {
        "optim": {"lr": 2.0, "name": "sgd"},
        "tags": ["t"],
        "extra": {"x": 1, "y": 2, "z": 3},
    }
    top.write_text("defaults: [b, a]\n")  # order matters: now a's values win
    assert compose(top)[0] == {
        "optim": {"lr": 1.0, "name": "sgd"},
        "tags": ["a"],
        "extra": {"x": 1, "y": 1},
    }
    cfg = load(Outer, top)
    assert cfg == Outer(Inner(lr=1.0, name="sgd"), ["a"], {"x": 1, "y": 1})


def test_defaults_are_relative_to_the_file_and_nest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write(tmp_path / "shared" / "root.yaml", "optim: {lr: 0.5}\n")
    _write(tmp_path / "shared" / "mid.yaml", "defaults: [root]\noptim: {name: adamw}\n")
    top = _write(tmp_path / "runs" / "x" / "top.yaml", "defaults: [../../shared/mid]\n")
    monkeypatch.chdir(tmp_path / "runs")  # not the file's folder: paths are still relative to it
    assert load(Outer, Path("x/top.yaml")).optim == Inner(lr=0.5, name="adamw")
    assert load(Outer, top.resolve()).optim == Inner(lr=0.5, name="adamw")


def test_a_section_entry_mounts_a_file_under_that_key(tmp_path: Path) -> None:
    """A recipe file of configs/augment becomes the `augment` section of a pretrain config."""
    top = _write(
        tmp_path / "p.yaml",
        f"defaults: [augment: {CONFIGS / 'augment' / 'dino'}]\naugment: {{params: {{n_local: 2}}}}\n",
    )
    cfg = load_pretrain(top)
    recipe = yaml.safe_load((CONFIGS / "augment" / "dino.yaml").read_text())
    assert cfg.augment == AugmentConfig(recipe="dino", params={**recipe["params"], "n_local": 2})
    _write(tmp_path / "o.yaml", "lr: 3.0\n")
    nested = _write(tmp_path / "n.yaml", "defaults: [optim: o]\n")
    assert load(Outer, nested).optim.lr == 3.0


def test_defaults_cycle_is_an_error(tmp_path: Path) -> None:
    _write(tmp_path / "a.yaml", "defaults: [b]\n")
    _write(tmp_path / "b.yaml", "defaults: [c]\n")
    _write(tmp_path / "c.yaml", "defaults: [a]\n")
    with pytest.raises(ConfigError, match=r"cycle \(a\.yaml -> b\.yaml -> c\.yaml -> a\.yaml\)"):
        compose(tmp_path / "a.yaml")
    _write(tmp_path / "self.yaml", "defaults: [self]\n")
    with pytest.raises(ConfigError, match="cycle"):
        compose(tmp_path / "self.yaml")


def test_missing_or_bad_defaults_entry(tmp_path: Path) -> None:
    top = _write(tmp_path / "t.yaml", "# c\ndefaults: [nope]\n")
    with pytest.raises(ConfigError) as err:
        compose(top)
    assert (
        str(err.value)
        == f"config {top} line 2: defaults entry 'nope': {tmp_path / 'nope.yaml'} not found"
    )
    top.write_text("defaults: [[a, b]]\n")
    with pytest.raises(ConfigError, match="line 1: defaults entry"):
        compose(top)


# ------------------------------------------------------------------------------------ errors


def test_unknown_key_names_file_line_and_nearest(tmp_path: Path) -> None:
    base = _write(tmp_path / "base.yaml", "optim:\n  lr: 0.1\n\n  nmae: sgd\n")
    top = _write(tmp_path / "top.yaml", "defaults: [base]\ntags: [a]\n")
    with pytest.raises(ConfigError) as err:
        load(Outer, top)
    # the key sits in the base file: its file and line are named, not the top file's
    assert (
        str(err.value)
        == f"config {base} line 4: unknown config key 'optim.nmae'; did you mean 'optim.name'?"
    )
    assert err.value.key == "optim.nmae"
    top.write_text("defaults: [base]\noptim: {nmae: adamw}\n")  # the later file set it last
    with pytest.raises(
        ConfigError, match=rf"^config {top} line 2: unknown config key 'optim\.nmae'"
    ):
        load(Outer, top)
    _write(tmp_path / "far.yaml", "zzz: 1\n")
    with pytest.raises(
        ConfigError, match=r"line 1: unknown config key 'zzz' \(valid keys: optim, tags, extra\)"
    ):
        load(Outer, tmp_path / "far.yaml")


def test_malformed_yaml_is_one_line_with_line_number(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = _write(tmp_path / "bad.yaml", "optim:\n  lr: 0.1\n  name: [sgd\ntrain: {}\n")
    with pytest.raises(ConfigError) as err:
        load(Outer, bad)
    msg = str(err.value)
    assert msg.startswith(f"config {bad} line 4: ") and "\n" not in msg
    tabs = _write(tmp_path / "tabs.yaml", "optim:\n\tlr: 0.1\n")
    with pytest.raises(ConfigError, match=rf"^config {tabs} line 2: .*cannot start any token"):
        load(Outer, tabs)
    for cmd in (["pretrain", str(bad)], ["eval", str(bad)], ["nuclei", "train", str(bad)]):
        assert main(cmd) == 2
        err_lines = capsys.readouterr().err.strip().splitlines()
        assert len(err_lines) == 1 and f"config {bad} line 4:" in err_lines[0], err_lines
    top = _write(tmp_path / "list.yaml", "- a\n- b\n")
    with pytest.raises(ConfigError, match="line 1: the top level must be a mapping"):
        load(Outer, top)


def test_wrong_type_and_out_of_range_name_the_line(tmp_path: Path) -> None:
    cfg = _write(tmp_path / "c.yaml", "tags: [a]\noptim:\n  name: sgd\n  lr: fast\n")
    with pytest.raises(ConfigError) as err:
        load(Outer, cfg)
    assert str(err.value) == f"config {cfg} line 4: optim.lr: expected float, got str 'fast'"
    cfg.write_text("optim:\n  betas: [0.9, high]\n")
    with pytest.raises(ConfigError, match=r"line 2: optim\.betas\[1\]: expected float"):
        load(Outer, cfg)
    cfg.write_text("optim:\n  lr: 0\n")
    with pytest.raises(ConfigError) as err:
        load(Outer, cfg)
    assert str(err.value) == f"config {cfg} line 2: optim.lr must be > 0, got 0.0"
    cfg.write_text("optim:\n  name: adam\n")
    with pytest.raises(
        ConfigError,
        match=r"line 2: optim\.name: 'adam' is not one of sgd, adamw; did you mean 'adamw'",
    ):
        load(Outer, cfg)
    # the shipped schemas: a range in pretraining's optim, a setting() rule in eval's
    with pytest.raises(ConfigError, match=r"^override 'optim\.lr=-1': optim\.lr must be > 0"):
        load_pretrain(CONFIGS / "pretrain" / "simclr.yaml", ["optim.lr=-1"])
    ev = _write(
        tmp_path / "e.yaml",
        "defaults: ["
        + str(CONFIGS / "eval" / "qc_tissue_resnet18")
        + "]\nprotocols:\n  knn: {k: 0}\n",
    )
    with pytest.raises(
        ConfigError, match=rf"^config {ev} line 3: protocols\.knn\.k must be >= 1, got 0$"
    ):
        load_eval(ev)


def test_eval_device_is_checked() -> None:
    qc = CONFIGS / "eval" / "qc_tissue_resnet18.yaml"
    with pytest.raises(
        ConfigError, match=r"train\.device: 'gpu' is not one of auto, cpu, cuda, cuda:N"
    ):
        load_eval(qc, ["train.device=gpu"])
    assert load_eval(qc, ["train.device=cuda:1"]).train.device == "cuda:1"


def test_renamed_eval_keys_say_the_new_name(tmp_path: Path) -> None:
    old = _write(
        tmp_path / "old.yaml",
        "data: {source: {format: folder, root: x}}\nencoder: {backbone: resnet18}\n",
    )
    with pytest.raises(
        ConfigError, match=r"line 2: config key 'encoder' is now 'model'; rename it"
    ):
        load_eval(old)
    with pytest.raises(ConfigError, match=r"data\.source\.root is required for format 'folder'"):
        load_eval(None, ["data.source={format: folder}", "model.backbone=resnet18"])


# --------------------------------------------------------------------------------- overrides


def test_overrides_apply_after_composition(tmp_path: Path) -> None:
    _write(tmp_path / "base.yaml", "optim: {lr: 1.0, name: adamw}\nextra: {a: 1}\n")
    top = _write(tmp_path / "top.yaml", "defaults: [base]\noptim: {lr: 2.0}\n")
    cfg = load(Outer, top, ["optim.lr=3", "extra.b=2", "tags=[x, y]"])
    assert cfg == Outer(Inner(lr=3.0, name="adamw"), ["x", "y"], {"a": 1, "b": 2})
    with pytest.raises(
        ConfigError,
        match=r"^override 'optim\.lrr=3': unknown config key 'optim\.lrr'; did you mean 'optim\.lr'\?$",
    ):
        load(Outer, top, ["optim.lrr=3"])
    with pytest.raises(ConfigError, match=r"^override 'optim\.lr=x': optim\.lr: expected float"):
        load(Outer, top, ["optim.lr=x"])
    with pytest.raises(ConfigError, match="not of the form key=value"):
        load(Outer, top, ["optim.lr"])
    # an override replacing a section: its keys are blamed on the override, not on the file
    with pytest.raises(
        ConfigError, match=r"^override 'optim=\{lr: 1, nme: sgd\}': unknown config key 'optim\.nme'"
    ):
        load(Outer, top, ["optim={lr: 1, nme: sgd}"])


# ------------------------------------------------------------------------------ print-config


def _printed(capsys: pytest.CaptureFixture[str], argv: list[str], tmp_path: Path) -> Path:
    assert main(argv) == 0
    out = capsys.readouterr().out
    return _write(tmp_path / f"printed_{len(list(tmp_path.iterdir()))}.yaml", out)


def test_print_config_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The printed YAML loads back to the same config, overrides included, and no run starts."""
    run = tmp_path / "run"
    pre = CONFIGS / "pretrain" / "dino.yaml"
    ov = ["optim.lr=0.01", f"train.out_dir={run}", "augment.params.n_local=2"]
    printed = _printed(capsys, ["pretrain", str(pre), *ov, "--print-config"], tmp_path)
    again = load_pretrain(printed)
    assert again == load_pretrain(pre, ov)
    assert (
        again.optim.lr == 0.01
        and again.augment.recipe == "dino"
        and again.augment.params["n_local"] == 2
    )
    assert again.data.batch_size == 256  # from base.yaml

    nuc = CONFIGS / "nuclei" / "hgsc_resnet18_cpu.yaml"
    for sub in ("train", "label-efficiency"):
        printed = _printed(
            capsys, ["nuclei", sub, str(nuc), f"train.out_dir={run}", "--print-config"], tmp_path
        )
        assert load(NucleiConfig, printed) == load_nuclei(nuc, [f"train.out_dir={run}"])

    ev = CONFIGS / "eval" / "qc_tissue_resnet18.yaml"
    printed = _printed(
        capsys,
        [
            "eval",
            str(ev),
            "protocols.knn.k=7",
            "--out",
            str(run),
            "--device",
            "cpu",
            "--print-config",
        ],
        tmp_path,
    )
    cfg = load_eval(printed)
    assert cfg == load_eval(ev, ["protocols.knn.k=7", f"train.out_dir={run}", "train.device=cpu"])
    assert cfg.protocols.knn is not None and cfg.protocols.knn.k == 7
    assert cfg.train.out_dir == str(run) and cfg.train.device == "cpu"
    assert not run.exists()  # nothing ran


def test_eval_without_protocols_runs_linear_and_knn() -> None:
    cfg = load_eval(None, ["data.source={format: folder, root: x}", "model.backbone=resnet18"])
    p = cfg.protocols
    assert p.linear is not None and p.knn is not None and p.fewshot is None and p.finetune is None
    cfg = load_eval(
        None,
        ["data.source={format: folder, root: x}", "model.backbone=resnet18", "protocols.knn={}"],
    )
    assert cfg.protocols.linear is None and cfg.protocols.knn is not None


# ---------------------------------------------------------------------------- shipped configs


SHIPPED = sorted(CONFIGS.rglob("*.yaml"))


def test_every_config_folder_has_a_loader() -> None:
    assert {p.parent.name for p in SHIPPED} == {"augment", "eval", "nuclei", "pretrain"}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_shipped_config_loads_through_its_schema(path: Path, tmp_path: Path) -> None:
    kind = path.parent.name
    if kind == "pretrain":
        cfg = load_pretrain(path)
        assert load_pretrain(_write(tmp_path / path.name, dump(cfg))) == cfg
    elif kind == "nuclei":
        ncfg = load_nuclei(path)
        assert load(NucleiConfig, path) == ncfg  # the generic loader reads nuclei configs too
    elif kind == "eval":
        from pathssl.eval.config import is_benchmark, load_benchmark_config

        if is_benchmark(path):  # encoders x tasks (pathssl.eval.benchmark)
            bcfg = load_benchmark_config(path)
            assert bcfg.encoders and bcfg.tasks
            return
        ecfg = load_eval(path)
        assert isinstance(ecfg, EvalConfig) and ecfg.data.source is not None
    else:  # a view recipe: loads as the `augment` section of a pretraining config
        from pathssl.augment import build_recipe, load_recipe

        top = _write(tmp_path / "p.yaml", f"defaults: [augment: {path}]\n")
        pcfg = load(PretrainConfig, top)
        assert build_recipe(str(pcfg.augment.recipe), **pcfg.augment.params) == load_recipe(path)


def test_pretrain_configs_compose_from_base_and_their_recipe() -> None:
    """Each method file holds only what differs: the shared blocks come from base.yaml, the
    views from configs/augment, and the composed config is what the file used to spell out."""
    base = yaml.safe_load((CONFIGS / "pretrain" / "base.yaml").read_text())
    for path in sorted((CONFIGS / "pretrain").glob("*.yaml")):
        own = yaml.safe_load(path.read_text())
        if path.stem == "base":
            continue
        assert "defaults" in own and "stores" not in own.get("data", {}) or "demo" in path.stem
        cfg = load_pretrain(path)
        recipe_files = [d["augment"] for d in own["defaults"] if isinstance(d, dict)]
        if not recipe_files:  # multi-task: each task composes its own recipe
            parents = [d for d in own["defaults"] if isinstance(d, str) and d != "base"]
            if parents:  # a variant of another method file (checked as that file)
                assert all((path.parent / f"{d}.yaml").is_file() for d in parents)
            else:
                assert cfg.method.name == "multitask" and not cfg.augment.recipe
            continue
        recipe = yaml.safe_load((path.parent / f"{recipe_files[0]}.yaml").read_text())
        assert cfg.augment.recipe == recipe["recipe"]
        if "demo" not in path.stem:
            assert (
                cfg.data.stores == base["data"]["stores"]
                and cfg.train.max_steps == base["train"]["max_steps"]
            )
            own_params = own.get("augment", {}).get("params", {})
            assert cfg.augment.params == {**recipe["params"], **own_params}
            assert cfg.data.batch_size == own.get("data", {}).get(
                "batch_size", base["data"]["batch_size"]
            )
