"""Package structure rules: torch-free tiling, one-way dependencies, small files."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# lower number = lower layer; a module may import only its own layer's package or lower layers
LAYERS: dict[str, int] = {
    "tiling": 0,
    "pathssl.registry": 1,
    "pathssl.config": 1,
    "pathssl.data": 2,
    "pathssl.augment": 3,
    "pathssl.models": 3,
    "pathssl.ssl": 4,
    "pathssl.train": 5,
    "pathssl.eval": 6,  # fine-tuning runs through pathssl.train's loop
    "pathssl.nuclei": 7,  # data, model, training and inference of the nuclei stage
    "pathssl.orl": 8,  # ORL stage 2: object proposals (classical nuclei) and cross-tile pairs
    "pathssl.demo": 9,  # the end-to-end demo, built from the stages' library calls
    "pathssl.commands": 10,
    "pathssl.cli": 10,
}


def _layer_of(module: str) -> tuple[str, int] | None:
    best = None
    for prefix, layer in LAYERS.items():
        if (module == prefix or module.startswith(prefix + ".")) and (
            best is None or len(prefix) > len(best[0])
        ):
            best = (prefix, layer)
    return best


def _modules() -> list[tuple[str, Path]]:
    out = []
    for root in ("tiling", "pathssl"):
        for path in sorted((REPO / root).rglob("*.py")):
            rel = path.relative_to(REPO).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out.append((".".join(parts), path))
    return out


def _imports(path: Path, module: str = "") -> list[str]:
    """Absolute names of everything ``path`` (the module ``module``) imports; relative imports
    are resolved against the module's package."""
    names = []
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.extend(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                if node.module:
                    names.append(node.module)
                continue
            base = package[: len(package) - (node.level - 1)]
            if node.module:
                names.append(".".join([*base, node.module]))
            else:
                names.extend(".".join([*base, a.name]) for a in node.names)
    return names


def test_layers_name_real_packages() -> None:
    missing = [name for name in LAYERS if not _module_path(name)]
    assert not missing, f"LAYERS names packages that do not exist: {missing}"


def _module_path(name: str) -> Path | None:
    base = REPO.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def test_every_package_module_has_a_layer() -> None:
    unplaced = [m for m, _ in _modules() if _layer_of(m) is None and m != "pathssl"]
    assert not unplaced, f"modules outside every layer: {unplaced}"


def test_relative_imports_are_resolved(tmp_path: Path) -> None:
    """``from ..x import y`` counts like ``from pathssl.x import y`` (it used to be skipped)."""
    init = tmp_path / "__init__.py"
    init.write_text(
        "from ..train import loop\nfrom .model import NucleiModel\nfrom . import data\n"
    )
    mod = tmp_path / "predict.py"
    mod.write_text("from ..commands import cli\nfrom .stitch import x\n")
    assert _imports(init, "pathssl.nuclei") == [
        "pathssl.train",
        "pathssl.nuclei.model",
        "pathssl.nuclei.data",
    ]
    assert _imports(mod, "pathssl.nuclei.predict") == ["pathssl.commands", "pathssl.nuclei.stitch"]


def test_dependencies_flow_one_way() -> None:
    bad = []
    for module, path in _modules():
        own = _layer_of(module)
        if own is None:
            continue
        for imported in _imports(path, module):
            other = _layer_of(imported)
            if other is None or other[0] == own[0]:
                continue
            if other[1] >= own[1]:
                bad.append(f"{module} imports {imported} ({own[0]} -> {other[0]})")
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_tiling_never_mentions_torch_or_pathssl() -> None:
    for module, path in _modules():
        if module.split(".")[0] != "tiling":
            continue
        for imported in _imports(path, module):
            root = imported.split(".")[0]
            assert root not in {"torch", "torchvision", "pathssl", "monai", "albumentations"}, (
                f"{module} imports {imported}"
            )


def test_files_stay_readable() -> None:
    long = [
        f"{p.relative_to(REPO)}: {n} lines"
        for _, p in _modules()
        if (n := len(p.read_text().splitlines())) > 500
    ]
    assert not long, "split these files:\n" + "\n".join(long)


@pytest.mark.parametrize(
    "code",
    [
        "import tiling, tiling.batch, tiling.pipeline, tiling.report, tiling.qc, tiling.store",
        "from pathssl.cli import build_parser; build_parser().parse_args(['tile', '--help'])",
    ],
)
def test_tiling_and_tile_command_load_no_torch(code: str) -> None:
    probe = (
        "import sys\n"
        "try:\n"
        f"    exec({code!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'torch', 'torchvision', 'albumentations', 'monai'})\n"
        "print('HEAVY', heavy)\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout, proc.stdout


def test_tile_run_loads_no_torch(tmp_path: Path, cmu_slide: Path) -> None:
    probe = (
        "import sys\n"
        "from pathssl.cli import main\n"
        f"rc = main(['tile', {str(cmu_slide)!r}, '--out', {str(tmp_path)!r}, '--no-progress'])\n"
        "assert rc == 0, rc\n"
        "print('TORCH', 'torch' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "TORCH False" in proc.stdout
