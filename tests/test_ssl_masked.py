"""MAE and MaskFeat take their patch mask from the one sampler, or from the recipe."""

from __future__ import annotations

import pytest
import torch

from pathssl.augment.masking import random_patch_mask
from pathssl.models import build_backbone
from pathssl.ssl import METHODS, SSLMethod

TINY = {"mae": {"decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2}, "maskfeat": {}}


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)


def build(name: str, **kw: float) -> SSLMethod:
    method = METHODS.build(name, backbone=build_backbone("vit_tiny"), **{**TINY[name], **kw})
    assert isinstance(method, SSLMethod)
    return method.eval()


@pytest.mark.parametrize("name", sorted(TINY))
def test_own_mask_is_the_sampler_draw(name: str) -> None:
    method = build(name, mask_ratio=0.5)
    x = torch.randn(3, 3, 64, 64)
    n = (64 // method.vit.patch_size) ** 2  # type: ignore[operator]
    torch.manual_seed(21)
    own = method([x])["loss"]
    torch.manual_seed(21)
    mask = random_patch_mask(3, n, 0.5)
    given = method([x], patch_mask=mask)["loss"]
    torch.testing.assert_close(own, given, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(TINY))
def test_given_mask_decides_the_loss(name: str) -> None:
    method = build(name, mask_ratio=0.5)
    x = torch.randn(2, 3, 64, 64)
    n = (64 // method.vit.patch_size) ** 2  # type: ignore[operator]
    mask = random_patch_mask(2, n, 0.5, torch.Generator().manual_seed(0))
    torch.manual_seed(1)
    a = method([x], patch_mask=mask)["loss"]
    torch.manual_seed(2)  # the global generator no longer matters
    assert torch.equal(method([x], patch_mask=mask)["loss"], a)
    other = random_patch_mask(2, n, 0.5, torch.Generator().manual_seed(1))
    assert not torch.equal(method([x], patch_mask=other)["loss"], a)
    with pytest.raises(ValueError, match="patch size"):
        method([x], patch_mask=mask[:, :-1])


def test_mae_loss_counts_only_the_masked_patches() -> None:
    """The loss is the per-patch MSE of the decoder's predictions, averaged over exactly the
    patches the given mask hides (recomputed here from the raw pixels)."""
    method = build("mae", mask_ratio=0.75, norm_pix=False)
    x = torch.randn(2, 3, 64, 64)
    p = method.vit.patch_size  # type: ignore[operator]
    n = (64 // p) ** 2
    mask = random_patch_mask(2, n, 0.75, torch.Generator().manual_seed(3))
    pred = {}

    def keep(_m: torch.nn.Module, _i: object, out: torch.Tensor) -> None:
        pred["y"] = out

    method.decoder_pred.register_forward_hook(keep)  # type: ignore[union-attr]
    loss = method([x], patch_mask=mask)["loss"]
    target = x.reshape(2, 3, 64 // p, p, 64 // p, p).permute(0, 2, 4, 3, 5, 1).reshape(2, n, -1)
    per_patch = ((pred["y"] - target) ** 2).mean(-1)  # (2, N)
    torch.testing.assert_close(loss, per_patch[mask].mean())


@pytest.mark.parametrize("ratio", [0.0, 1.0])
def test_degenerate_mask_ratio_is_rejected(ratio: float) -> None:
    with pytest.raises(ValueError, match="mask_ratio"):
        build("mae", mask_ratio=ratio)


@pytest.mark.parametrize("name", sorted(TINY))
def test_bf16_autocast_step_with_a_recipe_mask(name: str) -> None:
    """The GPU precision path on the CPU: the mask token meets bf16 tokens (MaskFeat's lerp
    failed on mixed dtypes) and still gets a gradient."""
    method = build(name).train()
    n = (64 // method.vit.patch_size) ** 2  # type: ignore[operator]
    mask = random_patch_mask(2, n, 0.5, torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = method([torch.randn(2, 3, 64, 64)], patch_mask=mask)["loss"]
    loss.backward()
    assert torch.isfinite(loss)
    grad = method.mask_token.grad  # type: ignore[union-attr]
    assert grad is not None and float(grad.abs().sum()) > 0
