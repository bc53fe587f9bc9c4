"""ResNet-v2 with Group Normalisation and Weight Standardisation: the BiT trunks.

Pre-activation bottleneck units (He et al. 2016, "Identity Mappings in Deep Residual Networks")
with every BatchNorm replaced by GroupNorm (32 groups, Wu & He 2018) and every convolution
weight-standardised (Qiao et al. 2019), as Big Transfer uses them (Kolesnikov et al. 2020, BiT):

- root: 7x7 stride-2 convolution (no norm, no activation: v2 units pre-activate), then a 3x3
  stride-2 max pool over a zero-padded map (pad 1, as BiT's own code; not ``-inf`` padding);
- unit: ``GN-ReLU`` -> 1x1 -> ``GN-ReLU`` -> 3x3 (the stride sits here) -> ``GN-ReLU`` -> 1x1,
  plus the shortcut: identity, or a strided 1x1 projection of the *pre-activated* input in the
  first unit of each stage;
- after the last stage a final ``GN-ReLU`` (the pre-activation of the missing next unit).

The width multiplier ``width`` scales every channel count (BiT's R50x3, R152x4; the wider trunks
of Kolesnikov et al. 2019, "Revisiting self-supervised visual representation learning"): stem
``64 w``, stage outputs ``256 w, 512 w, 1024 w, 2048 w`` (``embed_dim = 2048 w``).

Parameter names follow timm's ``ResNetV2`` (``stem.conv``, ``stages.<i>.blocks.<j>.norm1 /
conv1 / norm2 / conv2 / norm3 / conv3 / downsample.conv``, ``norm``), so a timm BiT checkpoint's
trunk loads as it is; the published ``.npz`` files load through :mod:`pathssl.models.bit`.
No weights are downloaded.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pathssl.models.backbones import BACKBONES, ConvBackbone

#: added to the weights' variance before the square root (BiT's TF and PyTorch code: 1e-10)
WS_EPS = 1e-10
#: GroupNorm groups (BiT) and epsilon (BiT's TF GroupNormalization and torch's default)
GN_GROUPS = 32
GN_EPS = 1e-5
#: units per stage of the bottleneck depths: depth = 3 x units + 2
DEPTHS: dict[int, list[int]] = {
    14: [1, 1, 1, 1],
    26: [2, 2, 2, 2],
    50: [3, 4, 6, 3],
    101: [3, 4, 23, 3],
    152: [3, 8, 36, 3],
}


class StdConv2d(nn.Conv2d):
    """Convolution with weight standardisation: each output filter's weights ``(I, kH, kW)``
    have their mean removed and are divided by their (biased) standard deviation,
    ``sqrt(var + WS_EPS)``, at every forward (the stored weight stays unstandardised)."""

    def standardized_weight(self) -> Tensor:
        """``(O, I, kH, kW)`` standardised weight."""
        var, mean = torch.var_mean(self.weight, dim=(1, 2, 3), keepdim=True, unbiased=False)
        return (self.weight - mean) / torch.sqrt(var + WS_EPS)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(
            x,
            self.standardized_weight(),
            self.bias,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
        )


def _conv(cin: int, cout: int, kernel: int, stride: int = 1) -> StdConv2d:
    return StdConv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False)


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(GN_GROUPS, channels, eps=GN_EPS)


class _Projection(nn.Module):
    """The shortcut's strided 1x1 convolution (``downsample.conv``: timm's name)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv = _conv(cin, cout, 1, stride)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.conv(x)
        return out


class PreActBottleneck(nn.Module):
    """Pre-activation bottleneck unit ``(B, cin, H, W) -> (B, cout, H / stride, W / stride)``,
    ``mid`` channels inside; a projection shortcut when ``cin != cout`` or ``stride > 1``."""

    def __init__(self, cin: int, cout: int, mid: int, stride: int = 1) -> None:
        super().__init__()
        self.norm1 = _norm(cin)
        self.conv1 = _conv(cin, mid, 1)
        self.norm2 = _norm(mid)
        self.conv2 = _conv(mid, mid, 3, stride)
        self.norm3 = _norm(mid)
        self.conv3 = _conv(mid, cout, 1)
        self.downsample = _Projection(cin, cout, stride) if stride > 1 or cin != cout else None

    def forward(self, x: Tensor) -> Tensor:
        pre = F.relu(self.norm1(x))
        shortcut = x if self.downsample is None else self.downsample(pre)
        out = self.conv1(pre)
        out = self.conv2(F.relu(self.norm2(out)))
        out = self.conv3(F.relu(self.norm3(out)))
        return out + shortcut


class _Root(nn.Module):
    """BiT's root block: 7x7 stride-2 conv (``stem.conv``), zero padding 1, 3x3 stride-2 max
    pool: ``(B, 3, H, W) -> (B, c, H/4, W/4)``."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = StdConv2d(3, c, 7, stride=2, padding=3, bias=False)
        self.pad = nn.ConstantPad2d(1, 0.0)
        self.pool = nn.MaxPool2d(3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.pool(self.pad(self.conv(x)))
        return out


class ResNetV2Stage(nn.Module):
    """``units`` bottleneck units, the first with ``stride`` and the projection shortcut."""

    def __init__(self, cin: int, cout: int, units: int, stride: int) -> None:
        super().__init__()
        mid = cout // 4
        self.blocks = nn.Sequential(
            *[
                PreActBottleneck(cin if i == 0 else cout, cout, mid, stride if i == 0 else 1)
                for i in range(units)
            ]
        )

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.blocks(x)
        return out


class ResNetV2Backbone(ConvBackbone):
    """ResNet-v2 trunk (GN + WS) without a classifier: ``forward`` ``(B, 3, H, W) ->
    (B, 2048 w)`` globally averaged features after the final GN-ReLU.

    Taps (:meth:`tap_stages`): the root convolution's output (stride 2, ``64 w``; BiT's root has
    no norm or activation), then stages 1-3 (strides 4, 8, 16) and stage 4 with the final
    GN-ReLU (stride 32).

    Args:
        layers: units per stage (4 numbers; :data:`DEPTHS`).
        width: channel multiplier; ``64 * width`` must be a whole multiple of 32 (the groups),
            so 0.5, 1, 1.5, 2, 3, 4, ... .
    """

    def __init__(self, layers: list[int], width: float = 1.0) -> None:
        super().__init__()
        if len(layers) != 4 or any(n < 1 for n in layers):
            raise ValueError(f"resnetv2: layers must be 4 unit counts >= 1, got {layers}")
        stem = 64 * width
        if stem != int(stem) or int(stem) % GN_GROUPS:
            raise ValueError(
                f"resnetv2: width {width} gives {stem:g} stem channels, not a whole multiple "
                f"of the {GN_GROUPS} GroupNorm groups (use 0.5, 1, 1.5, 2, 3, 4, ...)"
            )
        c = int(stem)
        self.layers = list(layers)
        self.width = width
        self.stem = _Root(c)
        outs = [4 * c, 8 * c, 16 * c, 32 * c]
        ins = [c, *outs[:-1]]
        self.stages = nn.Sequential(
            *[
                ResNetV2Stage(cin, cout, n, 1 if i == 0 else 2)
                for i, (cin, cout, n) in enumerate(zip(ins, outs, layers, strict=True))
            ]
        )
        self.norm = _norm(outs[-1])
        self.embed_dim: int = outs[-1]
        self.tap_channels: list[int] = [c, *outs]
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He-normal convolutions (fan out), GroupNorm scale 1 and shift 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.GroupNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def tap_stages(self) -> list[nn.Module]:
        return [
            self.stem.conv,
            nn.Sequential(self.stem.pad, self.stem.pool, self.stages[0]),
            self.stages[1],
            self.stages[2],
            nn.Sequential(self.stages[3], self.norm, nn.ReLU()),
        ]

    def forward_features(self, x: Tensor) -> Tensor:
        """``(B, 3, H, W) -> (B, embed_dim, H/32, W/32)`` after the final GN-ReLU."""
        return F.relu(self.norm(self.stages(self.stem(x))))


def _named(depth: int, width: float) -> ResNetV2Backbone:
    return ResNetV2Backbone(DEPTHS[depth], width)


@BACKBONES.register("resnetv2")
def resnetv2(depth: int = 50, width: float = 1.0) -> ResNetV2Backbone:
    """ResNet-v2 (GN + WS) of any :data:`DEPTHS` depth and ``width`` (Kolesnikov et al. 2019's
    widening study: ``{backbone: resnetv2, params: {depth: 50, width: 4}}``)."""
    if depth not in DEPTHS:
        known = ", ".join(str(d) for d in DEPTHS)
        raise ValueError(f"resnetv2: depth {depth} is not one of {known}")
    return _named(depth, width)


@BACKBONES.register("resnetv2_50x1")
def resnetv2_50x1() -> ResNetV2Backbone:
    """BiT R50x1: ``embed_dim`` 2048."""
    return _named(50, 1)


@BACKBONES.register("resnetv2_50x3")
def resnetv2_50x3() -> ResNetV2Backbone:
    """BiT R50x3: ``embed_dim`` 6144."""
    return _named(50, 3)


@BACKBONES.register("resnetv2_101x1")
def resnetv2_101x1() -> ResNetV2Backbone:
    """BiT R101x1: ``embed_dim`` 2048."""
    return _named(101, 1)


@BACKBONES.register("resnetv2_101x3")
def resnetv2_101x3() -> ResNetV2Backbone:
    """BiT R101x3: ``embed_dim`` 6144."""
    return _named(101, 3)


@BACKBONES.register("resnetv2_152x2")
def resnetv2_152x2() -> ResNetV2Backbone:
    """BiT R152x2: ``embed_dim`` 4096."""
    return _named(152, 2)


@BACKBONES.register("resnetv2_152x4")
def resnetv2_152x4() -> ResNetV2Backbone:
    """BiT R152x4: ``embed_dim`` 8192."""
    return _named(152, 4)


@BACKBONES.register("resnetv2_tiny")
def resnetv2_tiny() -> ResNetV2Backbone:
    """A CPU test size: one unit per stage, width 0.5 (stem 32, ``embed_dim`` 1024)."""
    return _named(14, 0.5)


#: registered fixed sizes by (units per stage, width): how a weight file's layout is named
NAMED: dict[tuple[tuple[int, ...], float], str] = {
    (tuple(DEPTHS[50]), 1.0): "resnetv2_50x1",
    (tuple(DEPTHS[50]), 3.0): "resnetv2_50x3",
    (tuple(DEPTHS[101]), 1.0): "resnetv2_101x1",
    (tuple(DEPTHS[101]), 3.0): "resnetv2_101x3",
    (tuple(DEPTHS[152]), 2.0): "resnetv2_152x2",
    (tuple(DEPTHS[152]), 4.0): "resnetv2_152x4",
    (tuple(DEPTHS[14]), 0.5): "resnetv2_tiny",
}
