"""A HoVer-Net style head (ResNet-18, random init) trained for a few hundred CPU steps on the
left 2/3 of the real hgsc_nest tile, evaluated on the held-apart right 1/3 (x >= 1000).

The right third is sparser stroma (250 nuclei, more elongated connective nuclei) than the left
(1,058 nuclei, mostly tumour and lymphocytes), so this is a harder split than a random one."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pathssl.eval.metrics import conic_pq, panoptic_quality
from pathssl.nuclei.config import config_from_dict
from pathssl.nuclei.predict import NucleiPredictor
from pathssl.nuclei.train import load_data, train_nuclei

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")
STEPS = 300


@pytest.mark.slow
def test_trained_head_reaches_pq_on_held_apart_region(tmp_path: Path, data_dir: Path) -> None:
    d = data_dir / "nuclei"
    cfg = config_from_dict(
        {
            "data": {
                "format": "npz",
                "image": str(d / "hgsc_nest.jpg"),
                "inst": str(d / "hgsc_nest_inst_mask.npz"),
                "types": str(d / "hgsc_nest_type_mask.npz"),
                "train_region": [0, 0, 1000, 1500],
                "val_region": [1000, 0, 500, 1500],
                "type_names": ["connective", "inflammatory", "neoplastic"],
            },
            "model": {"backbone": "resnet18", "shared_decoder": True},
            "train": {
                "steps": STEPS,
                "batch_size": 4,
                "crop": 128,
                "lr": 1e-3,
                "out_dir": str(tmp_path / "run"),
                "log_every": 50,
            },
        }
    )
    t0 = time.perf_counter()
    res = train_nuclei(cfg, progress=False)
    train_s = time.perf_counter() - t0
    _, (val,) = load_data(cfg.data)
    assert val.image.shape == (1500, 500, 3)  # x >= 1000: no pixel shared with training
    pred = NucleiPredictor(res.model, window=256, overlap=96, progress=False).predict_image(
        val.image
    )
    r = panoptic_quality(val.inst, pred.inst, val.types, pred.types, classes=[1, 2, 3])
    mpq = conic_pq([r], [1, 2, 3]).mpq_plus
    print(
        f"\n{STEPS} steps in {train_s:.0f} s: held-apart PQ {r.binary.pq:.3f} "
        f"(SQ {r.binary.sq:.3f}, DQ {r.binary.dq:.3f}), mPQ+ {mpq:.3f}, "
        f"{len(pred)} predicted / {len(set(val.inst.ravel())) - 1} true nuclei"
    )
    # measured (deterministic on CPU): PQ 0.392, SQ 0.755, DQ 0.519, mPQ+ 0.288, 139 of 250
    # nuclei predicted; 92 s of training on 2 quiet cores. Most errors are missed (elongated,
    # connective) nuclei of the sparser held-apart stroma.
    assert r.binary.pq > 0.33, r.binary.as_dict()
    # windowed vs one large window on the same region, with the trained model
    big = NucleiPredictor(res.model, window=512, overlap=160, progress=False).predict_image(
        val.image
    )
    assert panoptic_quality(big.inst, pred.inst).binary.pq > 0.8
