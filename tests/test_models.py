"""Backbones and heads: shapes, torchvision compatibility of the trunk, dependency direction."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torchvision

from pathssl.models import BACKBONES, ViTBackbone, build_backbone
from pathssl.ssl.heads import DINOHead, MLPHead


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)


def test_registry_names() -> None:
    assert {"resnet18", "resnet50", "vit_small_patch16", "vit_base_patch16", "vit_tiny"} <= set(
        BACKBONES.names()
    )
    with pytest.raises(KeyError, match="known"):
        build_backbone("resnet1000")


def test_resnet18_shapes() -> None:
    m = build_backbone("resnet18")
    x = torch.randn(2, 3, 64, 64)
    assert m.embed_dim == 512
    assert m(x).shape == (2, 512)
    assert m.forward_features(x).shape == (2, 512, 2, 2)


@pytest.mark.parametrize(
    ("name", "reference"),
    [("resnet18", torchvision.models.resnet18), ("resnet50", torchvision.models.resnet50)],
)
def test_resnet_trunk_loads_into_torchvision(name: str, reference: object) -> None:
    m = build_backbone(name)
    sd = m.state_dict()
    plain = reference()  # type: ignore[operator]
    result = plain.load_state_dict(sd, strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"]
    assert result.unexpected_keys == []
    plain.fc = torch.nn.Identity()
    m.eval()
    plain.eval()
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(plain(x), m(x))


def test_vit_small_size_and_loads_into_torchvision() -> None:
    m = build_backbone("vit_small_patch16", image_size=224)
    assert isinstance(m, ViTBackbone)
    assert m.embed_dim == 384 and len(m.encoder.layers) == 12
    block = m.encoder.layers[0]
    assert block.num_heads == 6 and block.mlp[0].out_features == 1536
    plain = torchvision.models.VisionTransformer(224, 16, 12, 6, 384, 1536)
    result = plain.load_state_dict(m.state_dict(), strict=False)
    assert sorted(result.missing_keys) == ["heads.head.bias", "heads.head.weight"]
    assert result.unexpected_keys == []


@pytest.mark.slow
def test_vit_base_loads_into_torchvision_vit_b_16() -> None:
    m = build_backbone("vit_base_patch16")
    assert m.embed_dim == 768
    result = torchvision.models.vit_b_16().load_state_dict(m.state_dict(), strict=False)
    assert sorted(result.missing_keys) == ["heads.head.bias", "heads.head.weight"]
    assert result.unexpected_keys == []


def test_vit_tiny_matches_torchvision_forward_and_takes_other_sizes() -> None:
    m = build_backbone("vit_tiny", image_size=64)
    assert isinstance(m, ViTBackbone)
    m.eval()
    x = torch.randn(2, 3, 64, 64)
    plain = torchvision.models.VisionTransformer(64, 16, 2, 2, 64, 128, num_classes=10)
    plain.load_state_dict(m.state_dict(), strict=False)
    plain.heads = torch.nn.Identity()  # type: ignore[assignment]
    plain.eval()
    torch.testing.assert_close(m(x), plain(x))
    assert m.forward_features(x).shape == (2, 17, 64)
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 64)  # interpolated positions
    with pytest.raises(ValueError, match="divisible"):
        m(torch.randn(1, 3, 40, 40))


def test_vit_forward_masked() -> None:
    m = build_backbone("vit_tiny").eval()
    x = torch.randn(2, 3, 64, 64)
    all_ids = torch.arange(16).expand(2, -1)
    torch.testing.assert_close(m.forward_masked(x, all_ids), m.forward_features(x))
    keep = torch.tensor([[3, 0, 7, 12], [15, 1, 2, 5]])
    out = m.forward_masked(x, keep)
    assert out.shape == (2, 5, 64)
    # the same as running the encoder on the kept tokens by hand
    tokens, pos = m.patch_embed(x)
    for b in range(2):
        sel = torch.cat([torch.zeros(1, dtype=torch.long), keep[b] + 1])
        seq = torch.cat([m.class_token[0], tokens[b, keep[b]]]) + pos[0, sel]
        ref = m.encoder.ln(m.encoder.layers(seq[None]))
        torch.testing.assert_close(out[b : b + 1], ref)


def test_heads() -> None:
    head = MLPHead(16, 32, 8, num_layers=3, last_bn=True)
    assert head(torch.randn(4, 16)).shape == (4, 8)
    dino = DINOHead(16, 50, hidden_dim=32, bottleneck_dim=8)
    assert dino(torch.randn(4, 16)).shape == (4, 50)
    assert not dino.last_gain.requires_grad
    # weight-normalised last layer: logits are cosines, bounded by 1
    assert dino(torch.randn(4, 16) * 100).abs().max() <= 1 + 1e-5


def test_models_do_not_import_ssl() -> None:
    code = (
        "import sys, pathssl.models; "
        "bad = [m for m in sys.modules if m.startswith(('pathssl.ssl', 'pathssl.augment', "
        "'pathssl.train', 'pathssl.cli'))]; print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_conv_taps_match_torchvision_feature_extraction(name: str) -> None:
    """The five taps equal torchvision's own intermediate outputs of the same weights."""
    from torchvision.models.feature_extraction import create_feature_extractor

    from pathssl.models.backbones import ConvBackbone

    torch.manual_seed(0)
    trunk = build_backbone(name).eval()
    assert isinstance(trunk, ConvBackbone)
    ref = getattr(torchvision.models, name)().eval()
    ref.load_state_dict(trunk.state_dict(), strict=False)
    nodes = {"relu": "s2", "layer1": "s4", "layer2": "s8", "layer3": "s16", "layer4": "s32"}
    want = create_feature_extractor(ref, nodes)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        taps = trunk.forward_taps(x)
        expect = list(want(x).values())
        pooled = trunk(x)
    assert [t.shape[1] for t in taps] == trunk.tap_channels
    for i, (t, e) in enumerate(zip(taps, expect, strict=True)):
        assert t.shape[-2:] == (64 >> (i + 1), 96 >> (i + 1))
        torch.testing.assert_close(t, e)
    torch.testing.assert_close(pooled, expect[-1].mean(dim=(2, 3)))
