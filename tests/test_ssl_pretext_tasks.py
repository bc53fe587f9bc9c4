"""The pretext-task family as first-class methods: rotation's loss against a per-image
reference; for each pretext method, the trunk of a 2-step run through the real loop loads into
``pathssl eval``'s encoder and into the nuclei model (strictly), and a killed run resumes
bitwise exactly (the kill/resume machinery of test_train_resume, slow)."""

from __future__ import annotations

from pathlib import Path

import pytest
import test_train_resume
import torch
import torch.nn.functional as F
from test_train_methods import tiny_overrides

from pathssl.models import build_backbone
from pathssl.models.backbones import ResNetBackbone
from pathssl.ssl import METHODS

PRETEXT = ["rotation", "jigsaw", "context"]


@pytest.fixture(scope="module")
def store(cmu_slide: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiling import tile_slides

    out = tmp_path_factory.mktemp("tiles")
    tile_slides([cmu_slide], out, mpp=0.5, size=224, progress=False, report=False)
    return out


def quarter_turn(img: torch.Tensor) -> torch.Tensor:
    """One counter-clockwise quarter turn of ``(C, S, S)`` by index arithmetic:
    ``out[:, i, j] = img[:, j, S - 1 - i]``."""
    s = img.shape[-1]
    i = torch.arange(s).view(s, 1).expand(s, s)
    j = torch.arange(s).view(1, s).expand(s, s)
    return img[:, j, s - 1 - i]


def test_rotation_loss_matches_a_per_image_reference() -> None:
    torch.manual_seed(0)
    method = METHODS.build("rotation", backbone=build_backbone("resnet18")).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        out = method([x])
        logits, labels = [], []
        for b in range(3):
            img = x[b]
            for k in range(4):
                logits.append(method.head(method.backbone(img[None]))[0])
                labels.append(k)
                img = quarter_turn(img)
    ref = F.cross_entropy(torch.stack(logits), torch.tensor(labels))
    torch.testing.assert_close(out["loss"], ref, rtol=1e-4, atol=1e-5)
    acc = (torch.stack(logits).argmax(1) == torch.tensor(labels)).float().mean()
    torch.testing.assert_close(out["accuracy"], acc)


@pytest.mark.parametrize("method", PRETEXT)
def test_trunk_loads_into_eval_and_nuclei(method: str, store: Path, tmp_path: Path) -> None:
    from pathssl.eval.encoder import load_encoder
    from pathssl.models.pretrained import read_pretrained
    from pathssl.nuclei.model import build_nuclei_model
    from pathssl.train import build_trainer, load_config

    trainer = build_trainer(load_config(None, tiny_overrides(method, store, tmp_path)))
    trainer.fit()
    ckpt = tmp_path / "last.pt"
    encoder = load_encoder(checkpoint=ckpt)
    trained = trainer.method.backbone
    assert isinstance(trained, ResNetBackbone)
    trained.eval()
    x = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        feats = encoder.model(encoder.normalise(x))
        torch.testing.assert_close(feats, trained(encoder.normalise(x)))
    assert feats.shape == (2, trained.embed_dim)
    trunk, meta = read_pretrained(ckpt, expect_backbone="resnet18")
    model = build_nuclei_model("resnet18", 2, trunk_state=trunk, mean=meta["mean"])
    sd = model.state_dict()
    loaded = [k for k in sd if k.endswith("conv1.weight") and "encoder" in k]
    assert loaded and any(torch.equal(sd[k], trunk["conv1.weight"]) for k in loaded)


@pytest.mark.slow
@pytest.mark.parametrize("method", PRETEXT)
def test_resume_after_kill_is_bitwise_exact(
    method: str, store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """test_train_resume's kill/resume/compare, run for ``method`` instead of MoCo v2."""
    original = test_train_resume.pretrain_cmd
    moco, mine = (
        tiny_overrides(m, store, tmp_path)[:2] for m in ("moco_v2", method)
    )  # method.name=..., method.params=...

    def pretrain_cmd(store: Path, out: Path) -> list[str]:
        swap = dict(zip(moco, mine, strict=True))
        return [swap.get(a, a) for a in original(store, out)]

    monkeypatch.setattr(test_train_resume, "pretrain_cmd", pretrain_cmd)
    test_train_resume.test_resume_after_kill_is_bitwise_exact(store, tmp_path)
