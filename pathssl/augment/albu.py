"""albumentations (2.0.8) transforms for pathology: stain jitter, normalisation, dihedral flips.

Every transform draws its random parameters in ``get_params`` from the generators albumentations
seeds (``A.Compose(..., seed=...)``), and applies them with the same kernels as the batched
torch twins in :mod:`pathssl.augment.torch_ops`, so both backends give the same output for the
same parameters (within +/-2 grey levels). Images are (H, W, 3) uint8 RGB.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import albumentations as A
import numpy as np

from .geometry import crop_resize, dihedral, fov_centre, fov_origin
from .macenko import MacenkoStains, augment_affine, fit_macenko, normalize_affine
from .randstainna import StainStats, sample_templates
from .reinhard import ReinhardTarget, fit_reinhard, reinhard_normalize
from .stain import SPACES, apply_od_affine, hed_jitter, restandardise


class HEDJitter(A.ImageOnlyTransform):
    """HED stain jitter (Tellez et al. 2019, "Whole-slide mitosis detection in H&E breast
    histology using PHH3 as a reference to train distilled stain-invariant CNNs", IEEE TMI).

    Per stain channel ``c`` in Ruifrok-Johnston HED space (OD units),
    ``hed_c' = hed_c * a_c + b_c`` with ``a_c ~ U(1 - alpha, 1 + alpha)`` and
    ``b_c ~ U(-beta, beta)``. Runs as one fused OD-space affine map
    (:func:`pathssl.augment.stain.apply_od_affine`).
    """

    def __init__(self, alpha: float = 0.05, beta: float = 0.05, p: float = 0.5) -> None:
        super().__init__(p=p)
        if alpha < 0 or beta < 0:
            raise ValueError("alpha and beta are half-widths and must be >= 0")
        self.alpha = float(alpha)
        self.beta = float(beta)

    def get_params(self) -> dict[str, Any]:
        g = self.random_generator
        return {
            "alpha": 1.0 + g.uniform(-self.alpha, self.alpha, 3),
            "beta": g.uniform(-self.beta, self.beta, 3),
        }

    def apply(self, img: np.ndarray, *args: Any, **params: Any) -> np.ndarray:
        return hed_jitter(img, params["alpha"], params["beta"])


class RandStainNA(A.ImageOnlyTransform):
    """RandStainNA (Shen et al. 2022, MICCAI): re-standardise a tile to a random colour template.

    Args:
        stats: dataset statistics (:class:`StainStats`, its dict, or a YAML path written by
            ``pathssl stain-stats``); their colour space is used.
        std_scale: widens (> 1) or narrows (< 1) the template distributions.
        use_gmm: sample templates from the fitted Gaussian mixture (the GMM variant).
    """

    def __init__(
        self,
        stats: StainStats | dict[str, Any] | str | Path,
        std_scale: float = 1.0,
        use_gmm: bool = False,
        p: float = 0.5,
    ) -> None:
        super().__init__(p=p)
        if isinstance(stats, (str, Path)):
            stats = StainStats.load(stats)
        elif isinstance(stats, dict):
            stats = StainStats.from_dict(stats)
        self.stats = stats
        self.std_scale = float(std_scale)
        self.use_gmm = bool(use_gmm)

    def get_params(self) -> dict[str, Any]:
        mean, std = sample_templates(
            self.stats, self.random_generator, 1, self.std_scale, self.use_gmm
        )
        return {"mean": mean[0], "std": std[0]}

    def apply(self, img: np.ndarray, *args: Any, **params: Any) -> np.ndarray:
        return restandardise(img, self.stats.space, params["mean"], params["std"])


class MacenkoNormalize(A.ImageOnlyTransform):
    """Macenko et al. (2009) normalisation to a target fitted once at construction.

    Args:
        target: (H, W, 3) uint8 RGB target image, or ``target_stains`` already fitted.
        source_stains: fixed source stains (e.g. fitted once per slide); when None each image's
            own stains are estimated (Macenko's method needs them); an image with too little
            tissue to fit is returned unchanged.
    """

    def __init__(
        self,
        target: np.ndarray | None = None,
        target_stains: MacenkoStains | None = None,
        source_stains: MacenkoStains | None = None,
        p: float = 1.0,
    ) -> None:
        super().__init__(p=p)
        if target_stains is None:
            if target is None:
                raise ValueError("give a target image or target_stains")
            target_stains = fit_macenko(target)
        self.target_stains = target_stains
        self.source_stains = source_stains

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("target_stains", "source_stains")

    def apply(self, img: np.ndarray, *args: Any, **params: Any) -> np.ndarray:
        src = self.source_stains
        if src is None:
            try:
                src = fit_macenko(img)
            except ValueError:
                return img
        return apply_od_affine(img, *normalize_affine(src, self.target_stains))


class ReinhardNormalize(A.ImageOnlyTransform):
    """Reinhard et al. (2001) colour transfer to a target image's per-channel mean/std (LAB), or
    to given ``target_stats`` (e.g. a dataset's average, then ``space`` is theirs)."""

    def __init__(
        self,
        target: np.ndarray | None = None,
        space: str = "lab",
        p: float = 1.0,
        target_stats: ReinhardTarget | None = None,
    ) -> None:
        super().__init__(p=p)
        if target_stats is None:
            if space not in SPACES:
                raise ValueError(f"unknown colour space {space!r}; known: {', '.join(SPACES)}")
            if target is None:
                raise ValueError("give a target image or target_stats")
            target_stats = fit_reinhard(target, space)
        self.target_stats = target_stats
        self.space = target_stats.space

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("space",)

    def apply(self, img: np.ndarray, *args: Any, **params: Any) -> np.ndarray:
        return reinhard_normalize(img, self.target_stats)


class MacenkoAugment(A.ImageOnlyTransform):
    """Macenko stain-matrix perturbation as augmentation, with stains fixed once.

    The image is decomposed on fixed H, E (+ residual) vectors (``stains``, default the usual
    Macenko reference; fit your own once with :func:`pathssl.augment.fit_macenko`), the H and E
    vectors are perturbed by ``N(0, sigma^2)`` per component and renormalised, and the
    concentrations scaled by ``U(1 - alpha, 1 + alpha)`` and shifted by ``U(-beta, beta)``.
    """

    def __init__(
        self,
        stains: MacenkoStains | None = None,
        sigma: float = 0.05,
        alpha: float = 0.1,
        beta: float = 0.05,
        p: float = 0.5,
    ) -> None:
        super().__init__(p=p)
        self.stains = stains if stains is not None else MacenkoStains.reference()
        self.sigma = float(sigma)
        self.alpha = float(alpha)
        self.beta = float(beta)

    def get_params(self) -> dict[str, Any]:
        g = self.random_generator
        return {
            "noise": g.normal(0.0, self.sigma, (2, 3)),
            "alpha": 1.0 + g.uniform(-self.alpha, self.alpha, 2),
            "beta": g.uniform(-self.beta, self.beta, 2),
        }

    def apply(self, img: np.ndarray, *args: Any, **params: Any) -> np.ndarray:
        A_, b = augment_affine(self.stains.matrix, params["noise"], params["alpha"], params["beta"])
        return apply_od_affine(img, A_, b)


class FieldOfViewCrop(A.DualTransform):
    """A square field of ``side`` input pixels resampled to ``size`` (area averaging when
    shrinking, bilinear when enlarging; masks nearest): a view at ``side / size`` times the
    input's micrometres per pixel. The multi-field-of-view views of a recipe share one centre,
    passed as ``compose(image=..., fov_centre=(cx, cy))`` in input pixels; without it the centre
    is drawn uniformly where the field fits. Params: ``crop_coords`` (x0, y0, x1, y1).
    Batched twin: :func:`pathssl.augment.torch_geometry.crop_squares` on
    :func:`~pathssl.augment.torch_geometry.fov_boxes`."""

    def __init__(self, side: int, size: int, p: float = 1.0) -> None:
        super().__init__(p=p)
        if side < 1 or size < 1:
            raise ValueError(f"field side {side} and view size {size} must be >= 1")
        self.side, self.size = int(side), int(size)

    def get_params_dependent_on_data(
        self, params: dict[str, Any], data: dict[str, Any]
    ) -> dict[str, Any]:
        h, w = params["shape"][:2]
        if self.side > min(h, w):
            raise ValueError(f"a {self.side} px field of view does not fit a {w}x{h} tile")
        centre = data.get("fov_centre")
        if centre is None:
            u = self.random_generator.uniform(size=2)
            centre = (fov_centre(u[0], self.side, w), fov_centre(u[1], self.side, h))
        x0, y0 = fov_origin(centre[0], self.side, w), fov_origin(centre[1], self.side, h)
        return {"crop_coords": (x0, y0, x0 + self.side, y0 + self.side)}

    def apply(self, img: np.ndarray, *args: Any, **params: Any) -> np.ndarray:
        x0, y0 = params["crop_coords"][:2]
        return crop_resize(img, x0, y0, self.side, self.size, nearest=False)

    def apply_to_mask(self, mask: np.ndarray, *args: Any, **params: Any) -> np.ndarray:
        x0, y0 = params["crop_coords"][:2]
        return crop_resize(mask, x0, y0, self.side, self.size, nearest=True)


class Dihedral(A.DualTransform):
    """One of the 8 dihedral transforms (quarter turns x horizontal flip), uniformly drawn.

    The same element is applied to the image and to its masks (instance/type maps).
    """

    def __init__(self, p: float = 1.0) -> None:
        super().__init__(p=p)

    def get_params(self) -> dict[str, Any]:
        return {"k": int(self.random_generator.integers(0, 8))}

    def apply(self, img: np.ndarray, *args: Any, **params: Any) -> np.ndarray:
        return dihedral(img, params["k"])

    def apply_to_mask(self, mask: np.ndarray, *args: Any, **params: Any) -> np.ndarray:
        return dihedral(mask, params["k"])

    def apply_to_images(self, images: np.ndarray, *args: Any, **params: Any) -> np.ndarray:
        return np.stack([dihedral(i, params["k"]) for i in images])
