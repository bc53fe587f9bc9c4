"""One kind of view (:class:`ViewSpec`): every parameter of its crop, stain and colour steps.

A view is made in this order, on both backends (the albumentations pipeline of
:meth:`ViewSpec.albu` and the batched torch twin :class:`pathssl.augment.torch_views.BatchView`):

1. stain normalisation of the whole tile to a target (``stain_norm``), deterministic;
2. the crop: a random resized crop (``scale``, ``ratio``), or with ``fov_scale`` > 0 a square
   field of ``round(size * fov_scale)`` tile pixels resampled to ``size`` (area averaging when
   shrinking); the field-of-view views of one recipe share one centre per tile;
3. a dihedral element (``dihedral``);
4. RandStainNA (``randstain_*``), Macenko stain augmentation (``macenko_*``), HED jitter
   (``hed_*``), each with its own probability;
5. brightness / contrast / saturation (``color_p``), Gaussian blur, grayscale, solarisation.

Every step whose probability is 0 (the defaults of the new steps) draws nothing, so recipes
without them keep their exact random streams. Files (statistics, targets) are named by path and
read when the pipeline is built (:mod:`.stain_inputs`: relative to the working directory).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from .stain import SPACES

STAIN_NORMS = ("none", "reinhard", "macenko")
_PROBABILITIES = ("hed_p", "color_p", "blur_p", "gray_p", "solarize_p", "randstain_p", "macenko_p")


@dataclass(frozen=True)
class ViewSpec:
    """One kind of view.

    Crop: ``size`` output side; ``scale`` area fraction range and ``ratio`` aspect range of the
    random resized crop; ``fov_scale`` > 0 replaces it by a field-of-view crop of
    ``round(size * fov_scale)`` tile pixels (view mpp = tile mpp * that side / ``size``; 2.0 = a
    wide field at half resolution, 1.0 = full resolution; the field must fit in the tile).

    Stain: ``stain_norm`` ``none`` | ``reinhard`` (Reinhard et al. 2001, in ``stain_norm_space``)
    | ``macenko`` (Macenko et al. 2009, each tile's stains fitted) to ``stain_norm_target`` (a
    ``pathssl stain-stats`` YAML or an image for Reinhard; a Macenko stains YAML or an image for
    Macenko). ``randstain_p``: RandStainNA (Shen et al. 2022) with statistics
    ``randstain_stats`` (``pathssl stain-stats`` output), ``randstain_std_scale`` and
    ``randstain_gmm``. ``macenko_p``: stain-matrix augmentation on ``macenko_stains`` (None: the
    reference H&E vectors), rows perturbed by N(0, ``macenko_sigma``^2), concentrations scaled
    by U(1 -/+ ``macenko_alpha``) and shifted by U(-/+ ``macenko_beta``). ``hed_alpha`` /
    ``hed_beta``: HED jitter half-widths (Tellez et al. 2019), probability ``hed_p``.

    Colour: ``brightness`` / ``contrast`` / ``saturation`` factor half-widths around 1, with
    ``color_p``; ``blur_sigma`` in output pixels, with ``blur_p``; ``gray_p``, ``solarize_p``.
    """

    size: int = 224
    scale: tuple[float, float] = (0.2, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    dihedral: bool = True
    hed_alpha: float = 0.05
    hed_beta: float = 0.05
    hed_p: float = 0.8
    brightness: float = 0.1
    contrast: float = 0.1
    saturation: float = 0.1
    color_p: float = 0.8
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    gray_p: float = 0.0
    solarize_p: float = 0.0
    fov_scale: float = 0.0
    stain_norm: str = "none"
    stain_norm_target: str | None = None
    stain_norm_space: str = "lab"
    randstain_p: float = 0.0
    randstain_stats: str | None = None
    randstain_std_scale: float = 1.0
    randstain_gmm: bool = False
    macenko_p: float = 0.0
    macenko_stains: str | None = None
    macenko_sigma: float = 0.05
    macenko_alpha: float = 0.1
    macenko_beta: float = 0.05

    def __post_init__(self) -> None:
        def bad(key: str, what: str) -> ValueError:
            return ValueError(f"{key}: {what}, got {getattr(self, key)!r}")

        if self.size < 1:
            raise bad("size", "must be >= 1")
        for key in _PROBABILITIES:
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise bad(key, "a probability must lie in [0, 1]")
        for key in ("hed_alpha", "hed_beta", "macenko_sigma", "macenko_alpha", "macenko_beta"):
            if getattr(self, key) < 0:
                raise bad(key, "a half-width must be >= 0")
        if self.fov_scale < 0:
            raise bad("fov_scale", "must be >= 0 (0: random resized crop)")
        if self.fov_scale > 0 and self.fov_side < 1:
            raise bad("fov_scale", "gives an empty field")
        if self.stain_norm not in STAIN_NORMS:
            raise bad("stain_norm", f"must be one of {', '.join(STAIN_NORMS)}")
        if self.stain_norm != "none" and not self.stain_norm_target:
            raise bad("stain_norm_target", f"stain_norm {self.stain_norm} needs a target file")
        if self.stain_norm_space not in SPACES:
            raise bad("stain_norm_space", f"must be one of {', '.join(SPACES)}")
        if self.randstain_p > 0 and not self.randstain_stats:
            raise bad("randstain_stats", "randstain_p > 0 needs a `pathssl stain-stats` YAML")
        if self.randstain_std_scale <= 0:
            raise bad("randstain_std_scale", "must be > 0")

    @property
    def fov_side(self) -> int:
        """Field-of-view side in tile pixels (``round(size * fov_scale)``; 0 without one)."""
        return round(self.size * self.fov_scale)

    @property
    def norm_key(self) -> tuple[str, str | None, str]:
        """Equal for views that normalise the tile identically (computed once per batch)."""
        return self.stain_norm, self.stain_norm_target, self.stain_norm_space

    # ------------------------------------------------------------------- files, read on build

    def reinhard_target(self) -> Any:
        from .stain_inputs import reinhard_target

        assert self.stain_norm_target is not None
        return reinhard_target(self.stain_norm_target, self.stain_norm_space)

    def macenko_target(self) -> Any:
        from .stain_inputs import macenko_stains

        return macenko_stains(self.stain_norm_target, "stain_norm_target")

    def augment_stains(self) -> Any:
        from .stain_inputs import macenko_stains

        return macenko_stains(self.macenko_stains, "macenko_stains")

    def stain_stats(self) -> Any:
        from .stain_inputs import load_stain_stats

        assert self.randstain_stats is not None
        stats = load_stain_stats(self.randstain_stats)
        if self.randstain_gmm and stats.gmm_weights is None:
            raise ValueError(
                f"randstain_gmm: {self.randstain_stats} has no mixture; run pathssl stain-stats "
                "with --gmm K or set randstain_gmm: false"
            )
        return stats

    def check_inputs(self) -> None:
        """Read every file this view names (an error names the key and the path)."""
        if self.stain_norm == "reinhard":
            self.reinhard_target()
        elif self.stain_norm == "macenko":
            self.macenko_target()
        if self.randstain_p > 0:
            self.stain_stats()
        if self.macenko_p > 0:
            self.augment_stains()

    # -------------------------------------------------------------------------- CPU pipeline

    def albu(self) -> Any:
        """The CPU pipeline: an ``A.Compose`` of albumentations transforms (uint8 in and out),
        saving its parameters (``applied_transforms``: the crop box). A field-of-view view takes
        its recipe's shared centre as ``compose(image=..., fov_centre=(cx, cy))``."""
        import albumentations as A

        from .albu import (
            Dihedral,
            FieldOfViewCrop,
            HEDJitter,
            MacenkoAugment,
            MacenkoNormalize,
            RandStainNA,
            ReinhardNormalize,
        )

        t: list[Any] = []
        if self.stain_norm == "reinhard":
            t.append(ReinhardNormalize(target_stats=self.reinhard_target(), p=1.0))
        elif self.stain_norm == "macenko":
            t.append(MacenkoNormalize(target_stains=self.macenko_target(), p=1.0))
        if self.fov_scale > 0:
            t.append(FieldOfViewCrop(self.fov_side, self.size, p=1.0))
        else:
            t.append(
                A.RandomResizedCrop(
                    size=(self.size, self.size), scale=self.scale, ratio=self.ratio, p=1.0
                )
            )
        if self.dihedral:
            t.append(Dihedral(p=1.0))
        if self.randstain_p > 0:
            t.append(
                RandStainNA(
                    self.stain_stats(),
                    std_scale=self.randstain_std_scale,
                    use_gmm=self.randstain_gmm,
                    p=self.randstain_p,
                )
            )
        if self.macenko_p > 0:
            t.append(
                MacenkoAugment(
                    self.augment_stains(),
                    sigma=self.macenko_sigma,
                    alpha=self.macenko_alpha,
                    beta=self.macenko_beta,
                    p=self.macenko_p,
                )
            )
        if self.hed_p > 0:
            t.append(HEDJitter(alpha=self.hed_alpha, beta=self.hed_beta, p=self.hed_p))
        if self.color_p > 0:
            t.append(
                A.ColorJitter(
                    brightness=self.brightness,
                    contrast=self.contrast,
                    saturation=self.saturation,
                    hue=0.0,
                    p=self.color_p,
                )
            )
        if self.blur_p > 0:
            t.append(A.GaussianBlur(blur_limit=0, sigma_limit=self.blur_sigma, p=self.blur_p))
        if self.gray_p > 0:
            t.append(A.ToGray(p=self.gray_p))
        if self.solarize_p > 0:
            t.append(A.Solarize(threshold_range=(0.5, 0.5), p=self.solarize_p))
        return A.Compose(t, save_applied_params=True)


VIEW_FIELDS = {f.name: f for f in fields(ViewSpec)}
