"""pathssl: self-supervised learning for computational pathology.

Heavy dependencies (torch, albumentations, monai) are imported lazily by the submodules that need
them, so ``import pathssl`` and the ``pathssl tile`` command stay light.
"""

import os

__version__ = "0.1.0"

# albumentations asks the network for its latest version on import: hospital networks are often
# closed, where that check only costs a timeout and a warning. Users can still set it to 0.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__all__ = ["__version__"]
