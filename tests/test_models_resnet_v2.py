"""ResNet-v2 (GroupNorm + Weight Standardisation, BiT): sizes against the published parameter
counts, the forward against an independent functional reference written here, the five taps,
the width multiplier, and SimCLR through the one training loop on a ResNet-v2 trunk."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pathssl.models import BACKBONES, build_backbone
from pathssl.models.backbones import ConvBackbone
from pathssl.models.resnet_v2 import ResNetV2Backbone, StdConv2d


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)


def _count(name: str, **kw: object) -> int:
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = build_backbone(name, **kw)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("name", "embed", "millions_with_1k_head"),
    # timm's model cards of the BiT weights (trunk + a 1,000-class 1x1 conv head)
    [
        ("resnetv2_50x1", 2048, 25.55),
        ("resnetv2_50x3", 6144, 217.32),
        ("resnetv2_101x1", 2048, 44.54),
    ],
)
def test_bit_sizes_match_published_parameter_counts(
    name: str, embed: int, millions_with_1k_head: float
) -> None:
    assert name in BACKBONES.names()
    with torch.device("meta"):
        model = build_backbone(name)
    assert isinstance(model, ConvBackbone) and model.embed_dim == embed
    head = embed * 1000 + 1000
    assert round((_count(name) + head) / 1e6, 2) == millions_with_1k_head


def test_width_multiplier_scales_every_channel() -> None:
    one = build_backbone("resnetv2", depth=14, width=1)
    two = build_backbone("resnetv2", depth=14, width=2)
    assert isinstance(one, ResNetV2Backbone) and isinstance(two, ResNetV2Backbone)
    assert one.tap_channels == [64, 256, 512, 1024, 2048]
    assert two.tap_channels == [2 * c for c in one.tap_channels]
    assert two.embed_dim == 4096
    assert _count("resnetv2", depth=50, width=3) == _count("resnetv2_50x3")
    with pytest.raises(ValueError, match="multiple of the 32 GroupNorm groups"):
        build_backbone("resnetv2", width=0.75)
    with pytest.raises(ValueError, match="depth 34"):
        build_backbone("resnetv2", depth=34)


def _ref_ws(w: torch.Tensor) -> torch.Tensor:
    """Weight standardisation in float64 numpy: per output filter, zero mean, unit variance."""
    a = w.detach().double().numpy()
    flat = a.reshape(a.shape[0], -1)
    mu = flat.mean(1)[:, None, None, None]
    var = ((flat - flat.mean(1, keepdims=True)) ** 2).mean(1)[:, None, None, None]
    return torch.from_numpy((a - mu) / np.sqrt(var + 1e-10))


def _ref_forward(sd: dict[str, torch.Tensor], layers: list[int], x: torch.Tensor) -> list:
    """The BiT forward, written with functional ops from the state dict (float64)."""

    def conv(x: torch.Tensor, key: str, stride: int = 1) -> torch.Tensor:
        w = _ref_ws(sd[key])
        return F.conv2d(x, w, stride=stride, padding=w.shape[-1] // 2)

    def gn_relu(x: torch.Tensor, key: str) -> torch.Tensor:
        return F.relu(F.group_norm(x, 32, sd[key + ".weight"].double(), sd[key + ".bias"].double()))

    x = x.double()
    taps = [conv(x, "stem.conv.weight", 2)]
    x = F.max_pool2d(F.pad(taps[0], (1, 1, 1, 1), value=0.0), 3, 2)
    for s, units in enumerate(layers):
        for u in range(units):
            p = f"stages.{s}.blocks.{u}."
            stride = 2 if s > 0 and u == 0 else 1
            pre = gn_relu(x, p + "norm1")
            short = conv(pre, p + "downsample.conv.weight", stride) if u == 0 else x
            h = conv(pre, p + "conv1.weight")
            h = conv(gn_relu(h, p + "norm2"), p + "conv2.weight", stride)
            x = conv(gn_relu(h, p + "norm3"), p + "conv3.weight") + short
        taps.append(x)
    taps[-1] = gn_relu(x, "norm")
    return taps


def test_forward_and_taps_match_functional_reference() -> None:
    model = build_backbone("resnetv2", depth=26, width=0.5).eval()
    assert isinstance(model, ResNetV2Backbone)
    with torch.no_grad():  # non-trivial norms, so GN's affine parameters matter
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(2, 3, 64, 96)
    ref = _ref_forward(model.state_dict(), model.layers, x)
    with torch.no_grad():  # both in float64: differences are the implementation's, not rounding
        model.double()
        taps = model.forward_taps(x.double())
        pooled = model(x.double())
    assert [t.shape[1] for t in taps] == model.tap_channels
    for i, (t, r) in enumerate(zip(taps, ref, strict=True)):
        assert t.shape[-2:] == (64 >> (i + 1), 96 >> (i + 1))
        torch.testing.assert_close(t, r, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(pooled, ref[-1].mean(dim=(2, 3)), rtol=1e-9, atol=1e-9)
    assert (taps[-1] >= 0).all()  # the final pre-activation GN-ReLU belongs to the last stage


def test_weight_standardisation_is_scale_and_shift_invariant() -> None:
    conv = StdConv2d(8, 4, 3, padding=1, bias=False)
    w = conv.standardized_weight().detach().reshape(4, -1)
    torch.testing.assert_close(w.mean(1), torch.zeros(4), atol=1e-6, rtol=0)
    torch.testing.assert_close(w.var(1, unbiased=False), torch.ones(4), atol=1e-5, rtol=0)
    x = torch.randn(2, 8, 10, 10)
    before = conv(x)
    with torch.no_grad():
        conv.weight.mul_(7.0).add_(0.25)  # the same affine change of every filter's weights
    torch.testing.assert_close(conv(x), before, atol=1e-5, rtol=1e-5)
    plain = F.conv2d(x, conv.weight, padding=1)
    assert not torch.allclose(plain, before, atol=1e-2)


def test_every_norm_is_groupnorm_with_32_groups() -> None:
    model = build_backbone("resnetv2_tiny")
    kinds = {type(m).__name__ for m in model.modules()}
    assert "BatchNorm2d" not in kinds
    norms = [m for m in model.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert len(norms) == 3 * 4 + 1 and all(m.num_groups == 32 for m in norms)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(isinstance(m, StdConv2d) for m in convs)


@pytest.fixture(scope="module")
def store(cmu_slide: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiling import tile_slides

    out = tmp_path_factory.mktemp("tiles")
    tile_slides([cmu_slide], out, mpp=0.5, size=224, progress=False, report=False)
    return out


def test_simclr_two_steps_on_resnetv2_tiny_through_the_loop(store: Path, tmp_path: Path) -> None:
    """Registry-style check: SimCLR on a ResNet-v2 trunk, 2 steps through the one loop; the
    checkpoint's trunk loads back by name (``pathssl eval`` reads it the same way)."""
    from pathssl.models.pretrained import load_pretrained
    from pathssl.train import build_trainer, load_config
    from pathssl.train.logger import read_metrics

    overrides = [
        "method.name=simclr",
        "method.params={proj_hidden_dim: 64, proj_dim: 32}",
        "model.backbone=resnetv2",
        "model.params={depth: 14, width: 0.5}",
        "augment.params={size: 64}",
        f"data.stores=[{store}]",
        "data.batch_size=4",
        "data.num_workers=0",
        "data.norm_tiles=8",
        "optim.name=adamw",
        "optim.lr=0.0005",
        "optim.lr_scaling=none",
        "train.max_steps=2",
        "train.ckpt_every=2",
        "train.log_every=1",
        f"train.out_dir={tmp_path}",
        "train.threads=1",
        "train.progress=false",
    ]
    trainer = build_trainer(load_config(None, overrides))
    before = {k: v.clone() for k, v in trainer.method.backbone.state_dict().items()}
    trainer.fit()
    losses = [r["loss"] for r in read_metrics(tmp_path / "metrics.jsonl") if r["kind"] == "train"]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    after = trainer.method.backbone.state_dict()
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(moved) > len(before) // 2
    trunk, meta = load_pretrained(tmp_path / "last.pt")
    assert meta["backbone"] == "resnetv2" and meta["backbone_params"] == {"depth": 14, "width": 0.5}
    assert isinstance(trunk, ResNetV2Backbone) and trunk.embed_dim == 1024
    for k, v in trunk.state_dict().items():
        torch.testing.assert_close(v, after[k].cpu())
