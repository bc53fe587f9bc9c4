"""pathssl: self-supervised learning for computational pathology.

Heavy dependencies (torch, albumentations, monai) are imported lazily by the submodules that need
them, so ``import pathssl`` and the ``pathssl tile`` command stay light.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
