"""The GPU code paths, run on the CPU before a GPU sees them: bf16 autocast, channels_last (CNNs)
and ``torch.compile`` for each registered method, 2 steps through the real loop, with the
compiled bf16 loss checked against an eager fp32 twin on the same inputs and weights; and the
batched JPEG decode on CPU tensors. One ResNet and one ViT method run by default (a compile costs
about a minute on 2 cores); the rest are marked slow."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_train_methods import VIT, build_tiny, csv_source, tiny_overrides, write_hgsc_crops

import pathssl.ssl  # noqa: F401  (registers every method)
from pathssl.ssl.base import METHODS

DEFAULT = {"simclr", "mae"}


@pytest.fixture(scope="module")
def store(cmu_slide: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiling import tile_slides

    out = tmp_path_factory.mktemp("tiles")
    tile_slides([cmu_slide], out, mpp=0.5, size=224, progress=False, report=False)
    return out


@pytest.fixture(scope="module")
def crops(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> object:
    """The labelled stream of the methods that train on labels (real hgsc nucleus crops)."""
    return csv_source(write_hgsc_crops(data_dir, tmp_path_factory.mktemp("crops") / "hgsc"))


PARAMS = [
    pytest.param(name, marks=() if name in DEFAULT else pytest.mark.slow)
    for name in METHODS.names()
]


@pytest.mark.parametrize("method", PARAMS)
def test_bf16_channels_last_compile_on_cpu(
    method: str, store: Path, tmp_path: Path, crops: object
) -> None:
    base = tiny_overrides(method, store, tmp_path / "eager")
    eager = build_tiny(method, [*base, "train.precision=fp32"], crops)
    fast_ov = tiny_overrides(method, store, tmp_path / "fast")
    fast = build_tiny(method, [*fast_ov, "train.precision=bf16", "train.compile=true"], crops)
    assert fast.s.bf16 and not eager.s.bf16
    if method not in VIT:  # what build_trainer does on CUDA for CNNs
        fast.method.to(memory_format=torch.channels_last)
        fast.batch_step.channels_last = True
    for a, b in zip(
        eager.method.state_dict().values(), fast.method.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b)  # same seed: the same initial weights
    inputs = fast.batch_step.prepare(next(iter(fast.loader)))
    if fast.batch_step.channels_last:
        assert inputs[0][0].is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.manual_seed(3)
        ref = float(eager.batch_step.forward(eager.method, inputs)["loss"])
        torch.manual_seed(3)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = float(fast.batch_step.forward(fast.model, inputs)["loss"])
    assert got == pytest.approx(ref, rel=0.05, abs=0.05)  # bf16 rounding, nothing more
    before = [p.detach().clone() for p in fast.params]
    fast.fit()
    assert fast.step == 2
    assert any(not torch.equal(p, q) for p, q in zip(fast.params, before, strict=True))
    assert all(torch.isfinite(p).all() for p in fast.params)


def test_batched_jpeg_decode_on_cpu_tensors(store: Path) -> None:
    """The nvJPEG path (``decode_jpeg_batch`` on encoded tiles) on CPU tensors equals the
    store's own decode of each tile."""
    from pathssl.data import TileDataset, collate_jpeg, decode_jpeg_batch

    ds = TileDataset([str(store)], encoded=True)
    batch = collate_jpeg([ds[i] for i in range(4)])
    images = decode_jpeg_batch(batch["jpeg"], torch.device("cpu"))  # (4, 3, S, S) uint8
    plain = TileDataset([str(store)], encoded=False)
    for i in range(4):
        ref = torch.as_tensor(plain[i]["image"]).permute(2, 0, 1)  # (S, S, 3) -> (3, S, S)
        diff = (images[i].int() - ref.int()).abs()
        assert images[i].shape == ref.shape and images[i].dtype == torch.uint8
        assert float(diff.float().mean()) < 1.0  # two JPEG decoders may differ by rounding
