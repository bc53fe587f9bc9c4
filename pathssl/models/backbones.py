"""Backbones by name: torchvision ResNet trunks and Vision Transformers.

Every backbone is an ``nn.Module`` with an ``embed_dim`` attribute whose ``forward(x)`` maps
images ``(B, 3, H, W)`` to pooled features ``(B, embed_dim)`` and whose ``forward_features(x)``
gives the dense output (a ``(B, C, H/32, W/32)`` map for ResNets, ``(B, 1 + N, D)`` tokens for
ViTs, class token first).

The backbones *are* torchvision models (subclasses) with the classifier removed, so their
``state_dict()`` keeps torchvision's parameter names. A trunk saved by pathssl loads into a plain
torchvision model with no pathssl code::

    m = torchvision.models.resnet50()
    m.load_state_dict(sd, strict=False)  # missing: fc.weight, fc.bias only

No pretrained weights are downloaded.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet
from torchvision.models.vision_transformer import VisionTransformer

from pathssl.registry import Registry

BACKBONES: Registry = Registry("backbone")


def _scaled(channels: int, width: float) -> int:
    """``channels * width`` rounded, at least 1."""
    return max(1, round(channels * width))


class ConvBackbone(nn.Module):
    """What every convolutional trunk offers (ResNets, ResNet-v2, split ResNets): five feature
    maps at strides 2, 4, 8, 16, 32 (the taps dense heads such as the nuclei decoder and
    multi-stage mixtures read), ``tap_channels`` their widths, ``embed_dim`` the pooled width.

    Subclasses implement :meth:`tap_stages`; ``forward_features`` is the stride-32 map and
    ``forward`` its global average.
    """

    embed_dim: int
    tap_channels: list[int]

    def tap_stages(self) -> list[nn.Module]:
        """The trunk as 5 consecutive modules, input to output: stem (stride 2), then the
        stages ending at strides 4, 8, 16 and 32 (also the unit of partial fine-tuning)."""
        raise NotImplementedError

    def forward_taps(self, x: Tensor) -> list[Tensor]:
        """``(B, 3, H, W)`` -> 5 maps ``(B, tap_channels[i], H / 2**(i+1), W / 2**(i+1))``."""
        feats = []
        for stage in self.tap_stages():
            x = stage(x)
            feats.append(x)
        return feats

    def forward_features(self, x: Tensor) -> Tensor:
        """``(B, 3, H, W) -> (B, embed_dim, H/32, W/32)`` feature map (before pooling)."""
        return self.forward_taps(x)[-1]

    def forward(self, x: Tensor) -> Tensor:
        """``(B, 3, H, W) -> (B, embed_dim)``; any input size (global average pooling)."""
        return torch.flatten(F.adaptive_avg_pool2d(self.forward_features(x), 1), 1)


class ResNetBackbone(ResNet, ConvBackbone):
    """torchvision ResNet without ``fc``; ``forward`` returns globally pooled features.

    ``width`` scales every layer's channels (torchvision hardcodes 64, 128, 256, 512; the stem
    and each stage get ``round(c * width)``, Bottleneck inner widths follow), ``in_chans`` is the
    stem's input channels; the parameter names stay torchvision's. ``width=0.5`` gives a half of
    a split-brain trunk (:mod:`pathssl.models.split`): about a quarter of the convolution weights.
    The defaults (1.0, 3) build exactly torchvision's model, with the same random draws.
    """

    # torchvision's attributes, declared for the type checker
    conv1: nn.Conv2d
    bn1: nn.BatchNorm2d
    relu: nn.ReLU
    maxpool: nn.MaxPool2d
    layer1: nn.Sequential
    layer2: nn.Sequential
    layer3: nn.Sequential
    layer4: nn.Sequential
    avgpool: nn.AdaptiveAvgPool2d

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        layers: list[int],
        width: float = 1.0,
        in_chans: int = 3,
    ) -> None:
        if width <= 0 or in_chans < 1:
            raise ValueError(f"need width > 0 and in_chans >= 1, got {width} and {in_chans}")
        self.width = width  # read by _make_layer during torchvision's __init__
        super().__init__(block, layers)
        stem = _scaled(64, width)
        if stem != 64 or in_chans != 3:  # torchvision built a 3 -> 64 stem: rebuild it
            self.conv1 = nn.Conv2d(in_chans, stem, kernel_size=7, stride=2, padding=3, bias=False)
            nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
            self.bn1 = nn.BatchNorm2d(stem)
        self.embed_dim: int = _scaled(512, width) * block.expansion
        self.tap_channels: list[int] = [
            stem,
            *(_scaled(c, width) * block.expansion for c in (64, 128, 256, 512)),
        ]
        self.fc = nn.Identity()  # no parameters: state_dict keys stay fc-free

    def _make_layer(
        self,
        block: type[BasicBlock | Bottleneck],
        planes: int,
        blocks: int,
        stride: int = 1,
        dilate: bool = False,
    ) -> nn.Sequential:
        """torchvision's stage with ``planes`` scaled by ``width``; layer1 takes the stem's."""
        if planes == 64:
            self.inplanes = _scaled(64, self.width)
        return super()._make_layer(block, _scaled(planes, self.width), blocks, stride, dilate)

    def tap_stages(self) -> list[nn.Module]:
        return [
            nn.Sequential(self.conv1, self.bn1, self.relu),
            nn.Sequential(self.maxpool, self.layer1),
            self.layer2,
            self.layer3,
            self.layer4,
        ]

    def forward_features(self, x: Tensor) -> Tensor:
        """``(B, 3, H, W) -> (B, embed_dim, H/32, W/32)`` feature map (before pooling)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return x

    def forward(self, x: Tensor) -> Tensor:
        """``(B, 3, H, W) -> (B, embed_dim)``; any input size (adaptive pooling)."""
        return torch.flatten(self.avgpool(self.forward_features(x)), 1)


class ViTBackbone(VisionTransformer):
    """torchvision ``VisionTransformer`` without ``heads``; ``forward`` returns the class token.

    Unlike torchvision's, it accepts any input size divisible by ``patch_size``: the patch
    position embeddings are bicubically interpolated to the token grid (multi-crop).
    """

    def __init__(
        self,
        image_size: int,
        patch_size: int,
        depth: int,
        num_heads: int,
        hidden_dim: int,
        mlp_dim: int,
    ) -> None:
        super().__init__(image_size, patch_size, depth, num_heads, hidden_dim, mlp_dim)
        self.embed_dim: int = hidden_dim
        self.heads = nn.Identity()
        self.grid_size = image_size // patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2

    def pos_embed(self, grid_h: int, grid_w: int) -> Tensor:
        """Position embeddings ``(1, 1 + grid_h * grid_w, D)`` for a ``grid_h x grid_w`` grid."""
        pos = self.encoder.pos_embedding
        if grid_h == grid_w == self.grid_size:
            return pos
        cls_pos, patch_pos = pos[:, :1], pos[:, 1:]
        g = self.grid_size
        patch_pos = patch_pos.reshape(1, g, g, -1).permute(0, 3, 1, 2)
        patch_pos = F.interpolate(
            patch_pos, size=(grid_h, grid_w), mode="bicubic", align_corners=False
        )
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, -1)
        return torch.cat([cls_pos, patch_pos], dim=1)

    def patch_embed(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(B, 3, H, W)`` -> patch tokens ``(B, N, D)`` and their position embeddings
        ``(1, 1 + N, D)`` (class-token position first). No position added yet."""
        p = self.patch_size
        if x.shape[-2] % p or x.shape[-1] % p:
            raise ValueError(f"input {tuple(x.shape[-2:])} is not divisible by patch {p}")
        tokens = self.conv_proj(x)  # (B, D, h, w)
        gh, gw = tokens.shape[-2:]
        return tokens.flatten(2).transpose(1, 2), self.pos_embed(gh, gw)

    def encode(self, tokens: Tensor, pos: Tensor) -> Tensor:
        """Prepend the class token, add ``pos`` ``(1 or B, 1 + N, D)``, run the encoder."""
        cls = self.class_token.expand(tokens.shape[0], -1, -1)
        x = torch.cat([cls, tokens], dim=1) + pos
        return self.encoder.ln(self.encoder.layers(self.encoder.dropout(x)))

    def forward_features(self, x: Tensor) -> Tensor:
        """``(B, 3, H, W) -> (B, 1 + N, D)`` normalised tokens, class token first."""
        tokens, pos = self.patch_embed(x)
        return self.encode(tokens, pos)

    def forward_masked(self, x: Tensor, ids_keep: Tensor) -> Tensor:
        """Encode only the patches ``ids_keep`` ``(B, K)`` (MAE): returns ``(B, 1 + K, D)``."""
        tokens, pos = self.patch_embed(x)
        d = tokens.shape[-1]
        idx = ids_keep.unsqueeze(-1).expand(-1, -1, d)
        kept = torch.gather(tokens, 1, idx)
        kept_pos = torch.gather(pos[:, 1:].expand(tokens.shape[0], -1, -1), 1, idx)
        cls = self.class_token.expand(tokens.shape[0], -1, -1) + pos[:, :1]
        x = torch.cat([cls, kept + kept_pos], dim=1)
        return self.encoder.ln(self.encoder.layers(self.encoder.dropout(x)))

    def forward(self, x: Tensor) -> Tensor:
        """``(B, 3, H, W) -> (B, embed_dim)`` class token."""
        return self.forward_features(x)[:, 0]


Backbone = ConvBackbone | ViTBackbone


@BACKBONES.register("resnet18")
def resnet18() -> ResNetBackbone:
    """ResNet-18 trunk, ``embed_dim`` 512."""
    return ResNetBackbone(BasicBlock, [2, 2, 2, 2])


@BACKBONES.register("resnet50")
def resnet50() -> ResNetBackbone:
    """ResNet-50 trunk, ``embed_dim`` 2048."""
    return ResNetBackbone(Bottleneck, [3, 4, 6, 3])


@BACKBONES.register("vit_small_patch16")
def vit_small_patch16(image_size: int = 224) -> ViTBackbone:
    """ViT-S/16 (Touvron et al. 2021 size): hidden 384, 6 heads, depth 12, MLP 1536."""
    return ViTBackbone(image_size, 16, depth=12, num_heads=6, hidden_dim=384, mlp_dim=1536)


@BACKBONES.register("vit_base_patch16")
def vit_base_patch16(image_size: int = 224) -> ViTBackbone:
    """ViT-B/16 (Dosovitskiy et al. 2021): hidden 768, 12 heads, depth 12, MLP 3072."""
    return ViTBackbone(image_size, 16, depth=12, num_heads=12, hidden_dim=768, mlp_dim=3072)


@BACKBONES.register("vit_tiny")
def vit_tiny(image_size: int = 64, patch_size: int = 16) -> ViTBackbone:
    """A test-size ViT: depth 2, hidden 64, 2 heads, MLP 128."""
    return ViTBackbone(image_size, patch_size, depth=2, num_heads=2, hidden_dim=64, mlp_dim=128)


def build_backbone(name: str, **kwargs: object) -> Backbone:
    """Build a registered backbone by name (``BACKBONES.names()`` lists them)."""
    model = BACKBONES.build(name, **kwargs)
    assert isinstance(model, ConvBackbone | ViTBackbone)
    return model


def trunk_state_dict(backbone: nn.Module) -> dict[str, Tensor]:
    """The backbone's weights under torchvision's names (a copy, on CPU)."""
    return {k: v.detach().cpu().clone() for k, v in backbone.state_dict().items()}
