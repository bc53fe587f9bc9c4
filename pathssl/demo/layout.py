"""Where the demo's stages put their outputs, and the record each stage writes when it ends.

Every stage writes ``OUT/stages/<stage>.json`` last (``seconds``, ``device``, the ``params`` it
ran with, and what it found); a stage counts as done when its record and every output listed in
:data:`OUTPUTS` exist, so an interrupted stage simply runs again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SLIDE = "CMU-1-Small-Region.svs"  # the slide that is pretrained on and predicted
SLIDE_ID = Path(SLIDE).stem
STAGES = ("tiling", "augment", "pretrain", "knn", "nuclei", "predict")
TITLES = {
    "tiling": "tiling",
    "augment": "augmentation preview",
    "pretrain": "SimCLR pretraining",
    "knn": "kNN probe",
    "nuclei": "nuclei head",
    "predict": "slide prediction",
}
PREVIEW_PNG = "augment-simclr.png"
PRETRAIN_RUN = "pretrain/simclr_resnet18"  # train.out_dir of the pretraining run

# Outputs (relative to OUT) whose presence, with the stage's record, means "done".
OUTPUTS: dict[str, tuple[str, ...]] = {
    "tiling": ("tiles/manifest.csv", f"tiles/{SLIDE_ID}.zarr"),
    "augment": (PREVIEW_PNG,),
    "pretrain": (f"{PRETRAIN_RUN}/last.pt", f"{PRETRAIN_RUN}/metrics.jsonl"),
    "knn": ("knn/knn.json",),
    "nuclei": ("nuclei/nuclei.pt", "nuclei/metrics.jsonl", "nuclei/val_metrics.json"),
    "predict": (
        f"predict/{SLIDE_ID}.geojson",
        f"predict/{SLIDE_ID}_overlay.png",
        f"predict_classical/{SLIDE_ID}.geojson",
        f"predict_classical/{SLIDE_ID}_overlay.png",
    ),
}


def record_path(out: Path, stage: str) -> Path:
    return Path(out) / "stages" / f"{stage}.json"


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or None when it is missing or unreadable."""
    try:
        obj = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def stage_done(out: Path, stage: str) -> bool:
    """True when the stage's record and every output it promises exist."""
    return record_path(out, stage).is_file() and all(
        (Path(out) / rel).exists() for rel in OUTPUTS[stage]
    )


def stage_record(out: Path, stage: str) -> dict[str, Any] | None:
    """The record of a stage that is done, else None."""
    return read_json(record_path(out, stage)) if stage_done(out, stage) else None
