"""Macenko et al. (2009) stain vectors: fitting, normalisation and stain-matrix augmentation.

Macenko, M. et al. "A method for normalizing histology slides for quantitative analysis."
ISBI 2009. The stain OD vectors are the directions at the ``alpha`` and ``100 - alpha``
percentiles of the angle of tissue-pixel ODs projected on the plane of the two largest
principal components.

Both normalisation and augmentation are OD-space affine maps applied by the fused kernel
:func:`pathssl.augment.stain.apply_od_affine`:

* normalise: ``C = OD @ pinv(S_src)`` (least squares on 2 stains), ``C *= maxC_tgt / maxC_src``,
  ``OD' = C @ S_tgt``;
* augment: ``OD' = OD @ inv(S3) @ diag(alpha) @ S3' + beta @ S3'`` where ``S3`` is the fitted (or
  reference) H, E pair completed with their normalised cross product as a residual row, and
  ``S3'`` the same with perturbed H and E rows. Identity parameters give the identity map.

The target is fitted once (:func:`fit_macenko`); augmentation uses fixed stain vectors and never
re-fits per tile.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .stain import rgb_to_od

#: Reference H&E OD vectors and 99th-percentile concentrations commonly used with Macenko's
#: method (e.g. in the staintools/torchstain ports of the original MATLAB code).
REFERENCE_STAINS = np.array([[0.5626, 0.7201, 0.4062], [0.2159, 0.8012, 0.5581]])
REFERENCE_MAX_CONC = np.array([1.9705, 1.0308])


@dataclass(frozen=True)
class MacenkoStains:
    """Fitted stains: ``matrix`` (2, 3) unit H and E OD rows; ``max_conc`` (2,) 99th percentiles."""

    matrix: np.ndarray
    max_conc: np.ndarray

    @classmethod
    def reference(cls) -> MacenkoStains:
        return cls(
            REFERENCE_STAINS / np.linalg.norm(REFERENCE_STAINS, axis=1, keepdims=True),
            REFERENCE_MAX_CONC.copy(),
        )

    def as_dict(self) -> dict[str, list[list[float]] | list[float]]:
        return {"matrix": self.matrix.tolist(), "max_conc": self.max_conc.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MacenkoStains:
        """Inverse of :meth:`as_dict`; rows are renormalised to unit length."""
        m = np.asarray(d["matrix"], dtype=np.float64).reshape(2, 3)
        c = np.asarray(d["max_conc"], dtype=np.float64).reshape(2)
        if not (np.isfinite(m).all() and np.isfinite(c).all() and (c > 0).all()):
            raise ValueError("Macenko stains need a finite (2, 3) matrix and positive max_conc")
        return cls(m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12), c)


def fit_macenko_od(
    od: np.ndarray, beta: float = 0.15, alpha: float = 1.0, min_pixels: int = 64
) -> MacenkoStains:
    """Fit Macenko stains to (N, 3) optical densities (natural log, white 255).

    Args:
        od: (N, 3) OD row vectors.
        beta: pixels with any channel OD below ``beta`` are background and ignored.
        alpha: angle percentile (robust extremes).
        min_pixels: fewer tissue pixels than this raises ``ValueError``.
    """
    od = np.asarray(od, dtype=np.float64).reshape(-1, 3)
    tissue = od[(od > beta).all(axis=1)]
    if len(tissue) < min_pixels:
        raise ValueError(f"only {len(tissue)} tissue pixels (OD > {beta}); cannot fit stains")
    _, vecs = np.linalg.eigh(np.cov(tissue.T))
    plane = vecs[:, 1:3]  # two largest principal directions, (3, 2)
    plane = plane * np.where(plane.sum(axis=0) < 0, -1.0, 1.0)
    proj = tissue @ plane
    phi = np.arctan2(proj[:, 1], proj[:, 0])
    lo, hi = np.percentile(phi, [alpha, 100.0 - alpha])
    v1 = plane @ np.array([np.cos(lo), np.sin(lo)])
    v2 = plane @ np.array([np.cos(hi), np.sin(hi)])
    # haematoxylin absorbs relatively more red: larger first component
    he = np.stack([v1, v2] if v1[0] > v2[0] else [v2, v1])
    he = he * np.where(he.sum(axis=1, keepdims=True) < 0, -1.0, 1.0)
    he = he / np.linalg.norm(he, axis=1, keepdims=True)
    conc = od @ np.linalg.pinv(he)  # (N, 2)
    max_conc = np.percentile(conc, 99, axis=0)
    return MacenkoStains(he, np.maximum(max_conc, 1e-6))


def fit_macenko(img: np.ndarray, beta: float = 0.15, alpha: float = 1.0) -> MacenkoStains:
    """Fit Macenko stains to one (H, W, 3) uint8 RGB image (e.g. the normalisation target)."""
    return fit_macenko_od(rgb_to_od(img).reshape(-1, 3), beta=beta, alpha=alpha)


def normalize_affine(source: MacenkoStains, target: MacenkoStains) -> tuple[np.ndarray, np.ndarray]:
    """OD affine map (A (3, 3), b (3,)) taking ``source`` stains to ``target`` stains."""
    ratio = target.max_conc / source.max_conc
    A = np.linalg.pinv(source.matrix) @ np.diag(ratio) @ target.matrix
    return A, np.zeros(3)


def complete_basis(he: np.ndarray) -> np.ndarray:
    """(..., 2, 3) H, E rows -> (..., 3, 3) with the normalised cross product as a residual
    third row."""
    r = np.cross(he[..., 0, :], he[..., 1, :])
    r = r / np.maximum(np.linalg.norm(r, axis=-1, keepdims=True), 1e-12)
    return np.concatenate([he, r[..., None, :]], axis=-2)


def perturb_stains(he: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """Add (..., 2, 3) ``noise`` to (2, 3) unit stain rows and renormalise (kept
    non-negative): (..., 2, 3)."""
    p = np.maximum(he + noise, 1e-3)
    return p / np.linalg.norm(p, axis=-1, keepdims=True)


def augment_affine(
    he: np.ndarray, noise: np.ndarray, alpha: np.ndarray, beta: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Macenko stain-matrix augmentation as an OD affine map, for one parameter draw or a batch
    of them (both backends build their maps here).

    Args:
        he: (2, 3) fixed unit H and E OD rows (fitted once, or :data:`REFERENCE_STAINS`).
        noise: (..., 2, 3) additive perturbation of the stain rows (0 = unchanged).
        alpha: (..., 2) concentration scales; beta: (..., 2) concentration shifts (OD units).

    Returns:
        ``A`` (..., 3, 3), ``b`` (..., 3) in float64.
    """
    s3 = complete_basis(np.asarray(he, dtype=np.float64))
    pert = perturb_stains(s3[:2], np.asarray(noise, dtype=np.float64))
    p3 = np.concatenate([pert, np.broadcast_to(s3[2:], (*pert.shape[:-2], 1, 3))], axis=-2)
    alpha, beta = np.asarray(alpha, dtype=np.float64), np.asarray(beta, dtype=np.float64)
    a3 = np.concatenate([alpha, np.ones((*alpha.shape[:-1], 1))], axis=-1)
    b3 = np.concatenate([beta, np.zeros((*beta.shape[:-1], 1))], axis=-1)
    A = np.linalg.inv(s3) @ (a3[..., :, None] * np.eye(3)) @ p3
    return A, (b3[..., None, :] @ p3)[..., 0, :]
