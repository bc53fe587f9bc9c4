"""Stain normalisation of prediction inputs to the training data's stain statistics.

``ref = fit_reference(training_images, "macenko")`` is fitted once on the training set (a
JSON-safe dict, stored as ``meta["stain_reference"]`` in ``nuclei.pt``);
``normalise = normalizer(ref)`` then takes any ``(H, W, 3)`` uint8 RGB image to it. The methods
are those of :mod:`pathssl.augment`:

* ``macenko`` (Macenko et al. 2009): the H and E optical-density vectors and 99th-percentile
  concentrations of all training pixels pooled (:func:`pathssl.augment.macenko.fit_macenko_od`);
  an input's own stains are fitted per image (per window on slides) and mapped onto them
  (:class:`pathssl.augment.MacenkoNormalize`); an input with too little tissue to fit is
  returned unchanged;
* ``reinhard`` (Reinhard et al. 2001): the pooled per-channel mean and standard deviation of
  the training pixels in CIE L*a*b*, given to each input (:class:`pathssl.augment.
  ReinhardNormalize`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from pathssl.augment.albu import MacenkoNormalize, ReinhardNormalize
from pathssl.augment.macenko import MacenkoStains, fit_macenko_od
from pathssl.augment.reinhard import ReinhardTarget
from pathssl.augment.stain import channel_stats, rgb_to_od, rgb_to_space

METHODS = ("macenko", "reinhard")
Normalizer = Callable[[NDArray[np.uint8]], NDArray[np.uint8]]


def _check_images(images: Sequence[NDArray[np.uint8]]) -> None:
    if not len(images):
        raise ValueError("fit_reference needs at least one training image")
    for i, im in enumerate(images):
        if im.dtype != np.uint8 or im.ndim != 3 or im.shape[2] != 3:
            raise ValueError(f"image {i}: expected (H, W, 3) uint8 RGB, got {im.dtype} {im.shape}")


def fit_reference(
    images: Sequence[NDArray[np.uint8]],
    method: str,
    max_pixels: int = 4_000_000,
    space: str = "lab",
) -> dict[str, Any]:
    """A stain reference fitted on ``images`` (each ``(H, W, 3)`` uint8 RGB) together.

    ``macenko``: ``{"method", "matrix": (2, 3) unit H, E OD rows, "max_conc": (2,), "images",
    "pixels"}``; the pixels of all images are pooled, taking every ``n``-th pixel of each image
    when there are more than ``max_pixels`` in all. ``reinhard``: ``{"method", "space", "mean",
    "std", "images", "pixels"}``, the pooled per-channel statistics of every pixel in ``space``.
    Lists and floats only (JSON-safe)."""
    _check_images(images)
    total = sum(im.shape[0] * im.shape[1] for im in images)
    if method == "macenko":
        step = max(1, int(np.ceil(total / max_pixels)))
        od = np.concatenate([rgb_to_od(im).reshape(-1, 3)[::step] for im in images])
        stains = fit_macenko_od(od)
        return {
            "method": "macenko",
            "matrix": stains.matrix.tolist(),
            "max_conc": stains.max_conc.tolist(),
            "images": len(images),
            "pixels": int(len(od)),
        }
    if method == "reinhard":
        n = np.array([im.shape[0] * im.shape[1] for im in images], np.float64)
        stats = [channel_stats(rgb_to_space(im, space)) for im in images]
        means = np.stack([m for m, _ in stats])  # (N, 3)
        var = np.stack([s**2 for _, s in stats])
        mean = (n[:, None] * means).sum(0) / n.sum()
        pooled = (n[:, None] * (var + means**2)).sum(0) / n.sum() - mean**2
        return {
            "method": "reinhard",
            "space": space,
            "mean": mean.tolist(),
            "std": np.sqrt(np.maximum(pooled, 0.0)).tolist(),
            "images": len(images),
            "pixels": int(total),
        }
    raise ValueError(f"unknown stain normalisation {method!r}; known: {', '.join(METHODS)}")


def normalizer(reference: dict[str, Any]) -> Normalizer:
    """``(H, W, 3)`` uint8 RGB -> the same image normalised to ``reference`` (from
    :func:`fit_reference`, e.g. ``meta["stain_reference"]`` of a ``nuclei.pt``)."""
    method = reference.get("method")
    if method == "macenko":
        stains = MacenkoStains(
            np.asarray(reference["matrix"], np.float64), np.asarray(reference["max_conc"])
        )
        transform: Any = MacenkoNormalize(target_stains=stains)
    elif method == "reinhard":
        target = ReinhardTarget(
            np.asarray(reference["mean"]), np.asarray(reference["std"]), reference["space"]
        )
        transform = ReinhardNormalize(target_stats=target)
    else:
        raise ValueError(f"stain reference method {method!r} is not one of {', '.join(METHODS)}")

    def normalise(image: NDArray[np.uint8]) -> NDArray[np.uint8]:
        return np.asarray(transform(image=image)["image"], np.uint8)

    return normalise
