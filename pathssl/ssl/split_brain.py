"""Split-brain autoencoder: Zhang, Isola, Efros, "Split-Brain Autoencoders: Unsupervised Learning
by Cross-Channel Prediction", CVPR 2017, arXiv:1611.09842. The network is split into two
disjoint halves, each predicting the channels the other sees, as classification over quantised
bins; the representation is both halves' features concatenated. Colour spaces: CIE Lab (L <->
ab, the paper's) and, for H&E, the haematoxylin <-> eosin optical densities of Ruifrok &
Johnston's colour deconvolution (shared with :mod:`pathssl.augment`)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pathssl.models.backbones import Backbone
from pathssl.models.split import SplitConvBackbone, split_channels
from pathssl.ssl.base import METHODS, SSLMethod, collapse_std
from pathssl.ssl.colorization import BinHead, bin_targets, weighted_soft_ce
from pathssl.ssl.colour_bins import SPACES, ab_gamut_bins, dense_features, part_image, uniform_bins

#: the names of the parts in the logs: part 0, part 1
PART_NAMES: dict[str, tuple[str, str]] = {"lab": ("l", "ab"), "hed": ("h", "e")}


@METHODS.register("split_brain")
class SplitBrain(SSLMethod):
    """Split-brain autoencoder on one view ``(B, 3, H, W)`` (normalised like every view).

    The view's channels are split into part 0 and part 1 (``space="lab"``: L and ab;
    ``space="hed"``: haematoxylin and eosin optical density,
    :func:`~pathssl.models.split.split_channels`). With a split trunk
    (:class:`~pathssl.models.split.SplitConvBackbone`, e.g. ``resnet50_split``, the paper's
    architecture; its space is the method's) half ``i`` sees part ``i`` and its stride-32 map
    ``(B, C_i, H/32, W/32)`` -> ``heads[i]`` (:class:`~pathssl.ssl.colorization.BinHead`) ->
    logits ``(B, Q_other, H / target_stride, W / target_stride)`` over the bins of the *other*
    part. With any other backbone (a ResNet, a ViT) one trunk is shared by both directions: it
    sees each part rendered as an RGB image (:func:`~pathssl.ssl.colour_bins.part_image`, the
    two renders in one batch of ``2B``), the nearest thing to the paper's single-network
    baseline that drops channels; the split trunk is the method proper.

    Targets: each part averaged over ``target_stride`` cells and soft-encoded over its bins
    (``neighbours`` nearest, Gaussian sigma half a bin width; Zhang et al. 2016's encoding).
    Bins (the hardness knobs): ab: the in-gamut cells of step ``grid_step``
    (:func:`~pathssl.ssl.colour_bins.ab_gamut_bins`: 10 -> 261, 20 -> 75); L: ``l_bins`` equal
    bins of 0..100; H and E: ``num_bins`` equal bins of ``value_range`` each (OD, natural-log
    units; values outside are clamped).

    Loss: the sum of the two directions' cross-entropies, each the mean over positions
    (:func:`~pathssl.ssl.colorization.weighted_soft_ce`), as the paper sums the halves' losses.
    Logs ``loss_<part>`` per predicted part and ``accuracy`` (hard bins, both directions).

    The views arrive normalised; the method undoes it with the mean/std handed over by
    :meth:`set_input_normalisation`, which also sets the split trunk's (its input encoding,
    saved with the trunk). Views: 1.
    """

    bins0: Tensor
    bins1: Tensor

    def __init__(
        self,
        backbone: Backbone,
        space: str | None = None,
        grid_step: float = 10.0,
        l_bins: int = 50,
        num_bins: int = 32,
        value_range: tuple[float, float] = (0.0, 2.0),
        neighbours: int = 5,
        target_stride: int = 8,
        head_dim: int = 256,
    ) -> None:
        super().__init__(backbone)
        self.n_global_views = 1
        self.split = isinstance(backbone, SplitConvBackbone)
        if isinstance(backbone, SplitConvBackbone):
            if space not in (None, backbone.space):
                raise ValueError(
                    f"split_brain: space {space!r} differs from the split trunk's "
                    f"{backbone.space!r}; drop method.params.space or pick the *_split_hed trunk"
                )
            space = backbone.space
            dims = backbone.half_dims
        else:
            dims = (self.embed_dim, self.embed_dim)
        space = space or "lab"
        if space not in SPACES:
            raise ValueError(f"split_brain: space must be one of {SPACES}, got {space!r}")
        self.space = space
        lo, hi = (float(v) for v in value_range)
        self.value_range = (lo, hi)
        if space == "lab":
            bins0, width0 = uniform_bins(0.0, 100.0, l_bins), 100.0 / l_bins
            bins1, width1 = ab_gamut_bins(grid_step), grid_step
        else:
            bins0 = bins1 = uniform_bins(lo, hi, num_bins)
            width0 = width1 = (hi - lo) / num_bins
        self.register_buffer("bins0", bins0)
        self.register_buffer("bins1", bins1.clone())
        self.sigmas = (width0 / 2, width1 / 2)
        self.neighbours = neighbours
        self.target_stride = target_stride
        # heads[i] reads half i (or the shared trunk on part i) and predicts the other part
        self.heads = nn.ModuleList(
            [BinHead(dims[0], head_dim, len(bins1)), BinHead(dims[1], head_dim, len(bins0))]
        )

    def targets(self, view: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """A normalised view ``(B, 3, H, W)`` -> parts 0 and 1 ``(B, d_i, H, W)`` float32 and
        their soft targets ``(B, Q_i, H / target_stride, W / target_stride)``."""
        with torch.no_grad():
            p0, p1 = split_channels(self.raw_rgb(view), self.space)
            t = [p0, p1]
            if self.space == "hed":
                t = [p.clamp(*self.value_range) for p in t]
            s = self.target_stride
            t0 = bin_targets(t[0], self.bins0, s, self.neighbours, self.sigmas[0])
            t1 = bin_targets(t[1], self.bins1, s, self.neighbours, self.sigmas[1])
        return p0, p1, t0, t1

    def features(self, view: Tensor, p0: Tensor, p1: Tensor) -> tuple[Tensor, Tensor]:
        """The maps that see part 0 and part 1 ``(B, C_i, h, w)``: the split trunk's halves, or
        the shared trunk on the two parts' RGB renders (normalised like the views)."""
        if isinstance(self.backbone, SplitConvBackbone):
            return self.backbone.forward_parts(view)
        with torch.no_grad():
            images = torch.cat([part_image(p0, self.space, 0), part_image(p1, self.space, 1)])
            x = ((images - self.input_mean) / self.input_std).to(view.dtype)
        f0, f1 = dense_features(self.backbone, x).chunk(2)
        return f0, f1

    def forward(self, views: list[Tensor]) -> dict[str, Tensor]:
        self.check_views(views, 1)
        p0, p1, t0, t1 = self.targets(views[0])
        f0, f1 = self.features(views[0], p0, p1)
        size = t0.shape[-2:]
        logits1 = self.heads[0](f0, size)  # part 1 predicted from part 0
        logits0 = self.heads[1](f1, size)  # part 0 predicted from part 1
        loss1 = weighted_soft_ce(logits1, t1, None)
        loss0 = weighted_soft_ce(logits0, t0, None)
        with torch.no_grad():
            hits = torch.cat(
                [
                    (logits1.argmax(1) == t1.argmax(1)).flatten(),
                    (logits0.argmax(1) == t0.argmax(1)).flatten(),
                ]
            )
            pooled = torch.cat([f0.mean((2, 3)), f1.mean((2, 3))], 1)
        name0, name1 = PART_NAMES[self.space]
        return {
            "loss": loss0 + loss1,
            f"loss_{name1}": loss1.detach(),
            f"loss_{name0}": loss0.detach(),
            "accuracy": hits.float().mean(),
            "embed_std": collapse_std(pooled),
        }
