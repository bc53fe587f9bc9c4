"""Self-supervised methods. Importing this package registers every method in ``METHODS``."""

from pathssl.ssl import (
    barlow,
    byol,
    colorization,
    context,
    dino,
    jigsaw,
    mae,
    maskfeat,
    moco,
    pirl,
    rotation,
    simclr,
    swav,
)
from pathssl.ssl.base import METHODS, SSLMethod

__all__ = [
    "METHODS",
    "SSLMethod",
    "barlow",
    "byol",
    "colorization",
    "context",
    "dino",
    "jigsaw",
    "mae",
    "maskfeat",
    "moco",
    "pirl",
    "rotation",
    "simclr",
    "swav",
]
