"""Colorization: Zhang, Isola, Efros, "Colorful Image Colorization", ECCV 2016, arXiv:1603.08511;
the number of colour bins as a hardness knob: Goyal, Mahajan, Gupta, Misra, "Scaling and
Benchmarking Self-Supervised Visual Representation Learning", ICCV 2019, arXiv:1905.01235.
The stain variant predicts eosin from haematoxylin in optical density (Ruifrok & Johnston 2001
colour deconvolution, shared with :mod:`pathssl.augment`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pathssl.models.backbones import Backbone
from pathssl.models.split import split_channels
from pathssl.ssl import dist
from pathssl.ssl.base import METHODS, SSLMethod, collapse_std
from pathssl.ssl.colour_bins import (
    ab_gamut_bins,
    dense_features,
    part_image,
    pooled_targets,
    soft_encode,
    uniform_bins,
)


class BinHead(nn.Module):
    """Per-position classifier over ``num_bins``: ``(B, C, h, w)`` -> 1x1 conv, BN, ReLU, 1x1
    conv -> logits ``(B, Q, h, w)``, bilinearly resized to ``size``."""

    def __init__(self, in_dim: int, hidden_dim: int, num_bins: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_dim, hidden_dim, 1, bias=False),
            nn.BatchNorm2d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden_dim, num_bins, 1),
        )

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        return F.interpolate(self.net(x), size=size, mode="bilinear", align_corners=False)


def bin_targets(
    values: Tensor, centres: Tensor, stride: int, neighbours: int, sigma: float
) -> Tensor:
    """Channel values ``(B, d, H, W)`` -> soft targets ``(B, Q, H // stride, W // stride)``."""
    return soft_encode(pooled_targets(values, stride), centres, neighbours, sigma)


def rebalance_weights(counts: Tensor, mix: float) -> Tensor:
    """Zhang et al.'s class rebalancing: bin weights ``(Q,)`` proportional to
    ``((1 - mix) p + mix / Q)^-1`` for the empirical bin distribution ``p = counts / sum``,
    scaled so that ``sum_q p_q w_q = 1``; all ones before any count."""
    total = counts.sum()
    if float(total) <= 0:
        return torch.ones_like(counts)
    p = counts / total
    w = 1.0 / ((1 - mix) * p + mix / counts.shape[0])
    return w / (p * w).sum()


def weighted_soft_ce(logits: Tensor, targets: Tensor, weights: Tensor | None) -> Tensor:
    """Mean over positions of ``-w * sum_q t_q log softmax(logits)_q`` (``(B, Q, h, w)`` each),
    ``w`` the weight of each position's most likely target bin (or 1)."""
    ce = -(targets * F.log_softmax(logits.float(), dim=1)).sum(1)  # (B, h, w)
    if weights is not None:
        ce = ce * weights.to(ce)[targets.argmax(1)]
    return ce.mean()


@METHODS.register("colorization")
class Colorization(SSLMethod):
    """Colorization as classification: the view ``(B, 3, H, W)`` is split into its input part
    and its target part (``space="lab"``: L -> ab, Zhang et al. 2016; ``space="hed"``:
    haematoxylin -> eosin optical density, the stain variant). The backbone sees the input part
    as an RGB image (:func:`~pathssl.ssl.colour_bins.part_image`: the grey image of L, or the
    haematoxylin-only image), normalised like every view, so the trunk keeps its RGB stem and
    loads anywhere. Its dense features (:func:`~pathssl.ssl.colour_bins.dense_features`) ->
    :class:`BinHead` -> logits ``(B, Q, H / target_stride, W / target_stride)`` against the
    target part averaged over ``target_stride`` cells and soft-encoded over ``Q`` bins
    (``neighbours`` nearest, Gaussian ``sigma``; Zhang: 5 neighbours, sigma 5 at grid step 10).

    Bins (the hardness knob): ``lab``: the in-gamut ab cells of step ``grid_step``
    (:func:`~pathssl.ssl.colour_bins.ab_gamut_bins`: 10 -> 261, 20 -> 75, 40 -> 23);
    ``hed``: ``num_bins`` equal bins of eosin OD over ``value_range`` (values outside are
    clamped to the range). ``sigma`` None: half a bin width.

    ``rebalance`` (Zhang's class rebalancing, ``rebalance_mix`` 0.5): each position weighted by
    its bin's weight from :func:`rebalance_weights`; the bin distribution is counted over the
    training batches seen so far (all ranks), in the buffer ``bin_counts`` (checkpointed; the
    paper counts ImageNet once beforehand).

    The views arrive normalised; the method undoes it with the training tiles' mean/std handed
    over by :meth:`~pathssl.ssl.base.SSLMethod.set_input_normalisation`. Views: 1.
    """

    bins: Tensor
    bin_counts: Tensor

    def __init__(
        self,
        backbone: Backbone,
        space: str = "lab",
        grid_step: float = 10.0,
        num_bins: int = 32,
        value_range: tuple[float, float] = (0.0, 1.5),
        neighbours: int = 5,
        sigma: float | None = None,
        target_stride: int = 8,
        head_dim: int = 256,
        rebalance: bool = False,
        rebalance_mix: float = 0.5,
    ) -> None:
        super().__init__(backbone)
        self.n_global_views = 1
        self.space = space
        if space == "lab":
            bins, width = ab_gamut_bins(grid_step), grid_step
        elif space == "hed":
            lo, hi = (float(v) for v in value_range)
            bins, width = uniform_bins(lo, hi, num_bins), (hi - lo) / num_bins
            self.value_range = (lo, hi)
        else:
            raise ValueError(f"colorization space must be 'lab' or 'hed', got {space!r}")
        self.register_buffer("bins", bins)
        self.register_buffer("bin_counts", torch.zeros(len(bins)))
        self.neighbours = neighbours
        self.sigma = sigma if sigma is not None else width / 2
        self.target_stride = target_stride
        self.rebalance = rebalance
        self.rebalance_mix = rebalance_mix
        self.head = BinHead(self.embed_dim, head_dim, len(bins))
        self._pending: list[Tensor] = []

    @property
    def num_classes(self) -> int:
        return int(self.bins.shape[0])

    def inputs_and_targets(self, view: Tensor) -> tuple[Tensor, Tensor]:
        """A normalised view ``(B, 3, H, W)`` -> (the backbone's input ``(B, 3, H, W)``,
        normalised; soft targets ``(B, Q, H / stride, W / stride)``)."""
        with torch.no_grad():
            source, target = split_channels(self.raw_rgb(view), self.space)
            if self.space == "hed":
                target = target.clamp(*self.value_range)
            image = part_image(source, self.space, 0)
            x = (image - self.input_mean) / self.input_std
            soft = bin_targets(target, self.bins, self.target_stride, self.neighbours, self.sigma)
        return x.to(view.dtype), soft

    def forward(self, views: list[Tensor]) -> dict[str, Tensor]:
        self.check_views(views, 1)
        x, targets = self.inputs_and_targets(views[0])
        feats = dense_features(self.backbone, x)
        logits = self.head(feats, targets.shape[-2:])
        weights = rebalance_weights(self.bin_counts, self.rebalance_mix) if self.rebalance else None
        loss = weighted_soft_ce(logits, targets, weights)
        hard = targets.argmax(1)
        acc = (logits.detach().argmax(1) == hard).float().mean()
        if self.training and self.rebalance:  # counted after the step is applied
            counts = torch.bincount(hard.flatten(), minlength=self.num_classes).float()
            self._pending = [dist.all_reduce_sum(counts)]
        return {"loss": loss, "accuracy": acc, "embed_std": collapse_std(feats.mean((2, 3)))}

    def on_step_end(self, step: int, max_steps: int) -> None:
        super().on_step_end(step, max_steps)
        for counts in self._pending:
            self.bin_counts.add_(counts.to(self.bin_counts))
        self._pending.clear()
