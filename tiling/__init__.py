"""tiling: whole-slide images -> verified zarr tile stores at a physical resolution.

This package never imports torch, so CPU tiling nodes need none of the deep-learning stack.

Main entry points::

    from tiling import tile_slides, open_store
    results = tile_slides(["slides/"], "tiles/", mpp=0.5, size=224)
    store = open_store("tiles/CMU-1.zarr")
    tile = store[0]            # (224, 224, 3) uint8, O(1) random access
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any


def _version() -> str:
    """The pathssl distribution's version (pathssl owns it; tiling ships inside it)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pathssl")
    except PackageNotFoundError:  # a source tree that was never installed
        return "0+unknown"


__version__ = _version()

__all__ = [
    "__version__",
    "open_store",
    "TileStore",
    "tile_slides",
    "tile_slide",
    "TileOptions",
    "SlideError",
]

_LAZY = {
    "open_store": "tiling.store",
    "TileStore": "tiling.store",
    "tile_slides": "tiling.batch",
    "tile_slide": "tiling.batch",
    "TileOptions": "tiling.pipeline",
    "SlideError": "tiling.errors",
}

if TYPE_CHECKING:  # pragma: no cover
    from tiling.batch import tile_slide, tile_slides
    from tiling.errors import SlideError
    from tiling.pipeline import TileOptions
    from tiling.store import TileStore, open_store


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tiling' has no attribute {name!r}")
