"""The shipped CPU recipes, trained for real.

``configs/nuclei/hgsc_resnet18_cpu.yaml`` (ResNet-18, random init, 300 steps) trained on part of
the real hgsc_nest tile and scored on a held-apart region, for two splits:

* ``stroma``: train on the left 2/3, test on the right 1/3 (x >= 1000). The right third is sparser
  stroma (250 nuclei, more elongated connective nuclei) than the left (1,058 nuclei, mostly
  tumour and lymphocytes): a test under a shift of tissue type inside one tile.
* ``rows``: train on the top 2/3, test on the bottom 1/3 (y >= 1000), which holds tumour,
  lymphocytes and stroma like the training part.

``configs/nuclei/manual_cpu.yaml`` (MoNuSeg + TNBC, hand-drawn) runs end to end for 5 steps and
``nuclei.pt`` records its sources, licences and held-apart images.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from pathssl.eval.metrics import conic_pq, panoptic_quality
from pathssl.nuclei.config import NucleiConfig, load_config
from pathssl.nuclei.predict import NucleiPredictor
from pathssl.nuclei.sources import describe_sources
from pathssl.nuclei.splits import load_data
from pathssl.nuclei.stain_norm import fit_reference
from pathssl.nuclei.train import train_nuclei

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")
CONFIG = Path(__file__).parents[1] / "configs" / "nuclei" / "hgsc_resnet18_cpu.yaml"
# train box, held-apart box, PQ floor (measured, 2 CPU cores: stroma PQ 0.445 / SQ 0.738 / DQ
# 0.603 / mPQ+ 0.273, 228 of 250 nuclei; rows PQ 0.543 / SQ 0.741 / DQ 0.732 / mPQ+ 0.391, 521 of
# 454; about 70 s of training each)
SPLITS = {
    "stroma": ([0, 0, 1000, 1500], [1000, 0, 500, 1500], 0.40),
    "rows": ([0, 0, 1500, 1000], [0, 1000, 1500, 500], 0.49),
}


@pytest.mark.slow
@pytest.mark.parametrize("split", sorted(SPLITS))
def test_trained_head_reaches_pq_on_held_apart_region(
    tmp_path: Path, data_dir: Path, split: str
) -> None:
    train_region, val_region, floor = SPLITS[split]
    d = data_dir / "nuclei"
    cfg = load_config(
        CONFIG,
        [
            f"data.image={d / 'hgsc_nest.jpg'}",
            f"data.inst={d / 'hgsc_nest_inst_mask.npz'}",
            f"data.types={d / 'hgsc_nest_type_mask.npz'}",
            f"data.train_region={train_region}",
            f"data.val_region={val_region}",
            f"train.out_dir={tmp_path / 'run'}",
            "train.log_every=50",
        ],
    )
    t0 = time.perf_counter()
    res = train_nuclei(cfg, progress=False)
    train_s = time.perf_counter() - t0
    _, (val,) = load_data(cfg.data)
    pc = cfg.predict
    predictor = NucleiPredictor(
        res.model, window=pc.window, overlap=pc.overlap, postprocess_cfg=cfg.postprocess,
        progress=False,
    )  # fmt: skip
    pred = predictor.predict_image(val.image)
    r = panoptic_quality(val.inst, pred.inst, val.types, pred.types, classes=[1, 2, 3])
    mpq = conic_pq([r], [1, 2, 3]).mpq_plus
    print(
        f"\n{split}: {cfg.train.max_steps} steps in {train_s:.0f} s: held-apart PQ {r.binary.pq:.3f} "
        f"(SQ {r.binary.sq:.3f}, DQ {r.binary.dq:.3f}), mPQ+ {mpq:.3f}, "
        f"{len(pred)} predicted / {len(set(val.inst.ravel())) - 1} true nuclei"
    )
    assert r.binary.pq > floor, r.binary.as_dict()
    # windowed vs one large window on the same region, with the trained model
    big = NucleiPredictor(
        res.model, window=512, overlap=160, postprocess_cfg=cfg.postprocess, progress=False
    ).predict_image(val.image)
    assert panoptic_quality(big.inst, pred.inst).binary.pq > 0.8


MANUAL = Path(__file__).parents[1] / "configs" / "nuclei" / "manual_cpu.yaml"


def _manual(tmp_path: Path, data_dir: Path, extra: list[str]) -> NucleiConfig:
    d = data_dir / "nuclei"
    return load_config(
        MANUAL,
        [
            f"data.sources.monuseg.path={d / 'monuseg-train'}",
            f"data.sources.tnbc.path={d / 'tnbc'}",
            "train.max_steps=5",
            f"train.out_dir={tmp_path / 'run'}",
            *extra,
        ],
    )


def _check_provenance(meta: dict[str, Any], cfg: NucleiConfig) -> None:
    """nuclei.pt names each source, its licence and the images that trained and were held apart
    (as the config's lists say), and the model's mpp."""
    assert meta["mpp"] == 0.5
    records = {r["name"]: r for r in meta["sources"]}
    assert list(records) == ["monuseg", "tnbc"]
    mon, tn = records["monuseg"], records["tnbc"]
    assert "non-commercial" in mon["licence"] and "unknown" in tn["licence"]
    assert mon["held_apart_images"] == cfg.data.sources["monuseg"].val
    assert not set(mon["train_images"]) & set(mon["held_apart_images"])
    held = {n.split("_")[0] for n in tn["held_apart_images"]}
    assert held == {v.split("_")[1] for v in cfg.data.sources["tnbc"].val}  # whole patients
    assert not held & {n.split("_")[0] for n in tn["train_images"]}
    assert mon["format"] == "imagescope" and tn["format"] == "mask"


def test_manual_recipe_trains_on_two_sources(tmp_path: Path, data_dir: Path) -> None:
    """configs/nuclei/manual_cpu.yaml end to end for 5 steps on a part of each source."""
    from pathssl.nuclei.train import load_nuclei_model

    cfg = _manual(
        tmp_path,
        data_dir,
        [
            "data.sources.monuseg.limit=3",
            "data.sources.monuseg.val=[TCGA-21-5786-01Z-00-DX1]",
            "data.sources.tnbc.limit=10",
            "data.sources.tnbc.val=[Slide_02]",
            "model.stain_norm=macenko",
        ],
    )
    res = train_nuclei(cfg, progress=False)
    assert res.last["loss"] > 0 and res.checkpoint.name == "nuclei.pt"
    model, meta = load_nuclei_model(res.checkpoint)
    _check_provenance(meta, cfg)
    records = {r["name"]: r for r in meta["sources"]}
    assert records["monuseg"]["train_images"] == [
        "TCGA-21-5784-01Z-00-DX1", "TCGA-50-5931-01Z-00-DX1"
    ]  # fmt: skip
    assert len(records["tnbc"]["train_images"]) == 7
    lines = describe_sources(meta["sources"])
    assert "licence: CC BY-NC-SA 4.0" in lines[0] and "1 held-apart" in lines[0]
    # the stain reference: fitted once on the 9 training images at the model's mpp
    train, _ = load_data(cfg.data, target_mpp=0.5, log=None)
    ref = fit_reference([im.image for im in train], "macenko")
    assert meta["stain_reference"] == ref and ref["images"] == 9
    # held-apart scores per source, beside the classical model's on the same images, which an
    # independent call (the classical model through its own predictor) reproduces
    from pathssl.nuclei.classical import ClassicalNuclei
    from pathssl.nuclei.label_efficiency import held_apart_scores
    from pathssl.nuclei.predict import NucleiPredictor
    from pathssl.nuclei.scores import score_images

    scores = held_apart_scores(model, cfg, 0.5, stain_reference=meta["stain_reference"])
    assert scores is not None and set(scores["per_source"]) == {"monuseg", "tnbc"}
    _, val = load_data(cfg.data, target_mpp=0.5, log=None)
    cl = ClassicalNuclei(0.5)
    pred = NucleiPredictor(cl, window=cl.window, overlap=cl.overlap, progress=False)
    ref_scores = score_images(val, [pred.predict_image(im.image) for im in val])
    assert scores["classical"]["pq"] == pytest.approx(ref_scores["pq"])
    assert scores["classical"]["pq"] > 0.2  # real nuclei found on the held-apart tiles
    assert scores["per_source"]["monuseg"]["images"] == ["TCGA-21-5786-01Z-00-DX1"]


@pytest.mark.slow
def test_shipped_manual_recipe_trains(tmp_path: Path, data_dir: Path) -> None:
    """The shipped config as it is (all 63 tiles read), 5 steps."""
    cfg = _manual(tmp_path, data_dir, [])
    res = train_nuclei(cfg, progress=False)
    meta = res.meta
    _check_provenance(meta, cfg)
    assert len(meta["sources"][0]["train_images"]) == 9
    assert len(meta["sources"][1]["train_images"]) == 38
