"""Probes on frozen features: linear (logistic regression), kNN, few-shot (SimpleShot).

Features are ``(N, D)`` float tensors, labels ``(N,)`` int64 class indices ``0..C-1``. Every probe
returns a :class:`ProbeOutput` with hard predictions and ``(N, C)`` class probabilities (used by
AUROC and ECE). Protocols follow UNI (Chen et al. 2024) and kaiko eva:

* **linear probe** -- multinomial logistic regression on standardised features (train mean/std),
  cross-entropy + ``l2 / 2 * ||W||^2``, full-batch L-BFGS with strong-Wolfe line search (the
  scikit-learn ``LogisticRegression(solver="lbfgs")`` recipe, in torch).
* **kNN** -- ``k = 20``; features centred with the *training* mean and L2-normalised; cosine
  similarity; majority vote of the k nearest (ties broken by summed similarity); probabilities are
  the vote fractions.
* **few-shot** -- SimpleShot (Wang et al. 2019), "CL2N": per episode, ``n_shot`` support tiles per
  class drawn without replacement; support and query features centred with the support mean and
  L2-normalised; class prototypes = mean support feature; nearest prototype (Euclidean);
  probabilities = softmax of negative distances.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import Tensor

__all__ = [
    "LogisticRegressionProbe",
    "ProbeOutput",
    "center_l2",
    "few_shot_episodes",
    "knn_probe",
    "linear_probe",
]


@dataclass(frozen=True)
class ProbeOutput:
    """``pred (N,)`` int64 predictions and ``proba (N, C)`` float64 probabilities."""

    pred: NDArray[np.int64]
    proba: NDArray[np.float64]


def _check(x: Tensor, y: Tensor | None = None) -> None:
    if x.ndim != 2:
        raise ValueError(f"features must be (N, D), got {tuple(x.shape)}")
    if y is not None and (y.ndim != 1 or y.shape[0] != x.shape[0]):
        raise ValueError(f"labels must be ({x.shape[0]},), got {tuple(y.shape)}")
    if y is not None and torch.unique(y).numel() < 2:
        from tiling.errors import UsageError

        raise UsageError(
            f"the training tiles hold {torch.unique(y).numel()} class ({y.shape[0]} tiles); a "
            "classifier needs at least 2 classes: label training tiles of two or more classes"
        )


def _output(proba: Tensor) -> ProbeOutput:
    p = proba.detach().double().cpu()
    return ProbeOutput(p.argmax(dim=1).numpy().astype(np.int64), p.numpy())


def center_l2(reference: Tensor, *features: Tensor) -> list[Tensor]:
    """Subtract ``reference``'s mean feature from each of ``features`` and L2-normalise rows."""
    mean = reference.float().mean(dim=0, keepdim=True)
    return [F.normalize(f.float() - mean, dim=1) for f in features]


class LogisticRegressionProbe:
    """Multinomial logistic regression fitted with full-batch L-BFGS.

    Args:
        num_classes: C.
        l2: weight of ``1/2 ||W||^2`` added to the mean cross-entropy (bias not penalised).
        max_iter: L-BFGS iterations.
    """

    def __init__(self, num_classes: int, l2: float = 1e-4, max_iter: int = 500) -> None:
        self.num_classes = num_classes
        self.l2 = l2
        self.max_iter = max_iter
        self.mean: Tensor | None = None
        self.std: Tensor | None = None
        self.weight: Tensor | None = None
        self.bias: Tensor | None = None

    def fit(self, x: Tensor, y: Tensor) -> LogisticRegressionProbe:
        """Fit on ``(N, D)`` features and ``(N,)`` labels."""
        _check(x, y)
        x = x.detach().float()
        y = y.detach().long().to(x.device)
        self.mean = x.mean(dim=0, keepdim=True)
        self.std = x.std(dim=0, keepdim=True, unbiased=False).clamp_min(1e-6)
        z = (x - self.mean) / self.std
        w = torch.zeros(x.shape[1], self.num_classes, device=x.device, requires_grad=True)
        b = torch.zeros(self.num_classes, device=x.device, requires_grad=True)
        opt = torch.optim.LBFGS(
            [w, b], lr=1.0, max_iter=self.max_iter, line_search_fn="strong_wolfe"
        )

        def closure() -> Tensor:
            opt.zero_grad()
            loss = F.cross_entropy(z @ w + b, y) + 0.5 * self.l2 * (w * w).sum()
            loss.backward()
            return loss

        with torch.enable_grad():
            opt.step(closure)
        self.weight, self.bias = w.detach(), b.detach()
        return self

    def logits(self, x: Tensor) -> Tensor:
        """``(N, C)`` logits of ``(N, D)`` features."""
        if self.weight is None or self.bias is None or self.mean is None or self.std is None:
            raise RuntimeError("fit the probe first")
        _check(x)
        z = (x.detach().float().to(self.weight.device) - self.mean) / self.std
        return z @ self.weight + self.bias

    def predict(self, x: Tensor) -> ProbeOutput:
        return _output(torch.softmax(self.logits(x), dim=1))


def linear_probe(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    num_classes: int,
    l2: float = 1e-4,
    max_iter: int = 500,
) -> ProbeOutput:
    """Fit :class:`LogisticRegressionProbe` on the training features, predict the test ones."""
    probe = LogisticRegressionProbe(num_classes, l2=l2, max_iter=max_iter).fit(train_x, train_y)
    return probe.predict(test_x)


@torch.no_grad()
def knn_probe(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    num_classes: int,
    k: int = 20,
    chunk: int = 1024,
    temperature: float | None = None,
) -> ProbeOutput:
    """k-nearest-neighbour vote on centred, L2-normalised features (cosine similarity).

    ``temperature`` None: majority vote of the ``k`` nearest (ties broken by summed similarity);
    a value: each neighbour votes ``exp(similarity / temperature)`` (the weighted kNN of Wu et
    al. 2018, "Unsupervised feature learning via non-parametric instance discrimination", used
    by DINO with 0.07). ``proba``: the normalised votes."""
    if temperature is not None and not temperature > 0:
        raise ValueError(f"kNN temperature must be > 0, got {temperature}")
    _check(train_x, train_y)
    _check(test_x)
    train_n, test_n = center_l2(train_x, train_x, test_x)
    labels = train_y.long().to(train_n.device)
    k = min(k, train_n.shape[0])
    probas, preds = [], []
    for start in range(0, test_n.shape[0], chunk):
        sim = test_n[start : start + chunk] @ train_n.T
        top_sim, top_idx = sim.topk(k, dim=1)
        onehot = F.one_hot(labels[top_idx], num_classes).double()  # (B, k, C)
        if temperature is not None:
            weights = (top_sim.double() / temperature).exp().unsqueeze(-1)  # (B, k, 1)
            weighted = (onehot * weights).sum(dim=1)
            preds.append(weighted.argmax(dim=1))
            probas.append(weighted / weighted.sum(dim=1, keepdim=True))
            continue
        votes = onehot.sum(dim=1)
        sim_sum = (onehot * top_sim.double().unsqueeze(-1)).sum(dim=1)  # in [-k, k]
        preds.append((votes * (2 * k + 1) + sim_sum).argmax(dim=1))
        probas.append(votes / k)
    if not probas:
        return ProbeOutput(np.zeros(0, dtype=np.int64), np.zeros((0, num_classes)))
    return ProbeOutput(
        torch.cat(preds).cpu().numpy().astype(np.int64), torch.cat(probas).cpu().numpy()
    )


@torch.no_grad()
def few_shot_episodes(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    num_classes: int,
    n_shot: int,
    episodes: int = 100,
    seed: int = 0,
) -> list[ProbeOutput]:
    """SimpleShot nearest-prototype predictions of ``test_x`` for each of ``episodes`` episodes.

    Classes with fewer than ``n_shot`` training tiles use all they have; classes with none can
    never be predicted (probability 0).
    """
    _check(train_x, train_y)
    _check(test_x)
    if n_shot < 1:
        raise ValueError(f"n_shot must be >= 1, got {n_shot}")
    rng = np.random.default_rng(seed)
    y = train_y.long().cpu().numpy()
    by_class = [np.flatnonzero(y == c) for c in range(num_classes)]
    outputs = []
    for _ in range(episodes):
        support_idx = [
            rng.choice(idx, size=min(n_shot, idx.size), replace=False) if idx.size else idx
            for idx in by_class
        ]
        support = train_x[torch.from_numpy(np.concatenate(support_idx))].float()
        (query,) = center_l2(support, test_x)
        centred_support = F.normalize(support - support.mean(dim=0, keepdim=True), dim=1)
        protos = torch.zeros(num_classes, train_x.shape[1], device=train_x.device)
        present = torch.zeros(num_classes, dtype=torch.bool)
        offset = 0
        for c, idx in enumerate(support_idx):
            if idx.size:
                protos[c] = centred_support[offset : offset + idx.size].mean(dim=0)
                present[c] = True
            offset += idx.size
        dist = torch.cdist(query, protos)
        dist[:, ~present.to(dist.device)] = float("inf")
        outputs.append(_output(torch.softmax(-dist, dim=1)))
    return outputs
