"""pathssl: self-supervised learning for computational pathology.

Heavy dependencies (torch, albumentations, monai) are imported lazily by the submodules that need
them, so ``import pathssl`` and the ``pathssl tile`` command stay light.
"""

from tiling import __version__

__all__ = ["__version__"]
