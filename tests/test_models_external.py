"""External encoder files (never downloaded): files written here in the real key layouts
(torchvision / timm ResNet state dicts, prefixed or nested; timm, DINOv2 and torchvision ViTs
with registers, LayerScale and SwiGLU; ``.safetensors``) load onto the package's backbones and
give the same outputs as an independent forward: torchvision's own model, or a naive ViT written
below from the raw tensors."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor

from pathssl.models.external import IMAGENET_MEAN, IMAGENET_STD, load_external, read_external
from pathssl.models.pretrained import CheckpointError, load_pretrained, read_pretrained

KW: dict[str, Any] = {"mean": [0.7, 0.55, 0.65], "std": [0.2, 0.25, 0.2], "tile_mpp": 0.5}


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _resnet18(seed: int) -> torchvision.models.ResNet:
    torch.manual_seed(seed)
    m = torchvision.models.resnet18()
    for mod in m.modules():  # non-trivial batch-norm statistics
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.2, 0.2)
            mod.running_var.uniform_(0.5, 2.0)
    return m.eval()


def _torchvision_features(m: torchvision.models.ResNet, x: Tensor) -> Tensor:
    m.fc = torch.nn.Identity()
    with torch.no_grad():
        out: Tensor = m(x)
    return out


def test_torchvision_resnet_pth(tmp_path: Path) -> None:
    ref = _resnet18(0)
    path = tmp_path / "weights.pth"
    torch.save(ref.state_dict(), path)  # with fc: a classifier head, dropped
    model, meta = load_external(path, **KW)
    assert meta["backbone"] == "resnet18" and meta["layout"] == "resnet"
    assert meta["mean"] == KW["mean"] and meta["tile_mpp"] == 0.5
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), _torchvision_features(ref, x))


@pytest.mark.parametrize("prefix", ["module.", "backbone.", "module.encoder_q."])
def test_prefixed_and_nested_resnet(tmp_path: Path, prefix: str) -> None:
    """MoCo-style files: weights under a prefix, nested in ``state_dict``, with a momentum
    encoder and a queue beside them (the query encoder is taken)."""
    ref, other = _resnet18(1), _resnet18(2)
    sd = {prefix + k: v for k, v in ref.state_dict().items() if not k.startswith("fc.")}
    sd = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}  # as timm saves
    if "encoder_q" in prefix:
        sd |= {f"module.encoder_k.{k}": v for k, v in other.state_dict().items()}
        sd["module.queue"] = torch.randn(8, 4)
    path = tmp_path / "ssl.pth"
    torch.save({"state_dict": sd, "epoch": 200}, path)
    trunk, meta = read_pretrained(path, expect_backbone="resnet18", **KW)
    assert meta["prefix"] == prefix and meta["method"] == "external"
    model, _ = load_pretrained(path, **KW)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), _torchvision_features(ref, x))
    with pytest.raises(CheckpointError, match="holds a resnet18 trunk"):
        read_pretrained(path, expect_backbone="resnet50", **KW)


def test_torchvision_imagenet_file_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Files named as torchvision saves them (the hub cache) take ImageNet's mean/std and need
    no tile_mpp; ``torchvision:NAME`` finds them in $TORCH_HOME/hub/checkpoints."""
    ref = _resnet18(3)
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(ref.state_dict(), cache / "resnet18-f37072fd.pth")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    from pathssl.eval.encoder import load_encoder

    enc = load_encoder(checkpoint="torchvision:resnet18")
    assert (enc.mean, enc.std, enc.tile_mpp) == (IMAGENET_MEAN, IMAGENET_STD, None)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(enc.model(x), _torchvision_features(ref, x))
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        load_encoder(checkpoint="torchvision:resnet50")


def test_mean_std_and_tile_mpp_required(tmp_path: Path) -> None:
    path = tmp_path / "lunit_bt.pth"
    torch.save(_resnet18(4).state_dict(), path)
    with pytest.raises(CheckpointError, match="normalisation unknown"):
        read_external(path, tile_mpp=0.5)
    with pytest.raises(CheckpointError, match="tile_mpp unknown"):
        read_external(path, mean=KW["mean"], std=KW["std"])
    _, meta = read_external(path, mean=KW["mean"], std=KW["std"], tile_mpp="none")
    assert meta["tile_mpp"] is None


# ------------------------------------------------------------------ timm-format ViTs


def _timm_vit(
    seed: int, d: int = 64, depth: int = 2, regs: int = 2, grid: int = 4, mlp: str = "packed",
    ls: bool = True, pos: str = "timm",
) -> dict[str, Tensor]:  # fmt: skip
    """Random weights in timm's key layout (patch 16; ``pos``: timm (cls + regs + patches have
    positions), no_embed_class (patches only), dinov2 (native DINOv2 names, cls + patches))."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int, s: float = 0.1) -> Tensor:
        return torch.randn(*shape, generator=g) * s

    n = grid * grid
    npos = {"timm": 1 + regs + n, "no_embed_class": n, "dinov2": 1 + n}[pos]
    sd = {"cls_token": r(1, 1, d, s=1.0), "pos_embed": r(1, npos, d, s=0.5)}
    sd |= {"patch_embed.proj.weight": r(d, 3, 16, 16, s=0.05), "patch_embed.proj.bias": r(d)}
    if regs:
        sd["register_tokens" if pos == "dinov2" else "reg_token"] = r(1, regs, d, s=1.0)
    hidden = 2 * d
    for i in range(depth):
        b = f"blocks.{i}."
        sd |= {b + "norm1.weight": 1 + r(d), b + "norm1.bias": r(d)}
        sd |= {b + "attn.qkv.weight": r(3 * d, d), b + "attn.qkv.bias": r(3 * d)}
        sd |= {b + "attn.proj.weight": r(d, d), b + "attn.proj.bias": r(d)}
        sd |= {b + "norm2.weight": 1 + r(d), b + "norm2.bias": r(d)}
        if ls:
            sd |= {b + "ls1.gamma": 0.5 + r(d), b + "ls2.gamma": 0.5 + r(d)}
        if mlp == "gelu":
            sd |= {b + "mlp.fc1.weight": r(hidden, d), b + "mlp.fc1.bias": r(hidden)}
            sd |= {b + "mlp.fc2.weight": r(d, hidden), b + "mlp.fc2.bias": r(d)}
        elif mlp == "packed":  # timm SwiGLUPacked (Virchow): fc1 holds gate then value
            sd |= {b + "mlp.fc1.weight": r(2 * hidden, d), b + "mlp.fc1.bias": r(2 * hidden)}
            sd |= {b + "mlp.fc2.weight": r(d, hidden), b + "mlp.fc2.bias": r(d)}
        elif mlp == "dinov2":
            sd |= {b + "mlp.w12.weight": r(2 * hidden, d), b + "mlp.w12.bias": r(2 * hidden)}
            sd |= {b + "mlp.w3.weight": r(d, hidden), b + "mlp.w3.bias": r(d)}
        else:  # timm SwiGLU: gate and value apart
            sd |= {b + "mlp.fc1_g.weight": r(hidden, d), b + "mlp.fc1_g.bias": r(hidden)}
            sd |= {b + "mlp.fc1_x.weight": r(hidden, d), b + "mlp.fc1_x.bias": r(hidden)}
            sd |= {b + "mlp.fc2.weight": r(d, hidden), b + "mlp.fc2.bias": r(d)}
    sd |= {"norm.weight": 1 + r(d), "norm.bias": r(d), "head.weight": r(10, d)}
    if pos == "dinov2":
        sd["mask_token"] = r(1, d)
    return sd


def _ln(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + 1e-6) * w + b


def _reference_vit(sd: dict[str, Tensor], x: Tensor, heads: int, pos: str) -> Tensor:
    """Naive ViT forward from the raw timm tensors: tokens ``(B, 1 + N, D)`` (registers
    dropped), float64."""
    w = {k: v.double() for k, v in sd.items()}
    x = x.double()
    bsz = x.shape[0]
    t = F.conv2d(x, w["patch_embed.proj.weight"], w["patch_embed.proj.bias"], stride=16)
    t = t.flatten(2).transpose(1, 2)  # (B, N, D)
    cls = w["cls_token"].expand(bsz, -1, -1)
    regs = w.get("reg_token", w.get("register_tokens"))
    r = 0 if regs is None else regs.shape[1]
    p = w["pos_embed"]
    reg = [regs.expand(bsz, -1, -1)] if regs is not None else []
    if pos == "timm":  # positions for class token, registers and patches
        seq = torch.cat([cls, *reg, t], 1) + p
    elif pos == "no_embed_class":  # positions for the patches only
        seq = torch.cat([cls, *reg, t + p], 1)
    else:  # dinov2: positions for class token and patches, registers inserted after
        seq = torch.cat([cls + p[:, :1], *reg, t + p[:, 1:]], 1)
    d = seq.shape[-1]
    hd = d // heads
    depth = 1 + max(int(k.split(".")[1]) for k in w if k.startswith("blocks."))
    for i in range(depth):
        blk = {k.split(".", 2)[2]: v for k, v in w.items() if k.startswith(f"blocks.{i}.")}
        b = blk.__getitem__
        h = _ln(seq, b("norm1.weight"), b("norm1.bias"))
        qkv = h @ b("attn.qkv.weight").T + b("attn.qkv.bias")
        q, k, v = (z.reshape(bsz, -1, heads, hd).transpose(1, 2) for z in qkv.chunk(3, -1))
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), dim=-1)
        o = (att @ v).transpose(1, 2).reshape(bsz, -1, d)
        o = o @ b("attn.proj.weight").T + b("attn.proj.bias")
        gamma1 = blk.get("ls1.gamma", torch.ones(d, dtype=torch.float64))
        seq = seq + gamma1 * o
        h = _ln(seq, b("norm2.weight"), b("norm2.bias"))
        if "mlp.fc1_g.weight" in blk:
            gate = h @ b("mlp.fc1_g.weight").T + b("mlp.fc1_g.bias")
            val = h @ b("mlp.fc1_x.weight").T + b("mlp.fc1_x.bias")
            m = (gate * torch.sigmoid(gate) * val) @ b("mlp.fc2.weight").T + b("mlp.fc2.bias")
        elif "mlp.w12.weight" in blk:
            a, c = (h @ b("mlp.w12.weight").T + b("mlp.w12.bias")).chunk(2, -1)
            m = (a * torch.sigmoid(a) * c) @ b("mlp.w3.weight").T + b("mlp.w3.bias")
        elif b("mlp.fc1.weight").shape[0] == 2 * b("mlp.fc2.weight").shape[1]:
            a, c = (h @ b("mlp.fc1.weight").T + b("mlp.fc1.bias")).chunk(2, -1)
            m = (a * torch.sigmoid(a) * c) @ b("mlp.fc2.weight").T + b("mlp.fc2.bias")
        else:
            z = h @ b("mlp.fc1.weight").T + b("mlp.fc1.bias")
            z = 0.5 * z * (1 + torch.erf(z / math.sqrt(2)))
            m = z @ b("mlp.fc2.weight").T + b("mlp.fc2.bias")
        gamma2 = blk.get("ls2.gamma", torch.ones(d, dtype=torch.float64))
        seq = seq + gamma2 * m
    seq = _ln(seq, w["norm.weight"], w["norm.bias"])
    return torch.cat([seq[:, :1], seq[:, 1 + r :]], 1)


@pytest.mark.parametrize(
    ("mlp", "regs", "ls", "pos"),
    [
        ("packed", 2, True, "timm"),  # Virchow2-like: SwiGLUPacked, registers, LayerScale
        ("packed", 2, True, "no_embed_class"),  # timm's DINOv2-with-registers conversion
        ("dinov2", 2, True, "dinov2"),  # native DINOv2 names (w12 / w3, register_tokens)
        ("split", 0, True, "timm"),  # timm SwiGLU (fc1_g / fc1_x)
        ("gelu", 0, True, "timm"),  # UNI-like: LayerScale, GELU MLP
        ("gelu", 0, False, "timm"),  # plain (DINO ViT-S): the registered vit_tiny
    ],
)
def test_timm_vit_matches_naive_reference(
    tmp_path: Path, mlp: str, regs: int, ls: bool, pos: str
) -> None:
    sd = _timm_vit(0, regs=regs, mlp=mlp, ls=ls, pos=pos)
    path = tmp_path / "vit.pth"
    torch.save({"model": sd}, path)
    model, meta = load_external(path, **KW)
    assert meta["layout"] == "timm-vit"
    plain = mlp == "gelu" and not regs and not ls
    assert meta["backbone"] == ("vit_tiny" if plain else "vit"), meta
    params = meta["backbone_params"]
    assert plain or (params["reg_tokens"], params["layer_scale"]) == (regs, ls)
    x = torch.randn(2, 3, 64, 64)
    want = _reference_vit(sd, x, heads=2, pos=pos).float()
    with torch.no_grad():
        tokens = model.forward_features(x)
        torch.testing.assert_close(tokens, want, atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(model(x), want[:, 0], atol=2e-5, rtol=1e-4)
        masked = model.forward_masked(x, torch.arange(16).expand(2, -1))  # every patch kept
        torch.testing.assert_close(masked, want, atol=2e-5, rtol=1e-4)


def test_safetensors_and_torchvision_vit(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    sd = _timm_vit(1, regs=2, mlp="packed", pos="timm")
    path = tmp_path / "model.safetensors"
    save_file(sd, str(path))
    model, meta = load_external(path, **KW)
    x = torch.randn(1, 3, 64, 64)
    want = _reference_vit(sd, x, heads=2, pos="timm").float()
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(x), want, atol=2e-5, rtol=1e-4)
    # the package's own ViT names (torchvision's VisionTransformer) with a classifier head
    torch.manual_seed(0)
    tv = torchvision.models.VisionTransformer(64, 16, 2, 2, 64, 128).eval()
    path = tmp_path / "tv_vit.pth"
    torch.save(tv.state_dict(), path)
    model, meta = load_external(path, **KW)
    assert (meta["layout"], meta["backbone"]) == ("torchvision-vit", "vit_tiny")
    tv.heads = torch.nn.Identity()
    with torch.no_grad():
        torch.testing.assert_close(model(x), tv(x))


def test_package_vit_variant_names_round_trip(tmp_path: Path) -> None:
    """A bare state dict of the package's own ViT variant (registers, LayerScale, SwiGLU) is
    recognised and rebuilt with the same arguments."""
    from pathssl.models import build_backbone, trunk_state_dict

    torch.manual_seed(0)
    ref = build_backbone("vit_tiny_reg").eval()
    path = tmp_path / "variant.pth"
    torch.save(trunk_state_dict(ref), path)
    model, meta = load_external(path, **KW)
    assert meta["backbone"] == "vit" and meta["backbone_params"]["reg_tokens"] == 2
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(x), ref.forward_features(x))


def test_unrecognised_layouts_name_the_keys(tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    torch.save({"stem.weight": torch.zeros(4, 3, 3, 3), "cls.bias": torch.zeros(4)}, path)
    with pytest.raises(
        CheckpointError, match=r"key layout not recognised .*resnet.*timm-vit.*stem\.weight"
    ):
        read_pretrained(path, **KW)
    sd = _timm_vit(2, regs=0, mlp="gelu", ls=False)
    sd["blocks.0.attn.q_norm.weight"] = torch.ones(32)  # qk-norm: not a layout we map
    torch.save(sd, path)
    with pytest.raises(
        CheckpointError, match=r"unmatched keys encoder\.layers\.encoder_layer_0\.attn\.q_norm"
    ):
        read_pretrained(path, **KW)
    torch.save({"epoch": 3, "args": {"lr": 0.1}}, path)
    with pytest.raises(CheckpointError, match="holds no tensors"):
        read_pretrained(path, **KW)


# ------------------------------------------------------------ every consumer takes them


@pytest.fixture(scope="module")
def store(cmu_slide: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiling import tile_slides
    from tiling.store import find_stores

    out = tmp_path_factory.mktemp("tiles")
    tile_slides([cmu_slide], out, mpp=0.5, size=224, progress=False, report=False)
    (path,) = find_stores([out])
    return path


def test_extract_features_and_embed(store: Path, tmp_path: Path) -> None:
    """``extract_features`` (eval) and ``pathssl embed`` on real tiles equal torchvision's
    ResNet applied to the tiles normalised by hand."""
    import zarr

    from pathssl.cli import main
    from pathssl.eval.encoder import extract_features, load_encoder
    from tiling import open_store

    ref = _resnet18(5)
    path = tmp_path / "bt.pth"
    torch.save({"module.backbone." + k: v for k, v in ref.state_dict().items()}, path)
    tiles = open_store(store)
    images = torch.from_numpy(np.stack([tiles[i] for i in range(6)])).permute(0, 3, 1, 2)
    m, s = torch.tensor(KW["mean"]).view(1, 3, 1, 1), torch.tensor(KW["std"]).view(1, 3, 1, 1)
    want = _torchvision_features(ref, (images.float() / 255 - m) / s)

    enc = load_encoder("resnet18", path, mean=KW["mean"], std=KW["std"], tile_mpp=0.5)
    dataset = [(images[i], i % 2) for i in range(6)]
    feats, labels = extract_features(enc, dataset, batch_size=4)
    torch.testing.assert_close(feats, want, atol=1e-4, rtol=1e-4)
    assert labels.tolist() == [0, 1, 0, 1, 0, 1] and enc.tile_mpp == 0.5

    out = tmp_path / "feats.zarr"
    args = ["embed", str(store), "--checkpoint", str(path), "--out", str(out), "--device", "cpu"]
    args += ["--mean", *map(str, KW["mean"]), "--std", *map(str, KW["std"]), "--tile-mpp", "0.5"]
    assert main(args) == 0
    g = zarr.open_group(str(out), mode="r")
    got = torch.from_numpy(np.asarray(g["features"][:6]))
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert g.attrs["method"] == "external" and g.attrs["mean"] == KW["mean"]


def test_nuclei_head_takes_external_encoders(tmp_path: Path) -> None:
    """The nuclei model starts from the file's trunk with its normalisation, and the config it
    saves (build arguments completed) rebuilds the same model without the file."""
    from pathssl.nuclei.config import ModelConfig, NucleiConfig
    from pathssl.nuclei.train import build_model, model_mpp, with_encoder_params

    sd = _timm_vit(3, regs=2, mlp="packed", pos="timm")
    path = tmp_path / "virchow_like.pth"
    torch.save(sd, path)
    model_cfg = ModelConfig(
        backbone="vit", checkpoint=str(path), encoder_mean=KW["mean"], encoder_std=KW["std"]
    )
    cfg = NucleiConfig(model=model_cfg)
    with pytest.raises(CheckpointError, match=r"tile_mpp unknown .*model\.encoder_"):
        model_mpp(cfg)
    cfg.model.encoder_tile_mpp = 0.25
    assert model_mpp(cfg) == (0.25, f"the tile_mpp of the encoder checkpoint {path}")
    model = build_model(cfg.model, num_types=1)
    trunk = model.encoder.backbone
    torch.testing.assert_close(trunk.class_token, sd["cls_token"])
    torch.testing.assert_close(model.mean.flatten(), torch.tensor(KW["mean"]))
    with torch.no_grad():  # registers dropped: the dense head sees the patch grid
        out = model.eval()(torch.randint(0, 255, (1, 3, 64, 64), dtype=torch.uint8))
    assert all(v.shape[-2:] == (64, 64) for v in out.values())
    saved = with_encoder_params(cfg)
    assert saved.model.params["reg_tokens"] == 2
    saved.model.checkpoint = ""  # as load_nuclei_model rebuilds nuclei.pt
    again = build_model(saved.model, num_types=1)
    again.load_state_dict(model.state_dict())  # strict: same architecture
