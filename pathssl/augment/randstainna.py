"""RandStainNA (Shen et al. 2022) dataset statistics, GMM variant and template sampling.

Shen, Y. et al. "RandStainNA: Learning stain-agnostic features from histology slides by
bridging stain augmentation and normalization." MICCAI 2022. Each tile's per-channel mean and
standard deviation in a colour space (LAB, HSV or HED) are gathered over the dataset. At
augmentation time a template (mean, std per channel) is sampled and the tile is re-standardised
to it (:func:`pathssl.augment.stain.restandardise`).

Two template distributions:

* independent normals per statistic (the paper's released version): ``mean_c ~ N(mean_avg_c,
  (std_scale * mean_std_c)^2)``, ``std_c ~ N(std_avg_c, (std_scale * std_std_c)^2)``;
* a Gaussian mixture over the joint 6-vector ``(mean_0..2, std_0..2)`` (the GMM variant, never
  released by the authors; written here with a plain full-covariance EM).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .stain import SPACES, channel_stats, rgb_to_space


@dataclass
class StainStats:
    """Dataset colour statistics in ``space``; every array has one entry per channel (3,).

    ``gmm_weights`` (K,), ``gmm_means`` (K, 6), ``gmm_covs`` (K, 6, 6) hold the optional mixture
    over ``(mean_0..2, std_0..2)``.
    """

    space: str
    mean_avg: np.ndarray
    mean_std: np.ndarray
    std_avg: np.ndarray
    std_std: np.ndarray
    n_tiles: int = 0
    gmm_weights: np.ndarray | None = None
    gmm_means: np.ndarray | None = None
    gmm_covs: np.ndarray | None = None
    sources: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "space": self.space,
            "n_tiles": int(self.n_tiles),
            "sources": list(self.sources),
            "mean": {"avg": self.mean_avg.tolist(), "std": self.mean_std.tolist()},
            "std": {"avg": self.std_avg.tolist(), "std": self.std_std.tolist()},
        }
        if self.gmm_weights is not None:
            assert self.gmm_means is not None and self.gmm_covs is not None
            d["gmm"] = {
                "weights": self.gmm_weights.tolist(),
                "means": self.gmm_means.tolist(),
                "covs": self.gmm_covs.tolist(),
            }
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StainStats:
        g = d.get("gmm")
        return cls(
            space=str(d["space"]),
            mean_avg=np.asarray(d["mean"]["avg"], dtype=np.float64),
            mean_std=np.asarray(d["mean"]["std"], dtype=np.float64),
            std_avg=np.asarray(d["std"]["avg"], dtype=np.float64),
            std_std=np.asarray(d["std"]["std"], dtype=np.float64),
            n_tiles=int(d.get("n_tiles", 0)),
            gmm_weights=None if g is None else np.asarray(g["weights"], dtype=np.float64),
            gmm_means=None if g is None else np.asarray(g["means"], dtype=np.float64),
            gmm_covs=None if g is None else np.asarray(g["covs"], dtype=np.float64),
            sources=list(d.get("sources", [])),
        )

    def save(self, path: str | Path) -> None:
        import yaml

        from tiling.atomic import atomic_write

        atomic_write(path, yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def load(cls, path: str | Path) -> StainStats:
        import yaml

        return cls.from_dict(yaml.safe_load(Path(path).read_text()))


def tile_stats(img: np.ndarray, space: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (6,) ``(mean_0..2, std_0..2)`` in ``space``."""
    m, s = channel_stats(rgb_to_space(img, space))
    return np.concatenate([m, s])


def fit_gmm(
    x: np.ndarray, k: int, iters: int = 100, seed: int = 0, reg: float = 1e-6
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Full-covariance Gaussian mixture by EM.

    Args:
        x: (N, D) samples. k: components. reg: ridge added to each covariance (relative to the
            data variance).

    Returns:
        weights (K,), means (K, D), covariances (K, D, D).
    """
    x = np.asarray(x, dtype=np.float64)
    n, d = x.shape
    if n < k:
        raise ValueError(f"{n} samples cannot fit {k} mixture components")
    rng = np.random.default_rng(seed)
    ridge = reg * np.eye(d) * max(float(x.var(axis=0).mean()), 1e-12)
    means = x[rng.choice(n, size=k, replace=False)].copy()
    covs = np.repeat((np.cov(x.T).reshape(d, d) + ridge)[None], k, axis=0)
    weights = np.full(k, 1.0 / k)
    prev = -np.inf
    for _ in range(iters):
        logp = np.empty((n, k))
        for j in range(k):
            chol = np.linalg.cholesky(covs[j])
            z = np.linalg.solve(chol, (x - means[j]).T)
            logdet = 2.0 * np.log(np.diag(chol)).sum()
            logp[:, j] = np.log(weights[j]) - 0.5 * ((z**2).sum(0) + logdet + d * np.log(2 * np.pi))
        top = logp.max(axis=1, keepdims=True)
        ll = top[:, 0] + np.log(np.exp(logp - top).sum(axis=1))
        resp = np.exp(logp - ll[:, None])
        nk = resp.sum(axis=0) + 1e-12
        weights = nk / n
        means = (resp.T @ x) / nk[:, None]
        for j in range(k):
            c = x - means[j]
            covs[j] = (resp[:, j, None] * c).T @ c / nk[j] + ridge
        total = float(ll.sum())
        if abs(total - prev) < 1e-6 * abs(total):
            break
        prev = total
    return weights, means, covs


def stats_from_vectors(
    vectors: np.ndarray, space: str, n_components: int = 0, seed: int = 0
) -> StainStats:
    """Build :class:`StainStats` from (N, 6) per-tile vectors (see :func:`tile_stats`)."""
    v = np.asarray(vectors, dtype=np.float64).reshape(-1, 6)
    if len(v) == 0:
        raise ValueError("no tiles to compute stain statistics from")
    stats = StainStats(
        space=space,
        mean_avg=v[:, :3].mean(0),
        mean_std=v[:, :3].std(0),
        std_avg=v[:, 3:].mean(0),
        std_std=v[:, 3:].std(0),
        n_tiles=len(v),
    )
    if n_components > 0:
        w, m, c = fit_gmm(v, n_components, seed=seed)
        stats.gmm_weights, stats.gmm_means, stats.gmm_covs = w, m, c
    return stats


def stats_from_images(
    images: Iterable[np.ndarray], space: str = "lab", n_components: int = 0, seed: int = 0
) -> StainStats:
    """RandStainNA statistics of an iterable of (H, W, 3) uint8 RGB tiles."""
    return stats_from_vectors(
        np.array([tile_stats(img, space) for img in images]), space, n_components, seed
    )


def compute_stain_stats(
    stores: Sequence[Any],
    space: str = "lab",
    n_components: int = 0,
    max_tiles: int | None = 2000,
    min_tissue: float = 0.5,
    seed: int = 0,
) -> StainStats:
    """RandStainNA statistics over tile stores (``tiling.open_store`` paths or opened stores).

    Args:
        stores: store folders (``<slide_id>.zarr``) or objects with ``__len__``/``__getitem__``.
        space: ``lab``, ``hsv`` or ``hed``.
        n_components: > 0 also fits a Gaussian mixture with that many components.
        max_tiles: at most this many tiles per store, drawn at random with ``seed`` (None: all).
        min_tissue: skip tiles whose ``qc["tissue"]`` fraction is below this (if the store has it).
    """
    if space not in SPACES:
        raise ValueError(f"unknown colour space {space!r}; known: {', '.join(SPACES)}")
    rng = np.random.default_rng(seed)
    vectors: list[np.ndarray] = []
    names: list[str] = []
    for item in stores:
        if isinstance(item, (str, Path)):
            from tiling import open_store

            store: Any = open_store(str(item))
            names.append(str(item))
        else:
            store = item
            names.append(str(getattr(item, "path", type(item).__name__)))
        idx = np.arange(len(store))
        qc = getattr(store, "qc", None)
        if qc is not None and "tissue" in qc and len(idx):
            idx = idx[np.asarray(qc["tissue"])[idx] >= min_tissue]
        if max_tiles is not None and len(idx) > max_tiles:
            idx = np.sort(rng.choice(idx, size=max_tiles, replace=False))
        vectors.extend(tile_stats(np.asarray(store[int(i)]), space) for i in idx)
    stats = stats_from_vectors(np.array(vectors), space, n_components, seed)
    stats.sources = names
    return stats


def sample_templates(
    stats: StainStats,
    rng: np.random.Generator,
    n: int = 1,
    std_scale: float = 1.0,
    use_gmm: bool = False,
    min_std: float = 1e-3,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``n`` RandStainNA templates: means (n, 3) and stds (n, 3) in ``stats.space``.

    ``std_scale`` widens or narrows the distributions (the paper's ``1 + std_hyper``).
    """
    if use_gmm:
        if stats.gmm_weights is None or stats.gmm_means is None or stats.gmm_covs is None:
            raise ValueError("these statistics have no GMM; compute them with n_components > 0")
        comp = rng.choice(len(stats.gmm_weights), size=n, p=stats.gmm_weights)
        z = rng.standard_normal((n, 6))
        chol = np.linalg.cholesky(stats.gmm_covs)[comp]  # (n, 6, 6)
        v = stats.gmm_means[comp] + std_scale * np.einsum("nij,nj->ni", chol, z)
    else:
        avg = np.concatenate([stats.mean_avg, stats.std_avg])
        sd = np.concatenate([stats.mean_std, stats.std_std])
        v = avg + std_scale * sd * rng.standard_normal((n, 6))
    return v[:, :3], np.maximum(v[:, 3:], min_std)
