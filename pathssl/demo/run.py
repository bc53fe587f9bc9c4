"""``run_demo``: every stage in order, each skipped when its outputs exist, then the report."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pathssl.demo import stages
from pathssl.demo.layout import (
    PRETRAIN_RUN,
    SLIDE,
    STAGES,
    TITLES,
    read_json,
    record_path,
    stage_done,
)
from pathssl.demo.report import write_report
from pathssl.eval.report import write_json
from tiling.outputs import check_output_dir

DEFAULT_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


@dataclass
class DemoResult:
    """What a demo run left in ``out``: the report, each done stage's wall time in seconds
    (this run's or an earlier one's), the stages this call ran, and the slides that failed
    tiling (the sample folder holds a broken one on purpose)."""

    out: Path
    report: Path
    device: str
    seconds: dict[str, float] = field(default_factory=dict)
    ran: list[str] = field(default_factory=list)
    failed_slides: list[str] = field(default_factory=list)


def check_data(data: Path) -> None:
    """A one-line error unless ``data`` holds the slide and nuclei files the demo reads."""
    needed = [data / "slides" / SLIDE, *(data / "nuclei" / n for n in stages.NUCLEI_FILES)]
    folders = [data / "nuclei" / sub for sub in stages.NUCLEI_SOURCES.values()]
    missing = [p for p in needed if not p.is_file()] + [p for p in folders if not p.is_dir()]
    if missing:
        raise ValueError(
            f"demo data folder {data}: {missing[0]} not found; pass --data DIR, the folder that "
            "holds slides/ and nuclei/ (the project's ../shared/data)"
        )


def stage_params(data: Path, pretrain_steps: int, nuclei_steps: int) -> dict[str, dict[str, Any]]:
    """What each stage's outputs depend on (besides the earlier stages): a stage whose record
    holds other values runs again."""
    return {
        "tiling": {"data": str(Path(data).resolve()), **stages.TILE_OPTIONS},
        "augment": dict(stages.PREVIEW),
        "pretrain": {"steps": pretrain_steps, **stages.PRETRAIN_TILE_OPTIONS},
        "knn": {"crop": stages.KNN_CROP, "k": stages.KNN_K},
        "nuclei": {"steps": nuclei_steps},
        "predict": {},
    }


def run_demo(
    out: str | Path,
    data: str | Path = DEFAULT_DATA,
    pretrain_steps: int = 150,
    nuclei_steps: int = 200,
    *,
    device: str = "auto",
    workers: int = 2,
    progress: bool = True,
    force: bool = False,
    log: Callable[[str], None] = print,
) -> DemoResult:
    """Tile the sample slides, preview the SimCLR views, pretrain SimCLR on CMU-1, kNN-probe
    nucleus crops, train and score the nuclei head, predict CMU-1's nuclei, write
    ``out/report.html``. One line per stage goes to ``log`` (its name, then its time). A stage
    whose outputs exist is skipped unless ``force``, its parameters changed or an earlier
    stage ran now; an interrupted pretraining resumes from its last checkpoint."""
    out, data = Path(out), Path(data)
    if pretrain_steps < 1 or nuclei_steps < 1:
        raise ValueError(
            f"step counts must be >= 1, got --pretrain-steps {pretrain_steps} and "
            f"--nuclei-steps {nuclei_steps}"
        )
    check_data(data)
    # the shared output rule: never an input, new or empty or an earlier demo (a stages/ folder)
    check_output_dir(out, inputs=[data], is_ours=lambda p: (p / "stages").is_dir(), command="demo")
    from pathssl.train.distributed import pick_device

    dev = str(pick_device(device))
    ckpt = out / PRETRAIN_RUN / "last.pt"
    jobs: dict[str, Callable[[], dict[str, Any]]] = {
        "tiling": lambda: stages.tile(out, data, workers, progress),
        "augment": lambda: stages.augment_preview(out),
        "pretrain": lambda: stages.pretrain(out, data, pretrain_steps, dev, progress),
        "knn": lambda: stages.knn(out, data, ckpt, dev),
        "nuclei": lambda: stages.nuclei(out, data, ckpt, nuclei_steps, dev, progress),
        "predict": lambda: stages.predict(out, data, dev),
    }
    params = stage_params(data, pretrain_steps, nuclei_steps)
    result = DemoResult(out, out / "report.html", dev)
    for i, stage in enumerate(STAGES, 1):
        tag = f"[{i}/{len(STAGES)}] {TITLES[stage]}"
        done = stage_done(out, stage)
        rec = read_json(record_path(out, stage)) or {}
        if done and rec.get("params") == params[stage] and not force and not result.ran:
            log(f"{tag}: done already ({float(rec.get('seconds', 0)):.1f} s), skipped")
            continue
        record_path(out, stage).unlink(missing_ok=True)
        if stage == "pretrain" and (done or force):  # else: resume an interrupted run
            shutil.rmtree(out / PRETRAIN_RUN, ignore_errors=True)
        if stage == "nuclei":  # never resume a finished or foreign run
            shutil.rmtree(out / "nuclei", ignore_errors=True)
        log(f"{tag} on {dev} ...")
        t0 = time.perf_counter()
        details = jobs[stage]()
        seconds = time.perf_counter() - t0
        summary = details.pop("summary", "")
        record = {"stage": stage, "seconds": round(seconds, 1), "device": dev}
        write_json(record_path(out, stage), {**record, "params": params[stage], **details})
        result.ran.append(stage)
        log(f"{tag}: {seconds:.1f} s  {summary}".rstrip())
    for stage in STAGES:
        rec = read_json(record_path(out, stage)) or {}
        result.seconds[stage] = float(rec.get("seconds", 0.0))
    tiling = read_json(record_path(out, "tiling")) or {}
    result.failed_slides = [str(s) for s in tiling.get("failed", [])]
    write_report(out)
    log(f"report -> {result.report} (stages: {sum(result.seconds.values()):.0f} s in all)")
    return result
