"""The demo's stages, each a few library calls: the same functions the CLI commands run.

Every setting the demo passes to a config lives at the top of this module (the config files,
the ``key=value`` overrides and the eval config), so a renamed key is changed here only. Each
stage function takes explicit arguments, writes under ``out`` and returns the details its
record keeps (see :mod:`pathssl.demo.layout`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pathssl.demo.layout import OUTPUTS, PRETRAIN_RUN, PREVIEW_PNG, SLIDE, SLIDE_ID
from pathssl.eval.report import write_json

if TYPE_CHECKING:
    from pathssl.eval.config import EvalConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

# ---------------------------------------------------------------- every setting the demo passes
TILE_OPTIONS: dict[str, Any] = {"mpp": 0.5, "size": 224}  # `pathssl tile` defaults
PRETRAIN_TILE_OPTIONS: dict[str, Any] = {"mpp": 0.5, "size": 224, "overlap": 112}
PREVIEW: dict[str, Any] = {"recipe": "simclr", "rows": 4, "seed": 0, "cell": 160}
PRETRAIN_CONFIG = CONFIGS / "pretrain" / "simclr_resnet18_cpu_demo.yaml"
PRETRAIN_OVERRIDES: dict[str, str] = {  # values: YAML, filled in with str.format
    "data.stores": "{stores}",
    "train.out_dir": "{run_dir}",
    "train.max_steps": "{steps}",
    "train.device": "{device}",
    "train.progress": "{progress}",
}
# the CPU recipe on hand-drawn nuclei (MoNuSeg + TNBC, whole images held apart), shortened
NUCLEI_CONFIG = CONFIGS / "nuclei" / "manual_cpu.yaml"
NUCLEI_SOURCES = {"monuseg": "monuseg-train", "tnbc": "tnbc"}  # source -> folder in nuclei/
NUCLEI_OVERRIDES: dict[str, str] = {
    "data.sources.monuseg.path": "{monuseg}",
    "data.sources.tnbc.path": "{tnbc}",
    "model.checkpoint": "{checkpoint}",
    "train.max_steps": "{steps}",  # was train.steps
    "train.out_dir": "{out_dir}",
    "train.device": "{device}",
}
CLASSICAL_DIR = "predict_classical"
NUCLEI_FILES = ("hgsc_nest.jpg", "hgsc_nest_inst_mask.npz", "hgsc_nest_type_mask.npz")
KNN_CLASSES = ("connective", "inflammatory", "neoplastic")  # type ids 1, 2, 3 of hgsc_nest
KNN_CROP = 64  # px around each nucleus
KNN_K = 20
KNN_BACKBONE = "resnet18"


def eval_config(
    train_csv: Path, test_csv: Path, checkpoint: Path | None, image_size: int, device: str
) -> dict[str, Any]:
    """The ``pathssl eval`` config (``pathssl.eval.config`` schema) of one encoder on the nucleus
    crops: the demo writes it next to its figures, and running it gives the same figures."""
    return {
        "data": {
            "source": {"format": "csv", "csv": str(train_csv)},
            "test": {"format": "csv", "csv": str(test_csv)},
            "image_size": image_size,
            "class_names": list(KNN_CLASSES),
            "seed": 0,
            "batch_size": 64,
        },
        "model": {
            "backbone": KNN_BACKBONE,
            "checkpoint": None if checkpoint is None else str(checkpoint),
        },
        "protocols": {"knn": {"k": KNN_K}},
        "train": {"device": device, "seed": 0},
    }


def knn_arguments(cfg: EvalConfig) -> dict[str, Any]:
    """The keyword arguments of :func:`pathssl.demo.knn.knn_scores` that an eval config with a
    separate test source and the kNN protocol stands for (as ``pathssl eval`` reads it)."""
    if cfg.protocols.knn is None:
        raise ValueError("the demo's eval config must list protocols.knn")
    return {
        "backbone": cfg.model.backbone,
        "checkpoint": cfg.model.checkpoint,
        "image_size": cfg.data.image_size,
        "k": cfg.protocols.knn.k,
        "batch_size": cfg.data.batch_size,
        "device": cfg.train.device,
        "encoder_seed": cfg.train.seed,
        "seed": cfg.data.seed,
    }


def _yaml(value: Any) -> str:
    """A value as YAML text for a ``key=value`` override (paths quoted)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, Path):
        return json.dumps(str(value))
    if isinstance(value, list):
        return "[" + ", ".join(_yaml(v) for v in value) + "]"
    return str(value)


def overrides(template: dict[str, str], **values: Any) -> list[str]:
    """``key=value`` strings of a template with ``{name}`` fields filled from ``values``."""
    filled = {k: _yaml(v) for k, v in values.items()}
    return [f"{key}={text.format(**filled)}" for key, text in template.items()]


# ---------------------------------------------------------------------------- the stages


def tile(out: Path, data: Path, workers: int, progress: bool) -> dict[str, Any]:
    """``tiling.tile_slides`` on ``data/slides`` into ``out/tiles`` (stores, manifest, report,
    overviews). A slide that fails is recorded, not raised."""
    from tiling import tile_slides

    results = tile_slides(
        [data / "slides"], out / "tiles", workers=workers, progress=progress, **TILE_OPTIONS
    )
    ids = {s: [r.slide_id for r in results if r.status == s] for s in ("failed", "no_tissue")}
    if not (out / OUTPUTS["tiling"][1]).is_dir():
        raise ValueError(f"{data / 'slides' / SLIDE} was not tiled: the demo needs that slide")
    tiled = len(results) - len(ids["failed"]) - len(ids["no_tissue"])
    summary = [f"{len(results)} slides: {tiled} tiled"] + [
        f"{len(v)} {k.replace('_', ' ')} ({', '.join(v)})" for k, v in ids.items() if v
    ]
    return {
        "slides": len(results),
        "ok": tiled,
        "failed": ids["failed"],
        "no_tissue": ids["no_tissue"],
        "tiles": sum(r.n_tiles for r in results),
        "summary": ", ".join(summary),
    }


def augment_preview(out: Path) -> dict[str, Any]:
    """The picture ``pathssl augment-preview`` draws of the SimCLR recipe on CMU-1 tiles."""
    from pathssl.augment import load_recipe
    from pathssl.augment.preview import load_preview_images, preview_grid, write_preview

    recipe = load_recipe(PREVIEW["recipe"])
    images = load_preview_images(out / OUTPUTS["tiling"][1], n=PREVIEW["rows"])
    grid = preview_grid(
        images, recipe, rows=PREVIEW["rows"], seed=PREVIEW["seed"], cell=PREVIEW["cell"]
    )
    write_preview(out / PREVIEW_PNG, grid)
    return {"recipe": recipe.name, "summary": f"{recipe.name}, {recipe.n_views} views"}


def pretrain(out: Path, data: Path, steps: int, device: str, progress: bool) -> dict[str, Any]:
    """Tile CMU-1 with 50 % overlap, then ``pathssl pretrain`` the CPU demo config on it
    (resuming an interrupted run from its ``last.pt``)."""
    from pathssl.train import build_trainer, load_config, start
    from tiling import tile_slides

    tiles = out / "pretrain" / "tiles"
    tile_slides(
        [data / "slides" / SLIDE], tiles, progress=False, report=False, **PRETRAIN_TILE_OPTIONS
    )
    store = tiles / f"{SLIDE_ID}.zarr"
    run_dir = out / PRETRAIN_RUN
    cfg = load_config(
        PRETRAIN_CONFIG,
        overrides(
            PRETRAIN_OVERRIDES,
            stores=[store],
            run_dir=run_dir,
            steps=steps,
            device=device,
            progress=progress,
        ),
    )
    trainer = build_trainer(cfg)
    start(trainer, cfg.train)  # as `pathssl pretrain`: resume, or start fresh
    last = trainer.fit()
    loss = last.get("loss")
    return {
        "steps": steps,
        "last_loss": loss,
        "checkpoint": str(trainer.checkpoint_path),
        "summary": f"{steps} steps, last loss {loss:.3f}" if loss is not None else f"{steps} steps",
    }


def knn(
    out: Path, data: Path, checkpoint: Path | None, device: str, crop: int = KNN_CROP
) -> dict[str, Any]:
    """Nucleus crops of hgsc_nest (left half train, right half test), an eval config per
    encoder (random init; the pretrained trunk when ``checkpoint`` is given) written to
    ``out/knn/eval_<name>.yaml``, and their kNN figures in ``out/knn/knn.json``."""
    import yaml

    from pathssl.demo.knn import knn_scores, majority_accuracy, nucleus_crops, write_crops
    from pathssl.eval.config import config_from_dict
    from pathssl.nuclei.data import load_npz_pair
    from tiling.atomic import atomic_write

    folder = out / "knn"
    nuc = data / "nuclei"
    image, inst, types = (nuc / name for name in NUCLEI_FILES)
    labelled = load_npz_pair(image, inst, types)
    crops, labels, centres = nucleus_crops(labelled.image, labelled.inst, labelled.types, crop)
    split_x = labelled.image.shape[1] // 2
    train_csv, test_csv = write_crops(
        folder / "crops", crops, labels, centres, KNN_CLASSES, split_x
    )
    encoders: dict[str, Path | None] = {"random_init": None}
    if checkpoint is not None:
        encoders["simclr_pretrained"] = checkpoint
    result: dict[str, Any] = {
        "k": KNN_K,
        "crop": crop,
        "classes": list(KNN_CLASSES),
        "majority_class_accuracy": majority_accuracy(train_csv, test_csv),
        "eval_configs": {},
    }
    for name, ckpt in encoders.items():
        plain = eval_config(
            train_csv.resolve(), test_csv.resolve(), ckpt and ckpt.resolve(), crop, device
        )
        path = folder / f"eval_{name}.yaml"
        atomic_write(path, yaml.safe_dump(plain, sort_keys=False))
        cfg = config_from_dict(plain)  # checked as `pathssl eval` checks it
        scores = knn_scores(train_csv, test_csv, KNN_CLASSES, **knn_arguments(cfg))
        result["n_train"], result["n_test"] = scores["n_train"], scores["n_test"]
        result[name] = scores
        result["eval_configs"][name] = path.name
    write_json(folder / "knn.json", result)
    best = result.get("simclr_pretrained") or result["random_init"]
    result["summary"] = (
        f"accuracy {best['accuracy']:.3f} (random init {result['random_init']['accuracy']:.3f}) "
        f"on {result['n_test']} test nuclei"
    )
    return {k: v for k, v in result.items() if k not in encoders}


def nuclei(
    out: Path, data: Path, checkpoint: Path | None, steps: int, device: str, progress: bool
) -> dict[str, Any]:
    """``pathssl nuclei train`` of the manual-labels CPU recipe (shortened to ``steps``) from the
    pretrained trunk, then its scores on the held-apart images of each source beside the
    classical model's (``nuclei/val_metrics.json``), as the command computes them."""
    from pathssl.nuclei.config import load_config
    from pathssl.nuclei.label_efficiency import held_apart_scores
    from pathssl.nuclei.train import train_nuclei

    folders = {name: data / "nuclei" / sub for name, sub in NUCLEI_SOURCES.items()}
    cfg = load_config(
        NUCLEI_CONFIG,
        overrides(
            NUCLEI_OVERRIDES,
            **folders,
            checkpoint=checkpoint if checkpoint is not None else Path(""),
            steps=steps,
            out_dir=out / "nuclei",
            device=device,
        ),
    )
    res = train_nuclei(cfg, progress=progress)
    scores = held_apart_scores(
        res.model,
        cfg,
        float(res.meta["mpp"]),
        out / "nuclei" / "val_metrics.json",
        stain_reference=res.meta.get("stain_reference"),
    )
    assert scores is not None, "the demo's nuclei config holds whole images apart"
    base = scores.get("classical") or {}
    return {
        "steps": steps,
        "init": "random" if checkpoint is None else "simclr",
        "last_loss": res.last.get("loss"),
        "sources": [s["name"] for s in res.meta.get("sources", [])],
        "summary": (
            f"{steps} steps, held-apart PQ {scores['pq']:.3f} (classical {base.get('pq', 0):.3f}), "
            f"F1 {scores['f1_detection']:.3f}"
        ),
    }


def predict(out: Path, data: Path, device: str) -> dict[str, Any]:
    """``pathssl nuclei predict`` of the CMU-1 slide with the trained head (``out/predict``)
    and with the training-free classical model (``out/predict_classical``): GeoJSON (QuPath
    detections) and overlay PNG each, and their counts."""
    from pathssl.nuclei.batch import CLASSICAL, load_predictor, predict_inputs

    counts: dict[str, int] = {}
    windows = 0
    for name, model, folder in (
        ("model", out / "nuclei" / "nuclei.pt", out / "predict"),
        ("classical", CLASSICAL, out / CLASSICAL_DIR),
    ):
        lp = load_predictor(model, device, progress=False)
        rows = predict_inputs(
            lp.predictor,
            [data / "slides" / SLIDE],
            folder,
            lp.type_names,
            lp.mpp,
            force=True,
            log=False,
        )
        if len(rows) != 1 or rows[0]["status"] != "done":
            raise RuntimeError(
                f"nuclei prediction of {SLIDE} ({name}) failed: "
                f"{rows[0]['error'] if rows else 'no input'}"
            )
        counts[name] = int(rows[0]["nuclei"])
        windows = windows or lp.predictor.windows_done
    return {
        "slide": SLIDE,
        "nuclei": counts["model"],
        "nuclei_classical": counts["classical"],
        "windows": windows,
        "summary": f"{counts['model']} nuclei (classical model: {counts['classical']})",
    }
