"""ORL stage 2: correspondence across tiles (Xie et al. 2021, Sec. 3.2), from a stage-1 encoder.

``build_pairs(stores, checkpoint, out)``:

1. proposals of every store, computed once and cached next to it (:mod:`pathssl.orl.cache`);
2. with the stage-1 checkpoint's trunk (:func:`pathssl.models.pretrained.load_pretrained`,
   eval mode, its normalisation): an embedding of every tile and of every proposal (RoI crops of
   ``roi_size`` px by :func:`pathssl.ssl.orl.crop_rois`), L2-normalised; written per chunk of
   tiles to ``OUT/parts/emb-*.npz`` (atomic), so a killed run resumes where it stopped;
3. each tile's ``knn`` nearest tiles by cosine similarity of the image embeddings (itself
   excluded), and for each neighbour the top ``max(1, int(topk_ratio * R))`` RoI pairs (R: the
   tile's proposals) of the ``R x R'`` cosine-similarity matrix, as in the paper's code;
4. ``OUT/pairs.npz`` (atomic), the file :class:`pathssl.ssl.orl.PairsFile` reads in stage 3.

Tiles are those of a :class:`pathssl.data.TileDataset` over ``stores`` with the stage-1 run's QC
filters (``filters``: others), so indices are the training dataset's when stage 3 uses the same
``data.stores`` and filters (the printed command does). Embeddings of all RoIs are held in memory
for the pairing (N tiles x proposals x E x 4 bytes).
"""

from __future__ import annotations

import io
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pathssl.data import TileDataset
from pathssl.models.pretrained import load_pretrained
from pathssl.orl.cache import Proposals, compute_proposals, load_proposals
from pathssl.orl.proposals import ProposalParams
from pathssl.ssl.orl import PAIRS_FORMAT, crop_rois
from pathssl.train.distributed import pick_device
from pathssl.train.embed import embed_tiles
from tiling.atomic import atomic_file, atomic_write
from tiling.errors import UsageError
from tiling.outputs import check_output_dir

FILTERS = ("min_tissue", "max_pen", "max_white", "min_blur")


@dataclass(frozen=True)
class PairParams:
    """``knn`` image neighbours per tile (paper: 10), ``topk_ratio`` of a tile's RoIs kept as
    pairs per neighbour (paper: 0.1), RoI crops of ``roi_size`` px, ``batch_size`` crops per
    forward pass."""

    knn: int = 10
    topk_ratio: float = 0.1
    roi_size: int = 96
    batch_size: int = 64


def image_knn(feats: Tensor, k: int, block: int = 4096) -> tuple[Tensor, Tensor]:
    """``feats`` ``(N, E)`` L2-normalised -> ``(N, k)`` indices of each row's ``k`` most
    cosine-similar other rows (descending) and their similarities."""
    idx, val = [], []
    for lo in range(0, len(feats), block):
        sims = feats[lo : lo + block] @ feats.t()
        rows = torch.arange(lo, lo + len(sims))
        sims[torch.arange(len(sims)), rows] = -float("inf")
        v, i = sims.topk(k, dim=1)
        idx.append(i)
        val.append(v)
    return torch.cat(idx), torch.cat(val)


def pair_rois(query: Tensor, key: Tensor, ratio: float) -> tuple[Tensor, Tensor, Tensor]:
    """The top ``max(1, int(ratio * R))`` entries of the ``(R, R')`` similarity of RoI
    embeddings ``query`` ``(R, E)`` and ``key`` ``(R', E)``: ``(query rows, key rows, sims)``."""
    sims = query @ key.t()
    m = min(max(1, int(ratio * len(query))), sims.numel())
    v, flat = sims.flatten().topk(m)
    return flat // sims.shape[1], flat % sims.shape[1], v


def _checkpoint_filters(meta: dict[str, Any]) -> dict[str, float | None]:
    data = (meta.get("config") or {}).get("data") or {}
    return {k: data.get(k) for k in FILTERS}


def _is_pairs_output(path: Path) -> bool:
    try:
        return bool(json.loads((path / "params.json").read_text()).get("kind") == "orl-pairs")
    except (OSError, ValueError):
        return False


@torch.no_grad()
def _embed_chunk(
    backbone: torch.nn.Module,
    dataset: TileDataset,
    props: list[Proposals],
    rows: range,
    meta: dict[str, Any],
    p: PairParams,
    device: torch.device,
) -> bytes:
    images, rois, counts = [], [], []
    for lo in range(rows.start, rows.stop, p.batch_size):
        idx = list(range(lo, min(rows.stop, lo + p.batch_size)))
        tiles = torch.stack([torch.from_numpy(dataset[i]["image"]) for i in idx])
        tiles = tiles.permute(0, 3, 1, 2).contiguous().to(device)
        images.append(embed_tiles(backbone, tiles, meta["mean"], meta["std"]).cpu())
        boxes = [props[k].of(t)[0] for k, t in map(dataset.locate, idx)]
        counts += [len(b) for b in boxes]
        which = torch.cat([torch.full((len(b),), j) for j, b in enumerate(boxes)])
        crops = crop_rois(tiles, which, torch.from_numpy(np.concatenate(boxes)), p.roi_size)
        for c in crops.split(p.batch_size):
            rois.append(embed_tiles(backbone, c, meta["mean"], meta["std"]).cpu())
    buf = io.BytesIO()
    np.savez(
        buf,
        image=torch.cat(images).numpy(),
        roi=torch.cat(rois).numpy(),
        count=np.asarray(counts, np.int64),
    )
    return buf.getvalue()


def build_pairs(
    stores: list[str | Path],
    checkpoint: str | Path,
    out: str | Path,
    *,
    filters: dict[str, float | None] | None = None,
    params: PairParams | None = None,
    proposal_params: ProposalParams | None = None,
    device: str = "auto",
    chunk_tiles: int = 256,
    workers: int = 1,
    force: bool = False,
    progress: bool = False,
) -> Path:
    """Stage 2 (module docstring): writes ``out/pairs.npz`` and returns its path. A rerun
    resumes an unfinished ``out``; one made with other inputs is refused unless ``force``."""
    p = params or PairParams()
    if p.knn < 1 or not 0 < p.topk_ratio <= 1 or p.roi_size < 1 or chunk_tiles < 1:
        raise UsageError(f"bad pair parameters {p} (chunk_tiles {chunk_tiles})")
    backbone, meta = load_pretrained(checkpoint)
    chosen = _checkpoint_filters(meta) if filters is None else {k: filters.get(k) for k in FILTERS}
    dataset = TileDataset(
        stores, chosen["min_tissue"], chosen["max_pen"], chosen["max_white"], chosen["min_blur"]
    )
    if len(dataset) <= p.knn:
        raise UsageError(f"{len(dataset)} tiles: need more than knn={p.knn} for neighbours")
    out = check_output_dir(
        out, inputs=[*dataset.paths, checkpoint], is_ours=_is_pairs_output, command="orl pairs"
    )
    props = []
    for store in dataset.paths:
        compute_proposals(store, proposal_params, workers=workers, progress=progress)
        props.append(load_proposals(store))
    ident = {
        "kind": "orl-pairs",
        "checkpoint": str(Path(checkpoint).resolve()),
        "checkpoint_bytes": Path(checkpoint).stat().st_size,
        "stores": [str(s.resolve()) for s in dataset.paths],
        "filters": chosen,
        "params": asdict(p),
        "proposal_params": (proposal_params or ProposalParams()).to_dict(),
        "chunk_tiles": chunk_tiles,
    }
    if (out / "params.json").exists():
        old = json.loads((out / "params.json").read_text())
        chunk_tiles = ident["chunk_tiles"] = old.get("chunk_tiles", chunk_tiles)  # its own
        if old != ident:
            if not force:
                raise UsageError(
                    f"{out} holds pairs of other inputs or parameters: --force redoes them"
                )
            shutil.rmtree(out / "parts", ignore_errors=True)
            (out / "pairs.npz").unlink(missing_ok=True)
        elif (out / "pairs.npz").exists():
            return out / "pairs.npz"
    atomic_write(out / "params.json", json.dumps(ident, indent=1))
    dev = pick_device(device)
    backbone.to(dev)
    n = len(dataset)
    chunks = [range(lo, min(n, lo + chunk_tiles)) for lo in range(0, n, chunk_tiles)]
    for c, rows in enumerate(chunks):
        path = out / "parts" / f"emb-{c:06d}.npz"
        if not path.exists():
            data = _embed_chunk(backbone, dataset, props, rows, meta, p, dev)
            with atomic_file(path) as f:
                f.write(data)
        if progress:
            print(f"orl pairs: embedded chunk {c + 1}/{len(chunks)}", flush=True)
    return _write_pairs(out, dataset, props, len(chunks), ident, p)


def _write_pairs(
    out: Path,
    dataset: TileDataset,
    props: list[Proposals],
    n_chunks: int,
    ident: dict[str, Any],
    p: PairParams,
) -> Path:
    images, rois, counts = [], [], []
    for c in range(n_chunks):
        with np.load(out / "parts" / f"emb-{c:06d}.npz") as z:
            images.append(z["image"])
            rois.append(z["roi"])
            counts.append(z["count"])
    feats = torch.nn.functional.normalize(torch.from_numpy(np.concatenate(images)), dim=1)
    roi = torch.nn.functional.normalize(torch.from_numpy(np.concatenate(rois)), dim=1)
    box_start = np.concatenate([[0], np.cumsum(np.concatenate(counts))]).astype(np.int64)
    knn, knn_score = image_knn(feats, p.knn)
    located = [dataset.locate(i) for i in range(len(dataset))]
    boxes = np.concatenate([props[k].of(t)[0] for k, t in located]).astype(np.float32)
    kinds = np.concatenate([props[k].of(t)[1] for k, t in located])
    pair_rows: list[list[np.ndarray]] = [[], [], [], []]
    pair_start = [0]
    for i in range(len(dataset)):
        qi = slice(box_start[i], box_start[i + 1])
        n_pairs = 0
        for j in knn[i].tolist():
            kj = slice(box_start[j], box_start[j + 1])
            q, k, v = pair_rois(roi[qi], roi[kj], p.topk_ratio)
            pair_rows[0].append(boxes[qi][q.numpy()])
            pair_rows[1].append(np.full(len(q), j, np.int64))
            pair_rows[2].append(boxes[kj][k.numpy()])
            pair_rows[3].append(v.numpy().astype(np.float32))
            n_pairs += len(q)
        pair_start.append(pair_start[-1] + n_pairs)
    arrays = {
        "format_version": np.asarray(PAIRS_FORMAT),
        "info": np.asarray(json.dumps(ident)),
        "stores": np.asarray(ident["stores"]),
        "store_index": dataset.slide_index.astype(np.int32),
        "tile_index": dataset.tile_index.astype(np.int64),
        "box_start": box_start,
        "boxes": boxes,
        "box_kind": kinds.astype(np.int8),
        "pair_start": np.asarray(pair_start, np.int64),
        "pair_box": np.concatenate(pair_rows[0]).astype(np.float32),
        "pair_knn": np.concatenate(pair_rows[1]),
        "pair_knn_box": np.concatenate(pair_rows[2]).astype(np.float32),
        "pair_score": np.concatenate(pair_rows[3]),
        "knn": knn.numpy().astype(np.int64),
        "knn_score": knn_score.numpy().astype(np.float32),
    }
    path = out / "pairs.npz"
    with atomic_file(path) as f:
        np.savez(f, **arrays)  # type: ignore[arg-type]
    return path


def stage3_command(pairs: str | Path) -> str:
    """The ``pathssl pretrain`` command of stage 3 on the tiles and filters of ``pairs``."""
    info = json.loads(str(np.load(pairs)["info"]))
    filters = " ".join(f"data.{k}={'null' if v is None else v}" for k, v in info["filters"].items())
    stores = ",".join(info["stores"])
    return (
        f"pathssl pretrain configs/pretrain/orl.yaml data.stores=[{stores}] {filters} "
        f"method.params.pairs={Path(pairs).resolve()}"
    )
