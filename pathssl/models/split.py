"""Split ResNet trunks: Zhang, Isola, Efros, "Split-Brain Autoencoders: Unsupervised Learning by
Cross-Channel Prediction", CVPR 2017, arXiv:1611.09842.

A split trunk is two disjoint half-width ResNets of one architecture (each layer split in two
along its channels, as the paper splits AlexNet): half 0 sees the first part of the image's
channels, half 1 the second (``lab``: L | ab; ``hed``: the haematoxylin | eosin optical
densities of Ruifrok & Johnston's colour deconvolution, as :mod:`pathssl.augment` computes them).
Each half takes only its own channels (1 and 2 input channels for L | ab, 1 and 1 for H | E):
feeding all three with the other part zeroed would compute the same thing through stem weights
that never see a non-zero input. The representation is the two halves' features concatenated,
layer by layer: every tap and the pooled ``(B, embed_dim)`` feature.

It is a :class:`~pathssl.models.backbones.ConvBackbone` like any ResNet: it takes normalised RGB
``(B, 3, H, W)`` and converts it itself, so ``pathssl eval``, ``pathssl embed`` and the nuclei
head use it by name with no special case. To convert, it undoes the normalisation the images
arrive with: its buffers ``colour.mean`` / ``colour.std`` (saved with the trunk beside
``half0.*`` and ``half1.*``, each a ResNet under torchvision's names) hold that normalisation,
which split-brain pretraining sets to the training tiles' mean/std, the same values the
checkpoint's ``meta`` gives every downstream command. So for a split trunk the mean/std are
only an input encoding it inverts exactly, not a statistic its features depend on; a new trunk
holds ImageNet's (what ``pathssl eval`` uses for randomly initialised encoders).

Registered: ``resnet18_split``, ``resnet50_split`` (L | ab) and ``resnet18_split_hed``,
``resnet50_split_hed`` (H | E); ``embed_dim`` 512 and 2048, as the unsplit trunks, with about
half their parameters (each half has about a quarter of the convolution weights).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from pathssl.data.colour import rgb_to_hed, rgb_to_lab
from pathssl.models.backbones import BACKBONES, ConvBackbone, ResNetBackbone

#: input channels of each half per colour space
PART_CHANNELS: dict[str, tuple[int, int]] = {"lab": (1, 2), "hed": (1, 1)}
#: ``(x - centre) / scale`` brings each part to about [-1, 1] for the stem: L (0..100) and ab
#: (about +-60 on H&E), the H and E optical densities (natural-log units, mostly 0..2)
PART_CENTRE: dict[str, tuple[float, float]] = {"lab": (50.0, 0.0), "hed": (0.5, 0.5)}
PART_SCALE: dict[str, tuple[float, float]] = {"lab": (50.0, 50.0), "hed": (0.5, 0.5)}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def split_channels(rgb: Tensor, space: str) -> tuple[Tensor, Tensor]:
    """RGB ``(B, 3, H, W)`` in [0, 1] -> the two parts ``(B, d0, H, W)``, ``(B, d1, H, W)``
    float32: ``lab``: L (0..100) and ab; ``hed``: the haematoxylin and eosin concentrations
    (natural-log OD units; DAB dropped), from :mod:`pathssl.data.colour`."""
    if space not in PART_CHANNELS:
        raise ValueError(f"colour space must be one of {tuple(PART_CHANNELS)}, got {space!r}")
    y = rgb_to_lab(rgb.float()) if space == "lab" else rgb_to_hed(rgb.float())
    d0, d1 = PART_CHANNELS[space]
    return y[:, :d0], y[:, d0 : d0 + d1]


class ColourParts(nn.Module):
    """Normalised RGB ``(B, 3, H, W)`` -> the two standardised input parts ``(B, d0, H, W)``,
    ``(B, d1, H, W)`` float32 (computed in float32 under autocast too).

    Buffers ``mean`` / ``std`` ``(1, 3, 1, 1)``: the normalisation to undo (ImageNet's until
    :meth:`set_input_normalisation`)."""

    mean: Tensor
    std: Tensor

    def __init__(self, space: str) -> None:
        super().__init__()
        if space not in PART_CHANNELS:
            raise ValueError(f"colour space must be one of {tuple(PART_CHANNELS)}, got {space!r}")
        self.space = space
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    @torch.no_grad()
    def set_input_normalisation(self, mean: list[float], std: list[float]) -> None:
        self.mean.copy_(torch.as_tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.std.copy_(torch.as_tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        with torch.autocast(x.device.type, enabled=False):
            rgb = (x.float() * self.std + self.mean).clamp(0.0, 1.0)
            parts = split_channels(rgb, self.space)
            c, s = PART_CENTRE[self.space], PART_SCALE[self.space]
            return (parts[0] - c[0]) / s[0], (parts[1] - c[1]) / s[1]


class _SplitStem(nn.Module):
    """Tap stage 0: normalised RGB ``(B, 3, H, W)`` -> both stems' maps concatenated."""

    def __init__(self, colour: ColourParts, stem0: nn.Module, stem1: nn.Module) -> None:
        super().__init__()
        self.colour, self.stem0, self.stem1 = colour, stem0, stem1

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.colour(x)
        return torch.cat([self.stem0(a.to(x.dtype)), self.stem1(b.to(x.dtype))], 1)


class _SplitStage(nn.Module):
    """Tap stages 1-4: ``(B, c0 + c1, h, w)`` -> each half's stage on its own channels, the
    outputs concatenated."""

    def __init__(self, stage0: nn.Module, stage1: nn.Module, c0: int) -> None:
        super().__init__()
        self.stage0, self.stage1, self.c0 = stage0, stage1, c0

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.stage0(x[:, : self.c0]), self.stage1(x[:, self.c0 :])], 1)


class SplitConvBackbone(ConvBackbone):
    """Two half-width ResNets of the same ``block`` / ``layers`` (Zhang et al. 2017's split
    network), half ``i`` taking part ``i`` of ``space`` (see the module docstring).

    ``forward`` ``(B, 3, H, W)`` normalised RGB -> ``(B, embed_dim)``, ``embed_dim`` the sum of
    the halves' (512 for ResNet-18, 2048 for ResNet-50); taps: both halves' taps concatenated
    along channels (``tap_channels`` the sums). :meth:`forward_parts` gives each half's own
    stride-32 map (pretraining predicts each part from the other half's features).
    """

    def __init__(
        self, block: type[BasicBlock | Bottleneck], layers: list[int], space: str = "lab"
    ) -> None:
        super().__init__()
        self.space = space
        self.colour = ColourParts(space)
        d0, d1 = PART_CHANNELS[space]
        self.half0 = ResNetBackbone(block, layers, width=0.5, in_chans=d0)
        self.half1 = ResNetBackbone(block, layers, width=0.5, in_chans=d1)
        self.half_dims: tuple[int, int] = (self.half0.embed_dim, self.half1.embed_dim)
        self.embed_dim: int = sum(self.half_dims)
        self.tap_channels: list[int] = [
            a + b for a, b in zip(self.half0.tap_channels, self.half1.tap_channels, strict=True)
        ]

    @property
    def halves(self) -> tuple[ResNetBackbone, ResNetBackbone]:
        """Half 0 (sees part 0: L or H) and half 1 (part 1: ab or E)."""
        return self.half0, self.half1

    def set_input_normalisation(self, mean: list[float], std: list[float]) -> None:
        """The images arrive as ``(rgb - mean) / std`` (RGB in [0, 1])."""
        self.colour.set_input_normalisation(mean, std)

    def parts(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Normalised RGB ``(B, 3, H, W)`` -> each half's input ``(B, d_i, H, W)`` (x's dtype)."""
        a, b = self.colour(x)
        return a.to(x.dtype), b.to(x.dtype)

    def forward_parts(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Normalised RGB ``(B, 3, H, W)`` -> each half's map ``(B, half_dims[i], H/32, W/32)``."""
        a, b = self.parts(x)
        return self.half0.forward_features(a), self.half1.forward_features(b)

    def tap_stages(self) -> list[nn.Module]:
        """Stem: RGB -> both stems' maps concatenated; stages 1-4: each half's stage on its
        own channels (the first ``half 0`` tap width), concatenated."""
        s0, s1 = self.half0.tap_stages(), self.half1.tap_stages()
        splits = self.half0.tap_channels[:-1]  # half 0's width at each stage's input
        stages = zip(s0[1:], s1[1:], splits, strict=True)
        return [_SplitStem(self.colour, s0[0], s1[0]), *(_SplitStage(*s) for s in stages)]

    def forward_features(self, x: Tensor) -> Tensor:
        """``(B, 3, H, W) -> (B, embed_dim, H/32, W/32)``: both halves' maps concatenated."""
        return torch.cat(self.forward_parts(x), 1)


@BACKBONES.register("resnet18_split")
def resnet18_split() -> SplitConvBackbone:
    """Split ResNet-18, L | ab: two half-width ResNet-18s, ``embed_dim`` 256 + 256."""
    return SplitConvBackbone(BasicBlock, [2, 2, 2, 2], "lab")


@BACKBONES.register("resnet50_split")
def resnet50_split() -> SplitConvBackbone:
    """Split ResNet-50, L | ab: two half-width ResNet-50s, ``embed_dim`` 1024 + 1024."""
    return SplitConvBackbone(Bottleneck, [3, 4, 6, 3], "lab")


@BACKBONES.register("resnet18_split_hed")
def resnet18_split_hed() -> SplitConvBackbone:
    """Split ResNet-18, haematoxylin | eosin optical density, ``embed_dim`` 256 + 256."""
    return SplitConvBackbone(BasicBlock, [2, 2, 2, 2], "hed")


@BACKBONES.register("resnet50_split_hed")
def resnet50_split_hed() -> SplitConvBackbone:
    """Split ResNet-50, haematoxylin | eosin optical density, ``embed_dim`` 1024 + 1024."""
    return SplitConvBackbone(Bottleneck, [3, 4, 6, 3], "hed")
