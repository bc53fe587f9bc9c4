"""The nuclei head trains through the one loop (:class:`pathssl.train.loop.Trainer`): its
checkpoints resume exactly, like pretraining's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from pathssl.nuclei.config import config_from_dict
from pathssl.nuclei.train import train_nuclei
from pathssl.train.logger import read_metrics
from pathssl.train.loop import Trainer

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


class Interrupted(RuntimeError):
    pass


def tiny_config(data_dir: Path, out: Path) -> Any:
    d = data_dir / "nuclei"
    return config_from_dict(
        {
            "data": {
                "format": "npz",
                "image": str(d / "hgsc_nest.jpg"),
                "inst": str(d / "hgsc_nest_inst_mask.npz"),
                "types": str(d / "hgsc_nest_type_mask.npz"),
                "train_region": [0, 0, 256, 256],
                "type_names": ["connective", "inflammatory", "neoplastic"],
                "batch_size": 2,
                "crop": 64,
                "mpp": 0.5,
            },
            "model": {
                "backbone": "vit_tiny",
                "params": {"image_size": 64},
                "widths": [8, 8, 8, 8, 8],
                "shared_decoder": True,
            },
            "optim": {"warmup_steps": 1},
            "train": {
                "max_steps": 4,
                "log_every": 1,
                "ckpt_every": 2,
                "resume": True,
                "device": "cpu",
                "out_dir": str(out),
            },
        }
    )


def test_interrupted_run_resumes_exactly(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    full = train_nuclei(tiny_config(data_dir, tmp_path / "full"), progress=False)
    ckpt = torch.load(tmp_path / "full" / "last.pt", map_location="cpu", weights_only=True)
    assert ckpt["step"] == 4 and ckpt["meta"]["kind"] == "nuclei" and "trunk" not in ckpt

    step = Trainer.train_step

    def crash_at_3(self: Trainer, batch: Any) -> Any:
        if self.step == 2:
            raise Interrupted
        return step(self, batch)

    cfg = tiny_config(data_dir, tmp_path / "cut")
    with monkeypatch.context() as m:
        m.setattr(Trainer, "train_step", crash_at_3)
        with pytest.raises(Interrupted):
            train_nuclei(cfg, progress=False)
    resumed = train_nuclei(cfg, progress=False)

    a, b = full.model.state_dict(), resumed.model.state_dict()
    for k, v in a.items():
        assert torch.equal(v, b[k]), k
    steps = [r["step"] for r in read_metrics(tmp_path / "cut" / "metrics.jsonl")]
    assert steps == [1, 2, 3, 4]
    assert resumed.last["loss"] == pytest.approx(full.last["loss"], rel=0, abs=0)


def test_validation_keeps_the_best_scoring_weights(data_dir: Path, tmp_path: Path) -> None:
    """With train.val_every the loop scores the held-apart region; nuclei.pt holds the weights of
    the best validation PQ, and that PQ is what scoring those weights again gives."""
    from pathssl.nuclei.splits import load_data
    from pathssl.nuclei.train import load_nuclei_model, validation_scores

    cfg = tiny_config(data_dir, tmp_path / "val")
    cfg.data.val_region = [1000, 0, 256, 256]
    cfg.train.max_steps, cfg.train.val_every, cfg.train.resume = 6, 2, False
    cfg.optim.lr = 3e-3
    res = train_nuclei(cfg, progress=False)
    rows = [r for r in read_metrics(tmp_path / "val" / "metrics.jsonl") if r["kind"] == "val"]
    assert [r["step"] for r in rows] == [2, 4, 6]
    assert all(set(r) >= {"pq", "mpq_plus", "f1_detection", "nuclei"} for r in rows)
    pqs = [float(r["pq"]) for r in rows]  # nan is written as "nan"
    finite = [(v, r["step"]) for v, r in zip(pqs, rows, strict=True) if v == v]
    best_pq, best_step = max(finite, key=lambda t: (t[0], -t[1]))  # earliest of equal scores
    model, meta = load_nuclei_model(res.checkpoint)
    assert meta["best_step"] == best_step
    best = torch.load(tmp_path / "val" / "best.pt", weights_only=True)["method"]
    last = torch.load(tmp_path / "val" / "last.pt", weights_only=True)["method"]
    saved = model.state_dict()
    for k, v in saved.items():
        assert torch.equal(v, best[f"model.{k}"]), k
    if best_step != 6:  # the returned weights are not the last ones
        assert any(not torch.equal(v, last[f"model.{k}"]) for k, v in saved.items())
    _, val = load_data(cfg.data)
    again = validation_scores(model, val, cfg, torch.device("cpu"))
    assert again["pq"] == pytest.approx(best_pq, abs=1e-9)
    with pytest.raises(ValueError, match="val_region"):
        cfg.data.val_region = None
        train_nuclei(cfg, progress=False)
