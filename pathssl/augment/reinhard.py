"""Reinhard et al. (2001) colour transfer as stain normalisation.

Reinhard, E. et al. "Color transfer between images." IEEE CG&A 21(5), 2001. Each channel of the
source in a decorrelated colour space is standardised and given the target's mean and standard
deviation. We use CIE L*a*b* (as most pathology ports do) by default; ``hsv`` and ``hed`` share
the same code path (:func:`pathssl.augment.stain.restandardise`). The target statistics are
computed once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .stain import SPACES, channel_stats, restandardise, rgb_to_space


@dataclass(frozen=True)
class ReinhardTarget:
    """Target statistics: ``mean`` and ``std``, each (3,), in colour ``space``."""

    mean: np.ndarray
    std: np.ndarray
    space: str = "lab"


def fit_reinhard(img: np.ndarray, space: str = "lab") -> ReinhardTarget:
    """Per-channel mean/std of one (H, W, 3) uint8 RGB target image in ``space``."""
    if space not in SPACES:
        raise ValueError(f"unknown colour space {space!r}; known: {', '.join(SPACES)}")
    mean, std = channel_stats(rgb_to_space(img, space))
    return ReinhardTarget(mean, std, space)


def reinhard_normalize(img: np.ndarray, target: ReinhardTarget) -> np.ndarray:
    """Normalise one (H, W, 3) uint8 RGB image to ``target``; returns (H, W, 3) uint8."""
    return restandardise(img, target.space, target.mean, target.std)
