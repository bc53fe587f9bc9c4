"""ViT variants that torchvision's ``VisionTransformer`` cannot express, as used by published
pathology foundation encoders: register tokens (Darcet et al. 2024, "Vision Transformers Need
Registers"), LayerScale (Touvron et al. 2021, CaiT) and SwiGLU MLPs (Shazeer 2020; the DINOv2 /
Virchow blocks), plus the larger sizes ViT-L/16 and ViT-H/14 (Dosovitskiy et al. 2021).

:class:`ViTVariant` is a :class:`~pathssl.models.backbones.ViTBackbone` whose only difference is
its block stack, ``encoder.layers`` (a :class:`BlockStack`): everything else (patch embedding,
position embeddings and their interpolation, class token, ``forward_features``,
``forward_masked``, ``encode``) is inherited. The stack inserts the ``R`` register tokens after
the class token, runs the blocks and drops the registers again, so ``forward_features`` still
returns ``(B, 1 + N, D)``: the class token then the patch tokens (dense heads see a grid).

Parameter names stay torchvision's where the layer is the same (``ln_1``, ``self_attention``,
``ln_2``, ``mlp.0`` / ``mlp.3``); the additions are ``encoder.layers.registers`` ``(1, R, D)``
(register tokens with any position embedding of theirs folded in), ``ls_1.gamma`` /
``ls_2.gamma`` ``(D,)`` and, for SwiGLU, ``mlp.w12`` (``D -> 2 * mlp_dim``, gate half first)
and ``mlp.w3`` (``mlp_dim -> D``). A variant without registers, LayerScale or SwiGLU has exactly
``ViTBackbone``'s state dict.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.vision_transformer import MLPBlock

from pathssl.models.backbones import BACKBONES, ViTBackbone

MLP_KINDS = ("gelu", "swiglu")


class LayerScale(nn.Module):
    """Per-channel scale of a residual branch: ``(..., D) -> (..., D) * gamma``."""

    def __init__(self, dim: int, init: float = 1e-5) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class SwiGLU(nn.Module):
    """``(..., D) -> (..., D)``: ``w3(silu(a) * b)`` with ``a, b`` the two halves of ``w12(x)``
    (timm's ``SwiGLUPacked``, DINOv2's ``SwiGLUFFN``)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.w12(x).chunk(2, dim=-1)
        out: Tensor = self.w3(F.silu(a) * b)
        return out


class VariantBlock(nn.Module):
    """Pre-norm transformer block ``(B, T, D) -> (B, T, D)``:
    ``x + ls_1(attn(ln_1(x)))`` then ``x + ls_2(mlp(ln_2(x)))`` (LayerNorm eps 1e-6)."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, layer_scale: bool, mlp: str) -> None:
        super().__init__()
        if mlp not in MLP_KINDS:
            raise ValueError(f"mlp must be one of {MLP_KINDS}, got {mlp!r}")
        self.ln_1 = nn.LayerNorm(dim, eps=1e-6)
        self.self_attention = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.ls_1: nn.Module = LayerScale(dim) if layer_scale else nn.Identity()
        self.ln_2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp: nn.Module = (
            SwiGLU(dim, mlp_dim) if mlp == "swiglu" else MLPBlock(dim, mlp_dim, 0.0)
        )
        self.ls_2: nn.Module = LayerScale(dim) if layer_scale else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        y = self.ln_1(x)
        y, _ = self.self_attention(y, y, y, need_weights=False)
        x = x + self.ls_1(y)
        return x + self.ls_2(self.mlp(self.ln_2(x)))


class BlockStack(nn.Sequential):
    """The blocks (``encoder_layer_0`` ...) and ``registers`` ``(1, R, D)``: ``(B, 1 + N, D)``
    class token first -> ``(B, 1 + N, D)``, registers inserted after the class token for the
    blocks and dropped from the output."""

    def __init__(self, blocks: list[nn.Module], dim: int, reg_tokens: int) -> None:
        super().__init__(OrderedDict((f"encoder_layer_{i}", b) for i, b in enumerate(blocks)))
        self.num_registers = reg_tokens
        if reg_tokens:
            self.registers = nn.Parameter(torch.randn(1, reg_tokens, dim) * 1e-6)

    def forward(self, x: Tensor) -> Tensor:
        r = self.num_registers
        if r:
            regs = self.registers.expand(x.shape[0], -1, -1).to(x.dtype)
            x = torch.cat([x[:, :1], regs, x[:, 1:]], dim=1)
        for block in self:
            x = block(x)
        return torch.cat([x[:, :1], x[:, 1 + r :]], dim=1) if r else x


class ViTVariant(ViTBackbone):
    """A ViT with ``reg_tokens`` registers, LayerScale (``layer_scale``) and a ``gelu`` or
    ``swiglu`` MLP of width ``mlp_dim`` (the width entering the second linear layer)."""

    def __init__(
        self,
        image_size: int,
        patch_size: int,
        depth: int,
        num_heads: int,
        hidden_dim: int,
        mlp_dim: int,
        reg_tokens: int = 0,
        layer_scale: bool = False,
        mlp: str = "gelu",
    ) -> None:
        super().__init__(image_size, patch_size, 0, num_heads, hidden_dim, mlp_dim)
        blocks: list[nn.Module] = [
            VariantBlock(hidden_dim, num_heads, mlp_dim, layer_scale, mlp) for _ in range(depth)
        ]
        self.encoder.layers = BlockStack(blocks, hidden_dim, reg_tokens)


def _variant(
    image_size: int,
    size: tuple[int, int, int, int, int],
    reg_tokens: int,
    layer_scale: bool,
    mlp: str,
    mlp_dim: int | None,
) -> ViTVariant:
    patch, depth, heads, hidden, default_mlp = size
    dim = default_mlp if mlp_dim is None else mlp_dim
    return ViTVariant(image_size, patch, depth, heads, hidden, dim, reg_tokens, layer_scale, mlp)


@BACKBONES.register("vit_large_patch16")
def vit_large_patch16(
    image_size: int = 224,
    reg_tokens: int = 0,
    layer_scale: bool = False,
    mlp: str = "gelu",
    mlp_dim: int | None = None,
) -> ViTVariant:
    """ViT-L/16: hidden 1024, 16 heads, depth 24, MLP 4096 (UNI: ``layer_scale=True``)."""
    return _variant(image_size, (16, 24, 16, 1024, 4096), reg_tokens, layer_scale, mlp, mlp_dim)


@BACKBONES.register("vit_huge_patch14")
def vit_huge_patch14(
    image_size: int = 224,
    reg_tokens: int = 0,
    layer_scale: bool = False,
    mlp: str = "gelu",
    mlp_dim: int | None = None,
) -> ViTVariant:
    """ViT-H/14: hidden 1280, 16 heads, depth 32, MLP 5120 (Virchow: ``layer_scale=True,
    mlp="swiglu", mlp_dim=3416``; Virchow2 adds ``reg_tokens=4``)."""
    return _variant(image_size, (14, 32, 16, 1280, 5120), reg_tokens, layer_scale, mlp, mlp_dim)


@BACKBONES.register("vit_tiny_reg")
def vit_tiny_reg(image_size: int = 64, patch_size: int = 16) -> ViTVariant:
    """A test-size variant with every addition: depth 2, hidden 64, 2 heads, 2 registers,
    LayerScale, SwiGLU MLP 128."""
    return ViTVariant(image_size, patch_size, 2, 2, 64, 128, 2, True, "swiglu")


@BACKBONES.register("vit")
def vit(
    image_size: int = 224,
    patch_size: int = 16,
    depth: int = 12,
    num_heads: int = 12,
    hidden_dim: int = 768,
    mlp_dim: int = 3072,
    reg_tokens: int = 0,
    layer_scale: bool = False,
    mlp: str = "gelu",
) -> ViTVariant:
    """A ViT of any size (external checkpoints of sizes without a name of their own)."""
    return ViTVariant(
        image_size, patch_size, depth, num_heads, hidden_dim, mlp_dim, reg_tokens, layer_scale, mlp
    )
