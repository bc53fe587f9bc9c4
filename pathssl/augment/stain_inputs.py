"""The files a view recipe names: RandStainNA statistics, stain-normalisation targets, Macenko
stain vectors. Each is read once per file version (cached by path, size and modification time).

Paths are strings as written in the config. A relative path is resolved against the **current
working directory** of the process (as ``data.stores`` and ``train.out_dir`` are), not against
the config file that names it; errors name the key and the resolved path.

* ``randstain_stats``: a YAML written by ``pathssl stain-stats`` (:class:`StainStats`).
* ``stain_norm_target`` with ``stain_norm: reinhard``: a ``pathssl stain-stats`` YAML (the
  dataset's average per-tile mean and standard deviation, in the file's colour space) or an
  image (its own mean/std in ``stain_norm_space``; Reinhard et al. 2001).
* ``stain_norm_target`` with ``stain_norm: macenko`` and ``macenko_stains``: a YAML
  ``{matrix: [[H], [E]], max_conc: [h, e]}`` (:meth:`MacenkoStains.as_dict`) or an image, whose
  stains are fitted once (Macenko et al. 2009).

Images are any PNG/JPEG/TIFF that OpenCV reads; ``.yaml``/``.yml`` files are statistics.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np

from .macenko import MacenkoStains, fit_macenko
from .randstainna import StainStats
from .reinhard import ReinhardTarget, fit_reinhard
from .stain import SPACES

YAML_SUFFIXES = (".yaml", ".yml")


def resolve(path: str | Path, key: str) -> Path:
    """``path`` (relative: to the working directory) as an absolute path of an existing file;
    ``FileNotFoundError`` naming ``key`` otherwise."""
    p = Path(path).expanduser()
    full = p if p.is_absolute() else Path.cwd() / p
    if not full.is_file():
        raise FileNotFoundError(
            f"{key}: no such file {full} (relative paths are read from the working directory "
            f"{Path.cwd()}); give an existing file"
        )
    return full


def read_rgb(path: str | Path) -> np.ndarray:
    """An image file as an (H, W, 3) uint8 RGB array (:func:`pathssl.data.images.read_rgb`);
    ``ValueError`` if it cannot be read (so a stain input's key is named)."""
    from pathssl.data.images import read_rgb as read

    try:
        return read(path)
    except FileNotFoundError:
        raise ValueError(f"cannot read image {path}: not a PNG/JPEG/TIFF picture") from None


def _version(p: Path) -> tuple[str, int, int]:
    st = p.stat()
    return str(p), st.st_size, st.st_mtime_ns


@functools.lru_cache(maxsize=64)
def _yaml(version: tuple[str, int, int]) -> Any:
    import yaml

    return yaml.safe_load(Path(version[0]).read_text())


@functools.lru_cache(maxsize=16)
def _image(version: tuple[str, int, int]) -> np.ndarray:
    return read_rgb(version[0])


def load_stain_stats(path: str | Path, key: str = "randstain_stats") -> StainStats:
    """RandStainNA statistics from a ``pathssl stain-stats`` YAML."""
    p = resolve(path, key)
    d = _yaml(_version(p))
    if not isinstance(d, dict) or not {"space", "mean", "std"} <= set(d):
        raise ValueError(f"{key}: {p} is not a `pathssl stain-stats` output (space, mean, std)")
    return StainStats.from_dict(d)


def reinhard_target(path: str | Path, space: str, key: str = "stain_norm_target") -> ReinhardTarget:
    """Reinhard target statistics: a stain-stats YAML (its ``mean.avg``/``std.avg``; its space
    must be ``space``) or an image (fitted in ``space``)."""
    if space not in SPACES:
        raise ValueError(f"stain_norm_space: {space!r} is not one of {', '.join(SPACES)}")
    p = resolve(path, key)
    if p.suffix.lower() in YAML_SUFFIXES:
        stats = load_stain_stats(p, key)
        if stats.space != space:
            raise ValueError(
                f"{key}: {p} holds {stats.space} statistics; set stain_norm_space: {stats.space}"
            )
        return ReinhardTarget(stats.mean_avg.copy(), stats.std_avg.copy(), space)
    return fit_reinhard(_image(_version(p)), space)


def macenko_stains(path: str | Path | None, key: str) -> MacenkoStains:
    """Macenko stains from a YAML ``{matrix, max_conc}`` or fitted once to an image; ``None``:
    the usual reference stains (:meth:`MacenkoStains.reference`)."""
    if path is None:
        return MacenkoStains.reference()
    p = resolve(path, key)
    if p.suffix.lower() in YAML_SUFFIXES:
        d = _yaml(_version(p))
        if not isinstance(d, dict) or not {"matrix", "max_conc"} <= set(d):
            raise ValueError(f"{key}: {p} holds no Macenko stains (keys matrix, max_conc)")
        return MacenkoStains.from_dict(d)
    try:
        return fit_macenko(_image(_version(p)))
    except ValueError as exc:
        raise ValueError(f"{key}: {p}: {exc}") from None
