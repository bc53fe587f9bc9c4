"""Batched torch twins of the albumentations transforms in :mod:`.albu` (CPU or GPU).

Each module draws per-sample parameters with ``sample(n, generator)`` (on the CPU, from an
optional ``torch.Generator``) and applies them with ``transform(x, **params)``; ``forward(x,
generator)`` does both. Samples not selected by the probability ``p`` get identity parameters.
Images are (B, 3, H, W) uint8 or float in [0, 1]; outputs keep the input dtype and device.
"""

from __future__ import annotations

import numpy as np
import torch

from pathssl.data.colour import log_intensity

from .macenko import MacenkoStains, augment_affine, fit_macenko
from .randstainna import StainStats
from .reinhard import ReinhardTarget, fit_reinhard
from .torch_color import hed_jitter_affine, od_affine, restandardise
from .torch_geometry import crop_boxes, dihedral, fov_boxes, sample_rrc_boxes

Params = dict[str, torch.Tensor]


def _uniform(shape: tuple[int, ...], lo: float, hi: float, g: torch.Generator | None):
    return torch.empty(shape).uniform_(lo, hi, generator=g)


def _applied(n: int, p: float, g: torch.Generator | None) -> torch.Tensor:
    return torch.rand(n, generator=g) < p


class BatchOp(torch.nn.Module):
    """Base class: ``forward(x, generator) = transform(x, **sample(len(x), generator))``."""

    def sample(self, n: int, generator: torch.Generator | None = None) -> Params:
        return {}

    def transform(self, x: torch.Tensor, **params: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.transform(x, **self.sample(x.shape[0], generator))


class BatchHEDJitter(BatchOp):
    """Twin of :class:`pathssl.augment.HEDJitter` (Tellez et al. 2019): params alpha, beta (B, 3)."""

    def __init__(self, alpha: float = 0.05, beta: float = 0.05, p: float = 0.5) -> None:
        super().__init__()
        self.alpha, self.beta, self.p = float(alpha), float(beta), float(p)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Params:
        a = 1.0 + _uniform((n, 3), -self.alpha, self.alpha, generator)
        b = _uniform((n, 3), -self.beta, self.beta, generator)
        on = _applied(n, self.p, generator)[:, None]
        return {"alpha": torch.where(on, a, 1.0), "beta": torch.where(on, b, 0.0)}

    def transform(self, x: torch.Tensor, **params: torch.Tensor) -> torch.Tensor:
        A, b = hed_jitter_affine(params["alpha"].to(x.device), params["beta"].to(x.device))
        return od_affine(x, A, b)


class BatchRandStainNA(BatchOp):
    """Twin of :class:`pathssl.augment.RandStainNA` (Shen et al. 2022): params mean, std (B, 3)
    and ``applied`` (B,) bool."""

    def __init__(
        self, stats: StainStats, std_scale: float = 1.0, use_gmm: bool = False, p: float = 0.5
    ) -> None:
        super().__init__()
        self.stats, self.std_scale, self.use_gmm, self.p = stats, std_scale, use_gmm, p
        if use_gmm and stats.gmm_weights is None:
            raise ValueError("these statistics have no GMM; compute them with n_components > 0")

    def sample(self, n: int, generator: torch.Generator | None = None) -> Params:
        st = self.stats
        z = torch.randn(n, 6, generator=generator, dtype=torch.float64)
        if self.use_gmm:
            assert st.gmm_weights is not None and st.gmm_means is not None
            w = torch.as_tensor(st.gmm_weights)
            comp = torch.multinomial(w, n, replacement=True, generator=generator)
            chol = torch.linalg.cholesky(torch.as_tensor(st.gmm_covs))[comp]
            v = torch.as_tensor(st.gmm_means)[comp] + self.std_scale * (chol @ z[..., None])[..., 0]
        else:
            avg = torch.as_tensor(np.concatenate([st.mean_avg, st.std_avg]))
            sd = torch.as_tensor(np.concatenate([st.mean_std, st.std_std]))
            v = avg + self.std_scale * sd * z
        v = v.float()
        return {
            "mean": v[:, :3],
            "std": v[:, 3:].clamp_min(1e-3),
            "applied": _applied(n, self.p, generator),
        }

    def transform(self, x: torch.Tensor, **params: torch.Tensor) -> torch.Tensor:
        y = restandardise(x, self.stats.space, params["mean"], params["std"])
        on = params.get("applied")
        return y if on is None else torch.where(on.to(x.device)[:, None, None, None], y, x)


def fit_macenko_batch(
    x: torch.Tensor, beta: float = 0.15, alpha: float = 1.0, min_pixels: int = 64
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batched :func:`pathssl.augment.fit_macenko` (Macenko et al. 2009) on (B, 3, H, W).

    Returns:
        stain matrices (B, 2, 3), max concentrations (B, 2) and ``valid`` (B,) bool (enough
        tissue pixels); invalid samples hold finite placeholders.
    """
    od = -log_intensity(x).flatten(2).transpose(1, 2)  # (B, N, 3)
    tissue = (od > beta).all(-1)
    cnt = tissue.sum(1)
    w = tissue.float()[..., None]
    mean = (od * w).sum(1) / cnt.clamp_min(1)[:, None]
    c = (od - mean[:, None]) * w
    cov = c.transpose(1, 2) @ c / (cnt - 1).clamp_min(1)[:, None, None]
    cov = cov + 1e-9 * torch.eye(3, device=x.device)
    _, vecs = torch.linalg.eigh(cov)
    plane = vecs[:, :, 1:3]
    plane = plane * torch.where(plane.sum(1, keepdim=True) < 0, -1.0, 1.0)
    proj = od @ plane
    phi = torch.atan2(proj[..., 1], proj[..., 0]).masked_fill(~tissue, float("nan"))
    q = torch.tensor([alpha / 100.0, 1.0 - alpha / 100.0], device=x.device)
    ang = torch.nan_to_num(torch.nanquantile(phi, q, dim=1))  # (2, B)
    v = plane @ torch.stack([torch.cos(ang), torch.sin(ang)], dim=1).permute(2, 1, 0)
    v = v.transpose(1, 2)  # (B, 2, 3): rows at the low and high angles
    swap = v[:, 0, 0] < v[:, 1, 0]
    he = torch.where(swap[:, None, None], v.flip(1), v)
    he = he * torch.where(he.sum(-1, keepdim=True) < 0, -1.0, 1.0)
    he = he / he.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    conc = od @ torch.linalg.pinv(he)  # (B, N, 2)
    max_conc = torch.cat(
        [torch.quantile(ch, 0.99, dim=1) for ch in conc.split(max(1, 2**23 // od.shape[1]))]
    ).clamp_min(1e-6)
    return he, max_conc, cnt >= min_pixels


class BatchMacenkoNormalize(BatchOp):
    """Twin of :class:`pathssl.augment.MacenkoNormalize`: per-tile stains (batched fit) or
    fixed ``source_stains`` mapped to stains fitted once on ``target``."""

    def __init__(
        self,
        target: np.ndarray | None = None,
        target_stains: MacenkoStains | None = None,
        source_stains: MacenkoStains | None = None,
    ) -> None:
        super().__init__()
        if target_stains is None:
            if target is None:
                raise ValueError("give a target image or target_stains")
            target_stains = fit_macenko(target)
        self.target_stains, self.source_stains = target_stains, source_stains

    def transform(self, x: torch.Tensor, **params: torch.Tensor) -> torch.Tensor:
        dev = x.device
        n = x.shape[0]
        tgt = torch.as_tensor(self.target_stains.matrix, dtype=torch.float32, device=dev)
        tmax = torch.as_tensor(self.target_stains.max_conc, dtype=torch.float32, device=dev)
        if self.source_stains is None:
            he, mx, valid = fit_macenko_batch(x)
        else:
            he = torch.as_tensor(self.source_stains.matrix, dtype=torch.float32, device=dev)
            mx = torch.as_tensor(self.source_stains.max_conc, dtype=torch.float32, device=dev)
            he, mx, valid = he.expand(n, 2, 3), mx.expand(n, 2), torch.ones(n, dtype=torch.bool)
        A = torch.linalg.pinv(he) @ torch.diag_embed(tmax / mx) @ tgt
        A = torch.where(valid.to(dev)[:, None, None], A, torch.eye(3, device=dev))
        return od_affine(x, A, torch.zeros(n, 3, device=dev))


class BatchReinhardNormalize(BatchOp):
    """Twin of :class:`pathssl.augment.ReinhardNormalize` (Reinhard et al. 2001): to a target
    image's statistics, or to given ``target_stats``."""

    def __init__(
        self,
        target: np.ndarray | None = None,
        space: str = "lab",
        target_stats: ReinhardTarget | None = None,
    ) -> None:
        super().__init__()
        if target_stats is None:
            if target is None:
                raise ValueError("give a target image or target_stats")
            target_stats = fit_reinhard(target, space)
        self.target = target_stats

    def transform(self, x: torch.Tensor, **params: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        mean = torch.as_tensor(self.target.mean, dtype=torch.float32).expand(n, 3)
        std = torch.as_tensor(self.target.std, dtype=torch.float32).expand(n, 3)
        return restandardise(x, self.target.space, mean, std)


class BatchMacenkoAugment(BatchOp):
    """Twin of :class:`pathssl.augment.MacenkoAugment`: params noise (B, 2, 3), alpha, beta (B, 2)."""

    def __init__(
        self,
        stains: MacenkoStains | None = None,
        sigma: float = 0.05,
        alpha: float = 0.1,
        beta: float = 0.05,
        p: float = 0.5,
    ) -> None:
        super().__init__()
        self.stains = stains if stains is not None else MacenkoStains.reference()
        self.sigma, self.alpha, self.beta, self.p = sigma, alpha, beta, p

    def sample(self, n: int, generator: torch.Generator | None = None) -> Params:
        noise = torch.randn(n, 2, 3, generator=generator) * self.sigma
        a = 1.0 + _uniform((n, 2), -self.alpha, self.alpha, generator)
        b = _uniform((n, 2), -self.beta, self.beta, generator)
        on = _applied(n, self.p, generator)
        return {
            "noise": torch.where(on[:, None, None], noise, 0.0),
            "alpha": torch.where(on[:, None], a, 1.0),
            "beta": torch.where(on[:, None], b, 0.0),
        }

    def transform(self, x: torch.Tensor, **params: torch.Tensor) -> torch.Tensor:
        A, b = augment_affine(
            self.stains.matrix,
            *(params[k].detach().cpu().numpy() for k in ("noise", "alpha", "beta")),
        )
        dev = x.device
        return od_affine(
            x, torch.from_numpy(A).float().to(dev), torch.from_numpy(b).float().to(dev)
        )


class BatchDihedral(BatchOp):
    """Twin of :class:`pathssl.augment.Dihedral`: param ``k`` (B,) in 0..7; masks follow."""

    def __init__(self, p: float = 1.0) -> None:
        super().__init__()
        self.p = p

    def sample(self, n: int, generator: torch.Generator | None = None) -> Params:
        k = torch.randint(0, 8, (n,), generator=generator)
        return {"k": torch.where(_applied(n, self.p, generator), k, 0)}

    def transform(self, x: torch.Tensor, **params: torch.Tensor) -> torch.Tensor:
        return dihedral(x, params["k"])

    def forward_with_masks(
        self, x: torch.Tensor, masks: list[torch.Tensor], generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        k = self.sample(x.shape[0], generator)["k"]
        return dihedral(x, k), [dihedral(m, k) for m in masks]


class BatchRandomResizedCrop(BatchOp):
    """Random resized crop with per-sample boxes (twin of ``A.RandomResizedCrop``); param boxes
    (B, 4) ``(x0, y0, w, h)``. Masks use the same boxes with nearest neighbour."""

    def __init__(
        self,
        size: int,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
    ) -> None:
        super().__init__()
        self.size, self.scale, self.ratio = size, tuple(scale), tuple(ratio)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.forward_with_masks(x, [], generator)[0]

    def forward_with_masks(
        self, x: torch.Tensor, masks: list[torch.Tensor], generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        h, w = x.shape[-2:]
        boxes = sample_rrc_boxes(x.shape[0], h, w, self.scale, self.ratio, generator)  # type: ignore[arg-type]
        out = (self.size, self.size)
        return crop_boxes(x, boxes, out), [crop_boxes(m, boxes, out, nearest=True) for m in masks]


class BatchMultiFOVCrop(torch.nn.Module):
    """Multi-field-of-view crops of a batch: the same location at several physical scales.

    ``forward(x, mpp, masks)`` returns, per field in ``fields_um``, the (B, C, size, size) view
    and its masks; ``mpp`` is the input's micrometres per pixel (scalar or (B,)).
    """

    def __init__(self, fields_um: tuple[float, ...], size: int) -> None:
        super().__init__()
        self.fields_um, self.size = tuple(float(f) for f in fields_um), size

    def forward(
        self,
        x: torch.Tensor,
        mpp: float | torch.Tensor,
        masks: list[torch.Tensor] | None = None,
        generator: torch.Generator | None = None,
    ) -> list[tuple[torch.Tensor, list[torch.Tensor]]]:
        h, w = x.shape[-2:]
        boxes = fov_boxes(x.shape[0], h, w, mpp, self.fields_um, generator)
        out = (self.size, self.size)
        ms = masks or []
        return [
            (crop_boxes(x, b, out), [crop_boxes(m, b, out, nearest=True) for m in ms])
            for b in boxes
        ]


__all__ = [
    "BatchDihedral",
    "BatchHEDJitter",
    "BatchMacenkoAugment",
    "BatchMacenkoNormalize",
    "BatchMultiFOVCrop",
    "BatchOp",
    "BatchRandStainNA",
    "BatchRandomResizedCrop",
    "BatchReinhardNormalize",
    "fit_macenko_batch",
]
