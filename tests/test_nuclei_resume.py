"""The nuclei head trains through the one loop (:class:`pathssl.train.loop.Trainer`): its
checkpoints resume exactly, like pretraining's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from pathssl.nuclei.config import config_from_dict
from pathssl.nuclei.train import train_nuclei
from pathssl.train.loop import Trainer
from pathssl.train.metrics import read_metrics

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
            },
            "model": {
                "backbone": "vit_tiny",
                "params": {"image_size": 64},
                "widths": [8, 8, 8, 8, 8],
                "shared_decoder": True,
            },
            "train": {
                "steps": 4,
                "batch_size": 2,
                "crop": 64,
                "warmup_steps": 1,
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
