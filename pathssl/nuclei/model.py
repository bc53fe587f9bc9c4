"""HoVer-Net style nuclei head on any registered encoder (Graham et al. 2019, *HoVer-Net:
Simultaneous segmentation and classification of nuclei in multi-tissue histology images*,
Medical Image Analysis 58).

Three branches decode the encoder's multi-scale features to full resolution:

* NP (``nucleus_prediction``): ``(B, 2, H, W)`` logits, background / nucleus;
* HV (``horizontal_vertical``): ``(B, 2, H, W)`` horizontal and vertical distances of each
  nucleus pixel to its nucleus' centre of mass, in ``[-1, 1]`` (see :mod:`.targets`);
* TP (``type_prediction``): ``(B, T + 1, H, W)`` logits, background + ``T`` nucleus types.

The keys are MONAI's (``monai.apps.pathology`` ``HoVerNetBranch``), so
``monai.apps.pathology.losses.HoVerNetLoss`` and the post-processing transforms take the output
as it is. MONAI's own ``HoVerNet`` has a fixed pre-activation ResNet-50 encoder; here any
``pathssl.models.backbones`` trunk is used:

* convolutional trunks (ResNets): their five taps, after the stem (stride 2) and after each
  stage (``layer1`` .. ``layer4``, strides 4 .. 32);
* ViTs: patch tokens (stride 16) through a small simple-feature-pyramid adapter (Li et al. 2022,
  ViTDet: transposed convolutions to strides 4 and 8, max-pooling to 32) plus a convolutional
  stem on the image for stride 2.

The encoder is frozen (``finetune="frozen"``), partly trained (``"partial"``: the last
``trainable_stages`` ResNet stages or ViT blocks) or fully trained (``"full"``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pathssl.models.backbones import ConvBackbone, ViTBackbone, build_backbone

NP_KEY = "nucleus_prediction"
HV_KEY = "horizontal_vertical"
TP_KEY = "type_prediction"
STRIDE = 32  # input sides are padded to a multiple of this
Finetune = Literal["frozen", "partial", "full"]


def conv_bn_relu(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class ConvEncoder(nn.Module):
    """``(B, 3, H, W)`` -> 5 maps at strides 2, 4, 8, 16, 32 (``channels`` lists their widths):
    the taps of any convolutional trunk (:class:`~pathssl.models.backbones.ConvBackbone`)."""

    def __init__(self, backbone: ConvBackbone) -> None:
        super().__init__()
        self.backbone = backbone
        self.channels: list[int] = list(backbone.tap_channels)
        self.stages: list[nn.Module] = backbone.tap_stages()

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats

    def trainable_groups(self) -> list[nn.Module]:
        """Parameter groups from input to output (the unit of partial fine-tuning)."""
        return list(self.stages)


class ViTEncoder(nn.Module):
    """ViT tokens ``(B, 1 + N, D)`` -> 5 maps at strides 2 .. 32 through a feature pyramid.

    The pyramid reads a token grid at stride 16. A ViT with another patch size ``p`` (e.g. the
    ViT-H/14 foundation encoders) sees the input resized by ``p / 16`` (bilinear, antialiased),
    so that its grid is ``H / 16 x W / 16``: the same tissue per token, at a slightly different
    pixel size."""

    def __init__(self, backbone: ViTBackbone, stem_channels: int = 32) -> None:
        super().__init__()
        self.backbone = backbone
        d = backbone.embed_dim
        self.stem = nn.Sequential(conv_bn_relu(3, stem_channels, stride=2))
        self.up4 = nn.Sequential(
            nn.ConvTranspose2d(d, d // 2, 2, stride=2),
            nn.BatchNorm2d(d // 2),
            nn.GELU(),
            nn.ConvTranspose2d(d // 2, d // 4, 2, stride=2),
        )
        self.up8 = nn.ConvTranspose2d(d, d // 2, 2, stride=2)
        self.same16 = nn.Conv2d(d, d, 1)
        self.down32 = nn.MaxPool2d(2)
        self.channels: list[int] = [stem_channels, d // 4, d // 2, d, d]

    def forward(self, x: Tensor) -> list[Tensor]:
        b, _, h, w = x.shape
        p = self.backbone.patch_size
        xv = x
        if p != 16:  # a grid of h/16 x w/16 tokens for any patch size
            size = (h // 16 * p, w // 16 * p)
            xv = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        tokens = self.backbone.forward_features(xv)[:, 1:]  # (B, N, D), class token dropped
        grid = tokens.transpose(1, 2).reshape(b, -1, h // 16, w // 16)
        return [self.stem(x), self.up4(grid), self.up8(grid), self.same16(grid), self.down32(grid)]

    def trainable_groups(self) -> list[nn.Module]:
        """Patch embedding, then one group per block (the final LayerNorm goes with the last
        block, so ``trainable_stages=N`` trains exactly the last N blocks)."""
        vit = self.backbone
        *blocks, last = list(vit.encoder.layers)
        return [vit.conv_proj, *blocks, nn.Sequential(last, vit.encoder.ln)]


class BranchDecoder(nn.Module):
    """Top-down U-Net/FPN decoder: deepest map upsampled x2 per level, plus a 1x1 lateral of the
    skip, then conv-BN-ReLU; a last x2 upsampling reaches the input resolution.

    ``in_channels``/``widths``: per level, shallow (stride 2) to deep (stride 32).
    ``(features at strides 2..32) -> (B, widths[0], H, W)``.
    """

    def __init__(self, in_channels: Sequence[int], widths: Sequence[int]) -> None:
        super().__init__()
        if len(in_channels) != len(widths):
            raise ValueError("in_channels and widths need one entry per level")
        self.lateral = nn.ModuleList(
            nn.Conv2d(c, w, 1) for c, w in zip(in_channels, widths, strict=True)
        )
        self.reduce = nn.ModuleList(
            nn.Conv2d(widths[i + 1], widths[i], 1) for i in range(len(widths) - 1)
        )
        self.blocks = nn.ModuleList(conv_bn_relu(w, w) for w in widths)
        self.final = conv_bn_relu(widths[0], widths[0])

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        x = self.blocks[-1](self.lateral[-1](feats[-1]))
        for i in range(len(feats) - 2, -1, -1):
            x = F.interpolate(x, size=feats[i].shape[-2:], mode="bilinear", align_corners=False)
            x = self.blocks[i](self.reduce[i](x) + self.lateral[i](feats[i]))
        x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        out: Tensor = self.final(x)
        return out


class HoVerNetHead(nn.Module):
    """NP / HV / TP outputs from encoder features; one decoder per branch as in HoVer-Net, or a
    shared decoder with three 1x1 outputs (``shared_decoder=True``, cheaper on a CPU)."""

    def __init__(
        self,
        in_channels: Sequence[int],
        num_types: int,
        widths: Sequence[int] = (32, 64, 96, 128, 256),
        shared_decoder: bool = False,
    ) -> None:
        super().__init__()
        self.shared = shared_decoder
        outs = {NP_KEY: 2, HV_KEY: 2, TP_KEY: num_types + 1}
        n_dec = 1 if shared_decoder else 3
        self.decoders = nn.ModuleList(BranchDecoder(in_channels, widths) for _ in range(n_dec))
        self.outputs = nn.ModuleDict({k: nn.Conv2d(widths[0], c, 1) for k, c in outs.items()})

    def forward(self, feats: Sequence[Tensor]) -> dict[str, Tensor]:
        if self.shared:
            x = self.decoders[0](feats)
            return {k: conv(x) for k, conv in self.outputs.items()}
        return {
            k: conv(dec(feats))
            for (k, conv), dec in zip(self.outputs.items(), self.decoders, strict=True)
        }


class NucleiModel(nn.Module):
    """Encoder + :class:`HoVerNetHead`, with the input normalisation inside.

    ``forward(x)``: ``x`` ``(B, 3, H, W)`` RGB, uint8 or float on a 0..255 scale, any ``H, W``
    (reflect-padded to a multiple of 32 inside, outputs cropped back) ->
    ``{NP_KEY: (B, 2, H, W), HV_KEY: (B, 2, H, W), TP_KEY: (B, T + 1, H, W)}``.
    """

    def __init__(
        self,
        encoder: ConvEncoder | ViTEncoder,
        head: HoVerNetHead,
        mean: Sequence[float],
        std: Sequence[float],
        finetune: Finetune = "full",
        trainable_stages: int = 2,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.mean: Tensor
        self.std: Tensor
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        self.finetune = finetune
        self.frozen: list[nn.Module] = []
        self.set_finetune(finetune, trainable_stages)

    def set_finetune(self, finetune: Finetune, trainable_stages: int = 2) -> None:
        """Freeze the whole trunk, all but its last ``trainable_stages`` groups, or nothing.
        Frozen groups stay in eval mode (BatchNorm statistics kept) when training."""
        groups = self.encoder.trainable_groups()
        if finetune == "full":
            n_frozen = 0
        elif finetune == "partial":
            n_frozen = max(len(groups) - trainable_stages, 0)
        elif finetune == "frozen":
            n_frozen = len(groups)
        else:
            raise ValueError(f"finetune must be frozen, partial or full, got {finetune!r}")
        for g in groups:
            g.requires_grad_(True)
        self.frozen = groups[:n_frozen]
        for g in self.frozen:
            g.requires_grad_(False)
        # trunk parameters outside the groups (ViT class token, position embeddings) sit at the
        # input end: trained only with the whole trunk
        covered = {id(p) for g in groups for p in g.parameters()}
        for p in self.encoder.backbone.parameters():
            if id(p) not in covered:
                p.requires_grad_(n_frozen == 0)
        self.finetune = finetune
        self.train(self.training)

    def train(self, mode: bool = True) -> NucleiModel:
        super().train(mode)
        for g in self.frozen:
            g.eval()
        return self

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        h, w = x.shape[-2:]
        x = (x.float() / 255.0 - self.mean) / self.std
        ph, pw = (-h) % STRIDE, (-w) % STRIDE
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="reflect" if min(h, w) > max(ph, pw) else "constant")
        out = self.head(self.encoder(x))
        return {k: v[..., :h, :w] for k, v in out.items()}


def build_nuclei_model(
    backbone: str,
    num_types: int,
    *,
    backbone_params: dict[str, object] | None = None,
    trunk_state: dict[str, Tensor] | None = None,
    mean: Sequence[float] = (0.5, 0.5, 0.5),
    std: Sequence[float] = (0.25, 0.25, 0.25),
    finetune: Finetune = "full",
    trainable_stages: int = 2,
    widths: Sequence[int] = (32, 64, 96, 128, 256),
    shared_decoder: bool = False,
) -> NucleiModel:
    """A nuclei model on the registered ``backbone``; ``trunk_state``: pretrained trunk weights
    (torchvision names, e.g. a pretraining checkpoint's ``"trunk"``), loaded strictly."""
    trunk = build_backbone(backbone, **(backbone_params or {}))
    if trunk_state is not None:
        trunk.load_state_dict(trunk_state, strict=True)
    encoding = getattr(trunk, "set_input_normalisation", None)
    if encoding is not None:  # a trunk that undoes the input normalisation (split trunks)
        encoding(list(mean), list(std))
    encoder: ConvEncoder | ViTEncoder = (
        ViTEncoder(trunk) if isinstance(trunk, ViTBackbone) else ConvEncoder(trunk)
    )
    head = HoVerNetHead(encoder.channels, num_types, widths, shared_decoder)
    return NucleiModel(encoder, head, mean, std, finetune, trainable_stages)
