"""Training data over tile stores: a dataset over many stores with QC filters, a resumable
(optionally slide-balanced, DDP-sharded) sampler and collates that keep tiles as uint8 so that
augmentation runs batched on the training device.

Example::

    ds = TileDataset(["tiles/"], min_tissue=0.6, max_pen=0.05)
    sampler = ResumableSampler(ds.slide_index, seed=0, balance_slides=True)
    loader = DataLoader(ds, batch_size=64, sampler=sampler, collate_fn=collate_uint8)
    batch = next(iter(loader))  # {"image": (64, 3, 224, 224) uint8, "index": (64,) int64}
"""

from pathssl.data.dataset import (
    EmptyDatasetError,
    TileDataset,
    collate_jpeg,
    collate_uint8,
    decode_jpeg_batch,
    tile_mean_std,
)
from pathssl.data.sampler import ResumableSampler

__all__ = [
    "EmptyDatasetError",
    "ResumableSampler",
    "TileDataset",
    "collate_jpeg",
    "collate_uint8",
    "decode_jpeg_batch",
    "tile_mean_std",
]
