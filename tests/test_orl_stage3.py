"""ORL stage 3 reads stage 2's pairs: its loss against a per-sample naive reference, its draws
against the pairs file, two steps through the training loop, and exact resume in the middle of a
run (the loop's checkpoint holds the global RNG the method draws from)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from test_orl_stages import pairs, stage1, store  # noqa: F401  (module fixtures)
from test_train_methods import tiny_overrides

from pathssl.models import build_backbone
from pathssl.ssl import METHODS
from pathssl.ssl.orl import ORL, PairsFile

TINY = {"proj_hidden_dim": 64, "proj_dim": 32, "patch_size": 32}


def _overrides(store: Path, pairs: Path, out: Path, steps: int) -> list[str]:  # noqa: F811
    ov = tiny_overrides("orl", store, out, steps=steps)
    params = json.dumps({**TINY, "pairs": str(pairs)})
    ov = [o for o in ov if not o.startswith(("method.params", "train.ckpt_every"))]
    return [*ov, f"method.params={params}", "train.ckpt_every=1"]


class _Killed(Exception):
    pass


def _cos_loss(p: torch.Tensor, z: torch.Tensor) -> float:
    return 2 - 2 * float(p @ z) / math.sqrt(float(p @ p) * float(z @ z))


def test_stage3_loss_against_naive_reference(pairs: Path) -> None:  # noqa: F811
    torch.manual_seed(0)
    method = METHODS.build("orl", backbone=build_backbone("resnet18"), pairs=str(pairs), **TINY)
    assert isinstance(method, ORL)
    method.set_input_normalisation([0.7, 0.5, 0.7], [0.2, 0.2, 0.15])
    method.eval()  # BatchNorm on running statistics: a sample's output is its own
    index = torch.tensor([0, 3, 7, 11])
    g = torch.Generator().manual_seed(1)
    views = [torch.randn(4, 3, 64, 64, generator=g) for _ in range(2)]
    torch.manual_seed(5)
    intra, inter = method.object_views(index)
    torch.manual_seed(5)
    with torch.no_grad():
        out = method(views, index=index)
        ref = {"global": 0.0, "intra": 0.0, "inter": 0.0}
        for name, x, pred in (
            ("global", torch.cat(views), method.predictor),
            ("intra", intra, method.intra_predictor),
            ("inter", inter, method.inter_predictor),
        ):
            for i in range(4):  # view 1 of pair i against view 2's target, and the reverse
                for a, b in ((i, 4 + i), (4 + i, i)):
                    p = pred(method.projector(method.backbone(x[a : a + 1])))[0]
                    z = method.target(x[b : b + 1])[0]
                    ref[name] += _cos_loss(p, z) / 4
    assert float(out["loss_global"]) == pytest.approx(ref["global"], rel=1e-4)
    assert float(out["loss_intra"]) == pytest.approx(ref["intra"], rel=1e-4)
    assert float(out["loss_inter"]) == pytest.approx(ref["inter"], rel=1e-4)
    assert float(out["loss"]) == pytest.approx(sum(ref.values()), rel=1e-4)
    assert intra.shape == inter.shape == (8, 3, 32, 32)
    torch.manual_seed(5)  # the GPU path: bf16 autocast, the same draws
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        fast = method(views, index=index)
    assert float(fast["loss"]) == pytest.approx(float(out["loss"]), rel=0.05)


def test_draws_come_from_the_pairs_file(pairs: Path) -> None:  # noqa: F811
    pf = PairsFile(pairs)
    a = pf.a
    index = np.repeat(np.arange(pf.n), 20)
    box, pair_box, knn, knn_box = pf.draw(index)
    for i, b, pb, j, kb in zip(
        index, box.numpy(), pair_box.numpy(), knn, knn_box.numpy(), strict=True
    ):
        own = a["boxes"][a["box_start"][i] : a["box_start"][i + 1]]
        assert any(np.array_equal(b, o) for o in own)
        rows = range(a["pair_start"][i], a["pair_start"][i + 1])
        assert any(
            np.array_equal(pb, a["pair_box"][r])
            and j == a["pair_knn"][r]
            and np.array_equal(kb, a["pair_knn_box"][r])
            for r in rows
        )
        assert j in a["knn"][i] and j != i
    with pytest.raises(IndexError, match="data.stores"):
        pf.check_index(np.array([pf.n]))


def test_stage3_resume_in_the_middle_is_exact(
    store: Path,  # noqa: F811
    pairs: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    """A 3-step run stopped right after its step-1 checkpoint and resumed by a new trainer ends
    with bitwise the weights, buffers and optimiser state of an uninterrupted 3-step run (the
    SIGKILL version for every method: tests/test_train_resume.py)."""
    from pathssl.train import build_trainer, load_checkpoint, load_config
    from pathssl.train.assemble import start
    from pathssl.train.logger import read_metrics

    ref_cfg = load_config(None, _overrides(store, pairs, tmp_path / "ref", 3))
    ref = build_trainer(ref_cfg)
    start(ref, ref_cfg.train)
    ref.fit()
    records = [r for r in read_metrics(tmp_path / "ref" / "metrics.jsonl") if r["kind"] == "train"]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all(math.isfinite(r["loss_inter"]) and math.isfinite(r["loss_intra"]) for r in records)

    cfg = load_config(None, _overrides(store, pairs, tmp_path / "cut", 3))
    first = build_trainer(cfg)
    start(first, cfg.train)
    save = first.save

    def save_then_stop() -> Path | None:  # the process dies right after its step-1 checkpoint
        path = save()
        if first.step == 1:
            raise _Killed
        return path

    first.save = save_then_stop  # type: ignore[method-assign]
    with pytest.raises(_Killed):
        first.fit()
    shutil.copy(tmp_path / "cut" / "last.pt", tmp_path / "step1.pt")
    second = build_trainer(cfg)
    assert start(second, cfg.train) and second.step == 1
    second.fit()
    a, b = (
        load_checkpoint(tmp_path / "ref" / "last.pt"),
        load_checkpoint(tmp_path / "cut" / "last.pt"),
    )
    assert a["step"] == b["step"] == 3
    for part in ("trunk", "method"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}.{k} differs after resume"
    for sa, sb in zip(
        a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True
    ):
        for k in sa:
            assert torch.equal(torch.as_tensor(sa[k]), torch.as_tensor(sb[k]))
    assert not torch.equal(  # the run moved after the interruption
        load_checkpoint(tmp_path / "step1.pt")["method"]["intra_predictor.net.0.weight"],
        b["method"]["intra_predictor.net.0.weight"],
    )
