"""Split-brain autoencoder (Zhang et al. 2017): the half-width ResNet's parameters against a count
by hand, the default ResNet still torchvision's, the split trunk's inputs against skimage's colour conversions, its taps against
its halves', the loss against a per-cell reference, one forward per half per step whatever the
batch, and through the real loop: the trunk loads by name into ``pathssl eval``, ``pathssl
embed`` and the nuclei model and its features equal the halves' on skimage's parts of the raw
tiles; bitwise resume and the bf16 / channels_last / compile path (slow)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import test_train_resume
import torch
import torchvision
from skimage import color
from test_ssl_pretext_color import real_views
from test_train_methods import tiny_overrides
from torch import nn

from pathssl.models import build_backbone
from pathssl.models.backbones import ResNetBackbone
from pathssl.models.split import SplitConvBackbone
from pathssl.ssl import METHODS
from pathssl.ssl.colour_bins import ab_gamut_bins
from pathssl.ssl.split_brain import SplitBrain

MEAN, STD = [0.7, 0.5, 0.65], [0.15, 0.2, 0.12]
BASIC, BOTTLENECK = torchvision.models.resnet.BasicBlock, torchvision.models.resnet.Bottleneck


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def store(cmu_slide: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiling import tile_slides

    out = tmp_path_factory.mktemp("tiles")
    tile_slides([cmu_slide], out, mpp=0.5, size=224, progress=False, report=False)
    return out


def conv_weights_by_hand(layers: list[int], bottleneck: bool, width: float, cin: int) -> int:
    """Convolution weights of a torchvision-style ResNet whose stem and stages have
    ``width`` x (64, 64, 128, 256, 512) channels, counted from the architecture's definition."""
    c = [round(64 * width * 2**i) for i in range(4)]
    expansion = 4 if bottleneck else 1
    total = cin * c[0] * 7 * 7
    inp = c[0]
    for stage, n in enumerate(layers):
        planes, out = c[stage], c[stage] * expansion
        for i in range(n):
            if bottleneck:
                total += inp * planes + planes * planes * 9 + planes * out
            else:
                total += inp * planes * 9 + planes * planes * 9
            if i == 0 and (stage > 0 or inp != out):
                total += inp * out  # the 1x1 projection shortcut
            inp = out
    return total


def conv_weights(m: nn.Module) -> int:
    return sum(x.weight.numel() for x in m.modules() if isinstance(x, nn.Conv2d))


@pytest.mark.parametrize(("layers", "block"), [([2, 2, 2, 2], BASIC), ([3, 4, 6, 3], BOTTLENECK)])
def test_half_width_trunk_parameter_count(layers: list[int], block: type) -> None:
    bottleneck = block is BOTTLENECK
    full = ResNetBackbone(block, layers)
    half = ResNetBackbone(block, layers, width=0.5)
    assert conv_weights(full) == conv_weights_by_hand(layers, bottleneck, 1.0, 3)
    assert conv_weights(half) == conv_weights_by_hand(layers, bottleneck, 0.5, 3)
    assert conv_weights(half) / conv_weights(full) == pytest.approx(0.25, abs=0.002)
    one_channel = ResNetBackbone(block, layers, width=0.5, in_chans=1)
    assert conv_weights(one_channel) == conv_weights_by_hand(layers, bottleneck, 0.5, 1)
    # the split trunk: its two halves and no parameter of its own
    split = build_backbone("resnet18_split" if block is BASIC else "resnet50_split")
    assert isinstance(split, SplitConvBackbone)
    n_split = sum(p.numel() for p in split.parameters())
    assert conv_weights(split) == conv_weights_by_hand(
        layers, bottleneck, 0.5, 1
    ) + conv_weights_by_hand(layers, bottleneck, 0.5, 2)
    assert n_split == sum(p.numel() for h in split.halves for p in h.parameters())
    assert 0.24 < n_split / (2 * sum(p.numel() for p in full.parameters())) < 0.26
    assert split.embed_dim == full.embed_dim and split.tap_channels == full.tap_channels


def test_default_resnet_is_still_torchvisions() -> None:
    """Same seed, same weights as torchvision's own model: the width knob forks nothing."""
    torch.manual_seed(0)
    ours = build_backbone("resnet50").state_dict()
    torch.manual_seed(0)
    theirs = torchvision.models.resnet50().state_dict()
    assert set(ours) == set(theirs) - {"fc.weight", "fc.bias"}
    assert all(torch.equal(v, theirs[k]) for k, v in ours.items())
    half = ResNetBackbone(BOTTLENECK, [3, 4, 6, 3], width=0.5).state_dict()
    assert set(half) == set(ours)  # torchvision's names at any width


def skimage_parts(rgb: np.ndarray, space: str) -> tuple[np.ndarray, np.ndarray]:
    """``(B, H, W, 3)`` RGB in [0, 1] -> parts 0, 1 ``(B, d, H, W)`` by skimage (raw units)."""
    if space == "lab":
        lab = color.rgb2lab(rgb)
        return lab[..., :1].transpose(0, 3, 1, 2), lab[..., 1:].transpose(0, 3, 1, 2)
    od = -np.log(np.maximum(rgb * 255.0, 1.0) / 255.0)
    hed = (od @ color.hed_from_rgb).transpose(0, 3, 1, 2)
    return hed[:, :1], hed[:, 1:2]


def standardised(parts: tuple[np.ndarray, np.ndarray], space: str) -> list[torch.Tensor]:
    """The split trunk's documented input encoding, applied by hand."""
    if space == "lab":
        a, b = (parts[0] - 50) / 50, parts[1] / 50
    else:
        a, b = (parts[0] - 0.5) / 0.5, (parts[1] - 0.5) / 0.5
    return [torch.from_numpy(a).float(), torch.from_numpy(b).float()]


@pytest.mark.parametrize("space", ["lab", "hed"])
def test_split_trunk_inputs_and_taps(space: str, data_dir: Path) -> None:
    torch.manual_seed(0)
    trunk = build_backbone("resnet18_split" if space == "lab" else "resnet18_split_hed").eval()
    assert isinstance(trunk, SplitConvBackbone)
    trunk.set_input_normalisation(MEAN, STD)
    rgb, views = real_views(data_dir)
    a, b = trunk.parts(views)
    ref = standardised(skimage_parts(rgb, space), space)
    torch.testing.assert_close(a, ref[0], atol=2e-3, rtol=0)
    torch.testing.assert_close(b, ref[1], atol=2e-3, rtol=0)
    with torch.no_grad():
        taps = trunk.forward_taps(views)
        t0, t1 = trunk.half0.forward_taps(a), trunk.half1.forward_taps(b)
        pooled = trunk(views)
    for i, (t, x, y) in enumerate(zip(taps, t0, t1, strict=True)):
        assert t.shape == (2, trunk.tap_channels[i], 64 >> (i + 1), 64 >> (i + 1))
        assert x.shape[1] == y.shape[1] == trunk.tap_channels[i] // 2
        torch.testing.assert_close(t, torch.cat([x, y], 1))
    torch.testing.assert_close(pooled, torch.cat([t0[-1], t1[-1]], 1).mean((2, 3)))


def build(backbone: str, **kw: object) -> SplitBrain:
    torch.manual_seed(0)
    m = METHODS.build("split_brain", backbone=build_backbone(backbone), head_dim=16, **kw)
    assert isinstance(m, SplitBrain)
    m.set_input_normalisation(MEAN, STD)
    return m.eval()


def cell_targets(values: np.ndarray, bins: np.ndarray, sigma: float) -> tuple[np.ndarray, bool]:
    """One 8x8 cell's values ``(64, d)`` -> soft target ``(Q,)`` over its 5 nearest bins, and
    whether the 5th and 6th nearest are not (nearly) tied."""
    d2 = ((bins - values.mean(0)) ** 2).sum(1)
    order = np.argsort(d2, kind="stable")
    w = np.exp(-d2[order[:5]] / (2 * sigma**2))
    out = np.zeros(len(bins))
    out[order[:5]] = w / w.sum()
    return out, bool(d2[order[5]] - d2[order[4]] > 1e-3 * (1 + d2[order[4]]))


def shared_inputs(parts: tuple[np.ndarray, np.ndarray], space: str) -> torch.Tensor:
    """The unsplit trunk's input: each part rendered as an RGB image by skimage, normalised."""
    p0, p1 = (p.transpose(0, 2, 3, 1) for p in parts)
    if space == "lab":
        zeros = np.zeros(p0.shape[:-1] + (2,))
        imgs = [color.lab2rgb(np.concatenate([p0, zeros], -1))]
        imgs.append(color.lab2rgb(np.concatenate([np.full_like(p0, 50.0), p1], -1)))
    else:
        imgs = [np.clip(np.exp(-p * color.rgb_from_hed[i]), 0, 1) for i, p in enumerate((p0, p1))]
    x = torch.from_numpy(np.concatenate(imgs)).permute(0, 3, 1, 2).float()
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


@pytest.mark.parametrize(
    ("backbone", "space"),
    [("resnet18_split", None), ("resnet18_split_hed", None), ("resnet18", "lab")],
)
def test_loss_matches_a_per_cell_reference(
    backbone: str, space: str | None, data_dir: Path
) -> None:
    method = build(backbone, space=space, grid_step=20.0, l_bins=20, num_bins=16)
    with torch.no_grad():  # confident heads, so that the targets decide the loss
        for head in method.heads:
            last = head.net[-1]  # type: ignore[index]
            assert isinstance(last, nn.Conv2d)
            last.weight.mul_(30)
    rgb, views = real_views(data_dir)
    parts = skimage_parts(rgb, method.space)
    with torch.no_grad():
        got = method([views])
        if isinstance(method.backbone, SplitConvBackbone):
            x = standardised(parts, method.space)
            f0, f1 = (h.forward_features(p) for h, p in zip(method.backbone.halves, x, strict=True))
        else:
            f0, f1 = method.backbone.forward_features(shared_inputs(parts, method.space)).chunk(2)
        logits = [method.heads[0](f0, (8, 8)).double(), method.heads[1](f1, (8, 8)).double()]
    # logits[0] predicts part 1 from part 0, logits[1] part 0 from part 1
    # bins by hand: equal bins (centres, sigma half a width); ab: the gamut grid of step 20
    lo, hi = (0.0, 2.0) if method.space == "hed" else (0.0, 100.0)
    n_bins = 16 if method.space == "hed" else 20
    width = (hi - lo) / n_bins
    equal = (lo + width * (np.arange(n_bins) + 0.5))[:, None]
    if method.space == "lab":
        ab = ab_gamut_bins(20.0).numpy()
        wanted = [(parts[1], ab, 10.0), (parts[0], equal, width / 2)]
    else:
        wanted = [(np.clip(parts[1], lo, hi), equal, width / 2)]
        wanted.append((np.clip(parts[0], lo, hi), equal, width / 2))
    losses, n_clear, n = [0.0, 0.0], 0, 0
    for k, (target, bins, sigma) in enumerate(wanted):
        for b in range(len(rgb)):
            for i in range(8):
                for j in range(8):
                    cell = target[b, :, 8 * i : 8 * i + 8, 8 * j : 8 * j + 8]
                    soft, clear = cell_targets(cell.reshape(len(cell), -1).T, bins, sigma)
                    logp = torch.log_softmax(logits[k][b, :, i, j], 0).numpy()
                    losses[k] -= float((soft * logp).sum()) / (len(rgb) * 64)
                    n_clear, n = n_clear + clear, n + 1
    assert n_clear / n > 0.9
    name0, name1 = ("l", "ab") if method.space == "lab" else ("h", "e")
    assert float(got[f"loss_{name1}"]) == pytest.approx(losses[0], rel=2e-3)
    assert float(got[f"loss_{name0}"]) == pytest.approx(losses[1], rel=2e-3)
    assert float(got["loss"]) == pytest.approx(sum(losses), rel=2e-3)


@pytest.mark.parametrize("backbone", ["resnet18_split", "resnet18"])
def test_one_batched_forward_per_half_per_step(backbone: str) -> None:
    """No per-sample loop: each half (or the shared trunk, on both parts at once) runs once per
    step, on the whole batch, for batches of 2 and 6."""
    method = build(backbone, grid_step=20.0, l_bins=20).train()
    bb = method.backbone
    trunks = list(bb.halves) if isinstance(bb, SplitConvBackbone) else [bb]
    calls: list[tuple[int, int]] = []
    for i, t in enumerate(trunks):  # every trunk forward passes its stem convolution once
        assert isinstance(t, ResNetBackbone)
        t.conv1.register_forward_hook(lambda m, args, out, i=i: calls.append((i, args[0].shape[0])))
    for batch in (2, 6):
        calls.clear()
        method([torch.randn(batch, 3, 64, 64)])["loss"].backward()
        want = [(0, batch), (1, batch)] if method.split else [(0, 2 * batch)]
        assert calls == want


def test_space_must_match_the_split_trunk() -> None:
    with pytest.raises(ValueError, match="differs from the split trunk"):
        build("resnet18_split_hed", space="lab")
    assert build("resnet18_split_hed").space == "hed" and build("resnet18").space == "lab"


def split_overrides(store: Path, out: Path, backbone: str, steps: int = 2) -> list[str]:
    ov = tiny_overrides("split_brain", store, out, steps=steps)
    return [f"model.backbone={backbone}" if o.startswith("model.backbone=") else o for o in ov]


@pytest.mark.parametrize("backbone", ["resnet18_split", "resnet18_split_hed"])
def test_trunk_loads_into_eval_embed_and_nuclei(backbone: str, store: Path, tmp_path: Path) -> None:
    from pathssl.eval.encoder import load_encoder
    from pathssl.models.pretrained import read_pretrained
    from pathssl.nuclei.model import build_nuclei_model
    from pathssl.train import build_trainer, load_config
    from pathssl.train.embed import embed_tiles, load_trunk

    trainer = build_trainer(load_config(None, split_overrides(store, tmp_path, backbone)))
    trainer.fit()
    ckpt = tmp_path / "last.pt"
    trunk, meta = read_pretrained(ckpt, expect_backbone=backbone)
    # the trunk carries the training tiles' normalisation it undoes
    assert trunk["colour.mean"].flatten().tolist() == pytest.approx(meta["mean"])
    assert trunk["colour.std"].flatten().tolist() == pytest.approx(meta["std"])
    encoder = load_encoder(checkpoint=ckpt)
    embedder, _ = load_trunk(ckpt)
    assert isinstance(encoder.model, SplitConvBackbone) and encoder.model.embed_dim == 512
    tiles = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    rgb = tiles.permute(0, 2, 3, 1).double().numpy() / 255.0
    x = standardised(skimage_parts(rgb, encoder.model.space), encoder.model.space)
    with torch.no_grad():
        feats = encoder.model(encoder.normalise(tiles))
        ref = torch.cat([h(p) for h, p in zip(encoder.model.halves, x, strict=True)], 1)
        embedded = embed_tiles(embedder, tiles, meta["mean"], meta["std"])
    torch.testing.assert_close(feats, ref, atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(embedded, feats)
    model = build_nuclei_model(backbone, 2, trunk_state=trunk, mean=meta["mean"], std=meta["std"])
    model.eval()
    enc = model.encoder.backbone
    sd = enc.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in trunk.items())
    with torch.no_grad():
        out = model(tiles)
        taps = model.encoder(encoder.normalise(tiles))
        ref_taps = encoder.model.forward_taps(encoder.normalise(tiles))
    assert out["nucleus_prediction"].shape == (2, 2, 64, 64)
    for a, b in zip(taps, ref_taps, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.slow
def test_resume_after_kill_is_bitwise_exact(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """test_train_resume's kill/resume/compare with split-brain on a split ResNet-18."""
    original = test_train_resume.pretrain_cmd
    moco = tiny_overrides("moco_v2", store, tmp_path)[:3]  # method.name, .params, model.backbone
    mine = split_overrides(store, tmp_path, "resnet18_split")[:3]

    def pretrain_cmd(store: Path, out: Path) -> list[str]:
        swap = dict(zip(moco, mine, strict=True))
        return [swap.get(a, a) for a in original(store, out)]

    monkeypatch.setattr(test_train_resume, "pretrain_cmd", pretrain_cmd)
    test_train_resume.test_resume_after_kill_is_bitwise_exact(store, tmp_path)


@pytest.mark.slow
def test_split_trunk_bf16_channels_last_compile(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """test_gpu_paths_on_cpu's bf16 / channels_last / compile check on the split trunk (the
    registry runs split-brain on an unsplit ResNet-18): its colour conversion stays float32."""
    import test_gpu_paths_on_cpu as gpu_paths

    def overrides(method: str, store: Path, out: Path, steps: int = 2) -> list[str]:
        return split_overrides(store, out, "resnet18_split", steps)

    monkeypatch.setattr(gpu_paths, "tiny_overrides", overrides)
    gpu_paths.test_bf16_channels_last_compile_on_cpu("split_brain", store, tmp_path)
