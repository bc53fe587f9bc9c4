"""BiT ``.npz`` weights: a file written here in the published key layout (TF names, HWIO
kernels; google-research/big_transfer) at a tiny width loads into the ResNet-v2 trunk exactly,
the first unit's output equals a reference computed here from the file's arrays with TF's
conventions (kernels standardised over H, W, I in HWIO), and bad files fail naming the keys."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pathssl.models.bit import BitLayoutError, load_bit_npz
from pathssl.models.resnet_v2 import ResNetV2Backbone


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def bit_arrays(units: list[int], width: float, head: int | None = 5) -> dict[str, np.ndarray]:
    """Random arrays under BiT's own names and shapes (HWIO kernels), as its .npz files hold."""
    rng = np.random.default_rng(0)
    c = int(64 * width)

    def kernel(h: int, cin: int, cout: int) -> np.ndarray:
        return rng.normal(0, 1, (h, h, cin, cout)).astype(np.float32)

    def norm(ch: int, key: str) -> dict[str, np.ndarray]:
        return {
            f"{key}/group_norm/gamma": (1 + 0.3 * rng.normal(size=ch)).astype(np.float32),
            f"{key}/group_norm/beta": (0.3 * rng.normal(size=ch)).astype(np.float32),
        }

    out = {"resnet/root_block/standardized_conv2d/kernel": kernel(7, 3, c)}
    cin = c
    for b, n in enumerate(units, start=1):
        cout, mid = 4 * c * 2 ** (b - 1), c * 2 ** (b - 1)
        for u in range(1, n + 1):
            key = f"resnet/block{b}/unit{u:02d}"
            first = cin if u == 1 else cout
            out |= norm(first, f"{key}/a") | norm(mid, f"{key}/b") | norm(mid, f"{key}/c")
            out[f"{key}/a/standardized_conv2d/kernel"] = kernel(1, first, mid)
            out[f"{key}/b/standardized_conv2d/kernel"] = kernel(3, mid, mid)
            out[f"{key}/c/standardized_conv2d/kernel"] = kernel(1, mid, cout)
            if u == 1:
                out[f"{key}/a/proj/standardized_conv2d/kernel"] = kernel(1, first, cout)
        cin = cout
    out |= norm(cin, "resnet")
    if head is not None:
        out["resnet/head/conv2d/kernel"] = kernel(1, cin, head)
        out["resnet/head/conv2d/bias"] = rng.normal(size=head).astype(np.float32)
    return out


def write(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    np.savez(path, **arrays)
    return path


def test_round_trip_gives_exactly_the_arrays(tmp_path: Path) -> None:
    arrays = bit_arrays([2, 2, 2, 2], 0.5)
    model, meta = load_bit_npz(write(tmp_path / "BiT-tiny.npz", arrays))
    assert isinstance(model, ResNetV2Backbone) and not model.training
    assert meta["backbone"] == "resnetv2" and meta["backbone_params"] == {"depth": 26, "width": 0.5}
    assert meta["mean"] == meta["std"] == [0.5, 0.5, 0.5] and meta["head_classes"] == 5
    sd = model.state_dict()
    assert len(sd) == len(arrays) - 2  # every array but the upstream head's kernel and bias
    hand = {  # the correspondence, written out for a few keys of each kind
        "resnet/root_block/standardized_conv2d/kernel": "stem.conv.weight",
        "resnet/block1/unit01/a/proj/standardized_conv2d/kernel": "stages.0.blocks.0.downsample.conv.weight",
        "resnet/block3/unit02/b/standardized_conv2d/kernel": "stages.2.blocks.1.conv2.weight",
        "resnet/block4/unit02/c/group_norm/gamma": "stages.3.blocks.1.norm3.weight",
        "resnet/block2/unit01/a/group_norm/beta": "stages.1.blocks.0.norm1.bias",
        "resnet/group_norm/gamma": "norm.weight",
    }
    for src, dst in hand.items():
        a = arrays[src]
        expect = a.transpose(3, 2, 0, 1) if a.ndim == 4 else a
        assert torch.equal(sd[dst], torch.from_numpy(np.ascontiguousarray(expect))), dst
    # and every array sits somewhere in the state dict, exactly
    values = [v.numpy() for v in sd.values()]
    for key, a in arrays.items():
        if "/head/" in key:
            continue
        expect = a.transpose(3, 2, 0, 1) if a.ndim == 4 else a
        assert sum(v.shape == expect.shape and np.array_equal(v, expect) for v in values) == 1


def _tf_conv(x: torch.Tensor, hwio: np.ndarray, stride: int = 1) -> torch.Tensor:
    """A standardised convolution as BiT's TF code defines it: moments over H, W, I of the HWIO
    kernel (biased variance, + 1e-10), then a convolution (float64)."""
    k = hwio.astype(np.float64)
    mean = k.mean(axis=(0, 1, 2), keepdims=True)
    var = k.var(axis=(0, 1, 2), keepdims=True)
    k = (k - mean) / np.sqrt(var + 1e-10)
    w = torch.from_numpy(np.ascontiguousarray(k.transpose(3, 2, 0, 1)))
    return F.conv2d(x, w, stride=stride, padding=k.shape[0] // 2)


def _gn_relu(x: torch.Tensor, gamma: np.ndarray, beta: np.ndarray) -> torch.Tensor:
    """GroupNorm (32 groups, eps 1e-5) and ReLU in numpy."""
    a = x.numpy()
    b, c, h, w = a.shape
    g = a.reshape(b, 32, c // 32, h, w)
    g = (g - g.mean(axis=(2, 3, 4), keepdims=True)) / np.sqrt(
        g.var(axis=(2, 3, 4), keepdims=True) + 1e-5
    )
    out = g.reshape(b, c, h, w) * gamma[None, :, None, None] + beta[None, :, None, None]
    return torch.from_numpy(np.maximum(out, 0.0))


def test_first_unit_matches_reference_from_the_file(tmp_path: Path) -> None:
    arrays = bit_arrays([1, 1, 1, 1], 0.5)
    model, meta = load_bit_npz(write(tmp_path / "w.npz", arrays))
    assert meta["backbone"] == "resnetv2_tiny" and meta["backbone_params"] == {}
    x = torch.from_numpy(np.random.default_rng(1).normal(size=(2, 3, 48, 64)))
    # reference: root block, then block1/unit01, straight from the arrays
    root = _tf_conv(x, arrays["resnet/root_block/standardized_conv2d/kernel"], 2)
    h = F.max_pool2d(F.pad(root, (1, 1, 1, 1)), 3, 2)
    u = "resnet/block1/unit01/"

    def gn(part: str, t: torch.Tensor) -> torch.Tensor:
        return _gn_relu(
            t, arrays[f"{u}{part}/group_norm/gamma"], arrays[f"{u}{part}/group_norm/beta"]
        )

    pre = gn("a", h)
    short = _tf_conv(pre, arrays[f"{u}a/proj/standardized_conv2d/kernel"])
    r = _tf_conv(pre, arrays[f"{u}a/standardized_conv2d/kernel"])
    r = _tf_conv(gn("b", r), arrays[f"{u}b/standardized_conv2d/kernel"])
    ref = _tf_conv(gn("c", r), arrays[f"{u}c/standardized_conv2d/kernel"]) + short
    with torch.no_grad():
        model.double()
        got = model.stages[0].blocks[0](model.stem(x))
        taps = model.forward_taps(x)
    torch.testing.assert_close(taps[0], root, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(taps[1], ref, rtol=1e-9, atol=1e-9)  # one unit: the stage


def test_named_backbone_and_mismatches(tmp_path: Path) -> None:
    deep = write(tmp_path / "deep.npz", bit_arrays([2, 2, 2, 2], 0.5, head=None))
    model, meta = load_bit_npz(deep)
    assert meta["head_classes"] is None and model.layers == [2, 2, 2, 2]
    with pytest.raises(
        BitLayoutError, match=r"units \[2, 2, 2, 2\] and width 0.5 \(resnetv2\), not resnetv2_tiny"
    ):
        load_bit_npz(deep, "resnetv2_tiny")
    tiny = write(tmp_path / "tiny.npz", bit_arrays([1, 1, 1, 1], 0.5))
    model, meta = load_bit_npz(tiny, "resnetv2_tiny")
    assert meta["backbone"] == "resnetv2_tiny" and model.embed_dim == 1024
    with pytest.raises(
        BitLayoutError,
        match=r"\(resnetv2_tiny\), not resnetv2_50x1 \(units \[3, 4, 6, 3\], width 1\)",
    ):
        load_bit_npz(tiny, "resnetv2_50x1")
    with pytest.raises(BitLayoutError, match="not a ResNet-v2"):
        load_bit_npz(tiny, "resnet18")


def test_missing_and_unexpected_keys_are_named(tmp_path: Path) -> None:
    arrays = bit_arrays([1, 1, 1, 1], 0.5)
    gone = "resnet/block2/unit01/b/group_norm/beta"
    broken = {k: v for k, v in arrays.items() if k != gone}
    broken["resnet/block2/unit01/b/batch_norm/moving_mean"] = arrays[gone]
    with pytest.raises(BitLayoutError) as err:
        load_bit_npz(write(tmp_path / "b.npz", broken))
    msg = str(err.value)
    assert f"missing 1 key(s): {gone}" in msg
    assert "unexpected 1 key(s): resnet/block2/unit01/b/batch_norm/moving_mean" in msg
    bad = dict(arrays)
    bad["resnet/group_norm/gamma"] = bad["resnet/group_norm/gamma"][:-32]
    with pytest.raises(BitLayoutError, match=r"resnet/group_norm/gamma has shape \(992,\)"):
        load_bit_npz(write(tmp_path / "s.npz", bad))


def test_not_a_bit_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        load_bit_npz(tmp_path / "nope.npz")
    other = write(tmp_path / "other.npz", {"conv1.weight": np.zeros((64, 3, 7, 7), np.float32)})
    with pytest.raises(BitLayoutError, match=r"not a BiT ResNet-v2 file.*conv1\.weight"):
        load_bit_npz(other)
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip archive at all")
    with pytest.raises(BitLayoutError, match="not a readable .npz archive"):
        load_bit_npz(junk)
