"""Dataset over tile stores (QC filters, clear errors), uint8 collates, and the resumable,
slide-balanced, DDP-sharded sampler."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from pathssl.data import (
    EmptyDatasetError,
    ResumableSampler,
    TileDataset,
    collate_jpeg,
    collate_uint8,
    decode_jpeg_batch,
    tile_mean_std,
)


@pytest.fixture(scope="module")
def store_dir(cmu_slide: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiling import tile_slides

    out = tmp_path_factory.mktemp("tiles")
    tile_slides([cmu_slide], out, mpp=0.5, size=224, progress=False, report=False)
    return out


def test_dataset_reads_tiles_and_filters_by_qc(store_dir: Path) -> None:
    from tiling import open_store
    from tiling.store import find_stores

    (path,) = find_stores([store_dir])
    s = open_store(path)
    full = TileDataset([store_dir])
    assert len(full) == len(s) and full.tile_mpp == pytest.approx(s.mpp)
    item = full[5]
    assert item["index"] == 5 and item["image"].dtype == np.uint8
    np.testing.assert_array_equal(item["image"], s[5])
    cut = float(np.median(s.qc["tissue"]))
    ds = TileDataset([path], min_tissue=cut, max_pen=0.5)
    expect = np.flatnonzero((s.qc["tissue"] >= cut) & (s.qc["pen"] <= 0.5))
    assert 0 < len(ds) < len(s)
    np.testing.assert_array_equal(ds.tile_index, expect)
    np.testing.assert_array_equal(ds[0]["image"], s[int(expect[0])])
    np.testing.assert_array_equal(ds.coords(), s.coords[expect])
    two = TileDataset([path, path])  # the same store twice = two "slides"
    assert len(two) == 2 * len(s) and set(two.slide_index.tolist()) == {0, 1}


def test_clear_errors(store_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TileDataset([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(EmptyDatasetError, match="no tile stores"):
        TileDataset([tmp_path / "empty"])
    with pytest.raises(EmptyDatasetError, match="data.stores is empty"):
        TileDataset([])
    with pytest.raises(EmptyDatasetError, match=r"removed all \d+ tiles"):
        TileDataset([store_dir], min_tissue=1.01)


def test_collates_keep_uint8(store_dir: Path) -> None:
    ds = TileDataset([store_dir])
    batch = collate_uint8([ds[i] for i in range(3)])
    assert batch["image"].shape == (3, 3, 224, 224) and batch["image"].dtype == torch.uint8
    assert batch["index"].tolist() == [0, 1, 2]
    np.testing.assert_array_equal(batch["image"][1].permute(1, 2, 0).numpy(), ds[1]["image"])
    enc = TileDataset([store_dir], encoded=True)
    jb = collate_jpeg([enc[i] for i in range(3)])
    decoded = decode_jpeg_batch(jb["jpeg"], "cpu")
    assert decoded.shape == (3, 3, 224, 224) and decoded.dtype == torch.uint8
    # libjpeg-turbo vs the store's decoder: the same JPEG, at most rounding differences
    diff = (decoded.int() - batch["image"].int()).abs()
    assert float(diff.float().mean()) < 1.0


def test_mean_std(store_dir: Path) -> None:
    ds = TileDataset([store_dir])
    mean, std = tile_mean_std(ds, n=len(ds))
    x = np.stack([ds.image(i) for i in range(len(ds))]).reshape(-1, 3) / 255.0
    np.testing.assert_allclose(mean, x.mean(0), atol=1e-6)
    np.testing.assert_allclose(std, x.std(0), atol=1e-6)
    assert tile_mean_std(ds, n=8, seed=1) == tile_mean_std(ds, n=8, seed=1)


def take(sampler: ResumableSampler, n: int) -> list[int]:
    return list(itertools.islice(iter(sampler), n))


def test_sampler_epochs_are_permutations_and_resume_exactly() -> None:
    slides = np.repeat(np.arange(3), [5, 7, 9])
    s = ResumableSampler(slides, seed=3)
    stream = take(s, 3 * 21)
    for e in range(3):
        assert sorted(stream[e * 21 : (e + 1) * 21]) == list(range(21))
    assert stream[:21] != stream[21:42]
    for consumed in (0, 5, 21, 30):
        r = ResumableSampler(slides, seed=0)
        r.load_state_dict(s.state_dict(consumed))
        assert take(r, 20) == stream[consumed : consumed + 20]
    with pytest.raises(ValueError, match="dataset of 21 tiles"):
        ResumableSampler(slides[:10]).load_state_dict(s.state_dict(4))


def test_sampler_ddp_shards_are_disjoint_and_resume() -> None:
    slides = np.zeros(10, dtype=np.int64)
    ranks = [ResumableSampler(slides, seed=1, num_replicas=3, rank=r) for r in range(3)]
    shards = [take(r, 4) for r in ranks]  # per rank: ceil(10 / 3) = 4 per epoch
    flat = sum(shards, [])
    assert len(flat) == 12 and set(flat) == set(range(10))  # 2 padded repeats
    stream1 = take(ranks[1], 12)
    r1 = ResumableSampler(slides, seed=1, num_replicas=3, rank=1)
    r1.load_state_dict(ranks[1].state_dict(consumed=3 * 6))  # the job consumed 18 samples
    assert take(r1, 6) == stream1[6:12]


def test_slide_balanced_sampling() -> None:
    slides = np.repeat(np.arange(2), [90, 10])
    plain = np.bincount(slides[take(ResumableSampler(slides, seed=0), 5000)], minlength=2)
    balanced = np.bincount(
        slides[take(ResumableSampler(slides, seed=0, balance_slides=True), 5000)], minlength=2
    )
    assert plain[1] / 5000 == pytest.approx(0.1, abs=0.02)
    assert balanced[1] / 5000 == pytest.approx(0.5, abs=0.05)


def test_loader_workers_give_the_same_batches(store_dir: Path) -> None:
    ds = TileDataset([store_dir])

    def batches(workers: int) -> list[torch.Tensor]:
        sampler = ResumableSampler(ds.slide_index, seed=2)
        sampler.load_state_dict(sampler.state_dict(consumed=40))  # wraps into epoch 2
        loader = torch.utils.data.DataLoader(
            ds, batch_size=8, sampler=sampler, num_workers=workers, collate_fn=collate_uint8
        )
        it = iter(loader)
        return [next(it)["index"] for _ in range(3)]

    expect = take(ResumableSampler(ds.slide_index, seed=2), 40 + 24)[40:]
    for got in (batches(0), batches(2)):
        assert torch.cat(got).tolist() == expect
