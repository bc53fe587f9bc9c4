"""Probes on frozen features: separable synthetic features are solved, shuffled labels are not."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pathssl.eval.classification import balanced_accuracy
from pathssl.eval.probes import center_l2, few_shot_episodes, knn_probe, linear_probe
from pathssl.eval.protocols import evaluate_features


def _blobs(
    n_per: int, seed: int, dim: int = 32, classes: int = 4
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(123)) * 4
    y = torch.arange(classes).repeat_interleave(n_per)
    x = centres[y] + torch.randn(y.numel(), dim, generator=g)
    return x, y


def test_separable_features_reach_accuracy_one() -> None:
    train_x, train_y = _blobs(40, 0)
    test_x, test_y = _blobs(25, 1)
    for out in (
        linear_probe(train_x, train_y, test_x, 4, max_iter=100),
        knn_probe(train_x, train_y, test_x, 4, k=20),
        few_shot_episodes(train_x, train_y, test_x, 4, n_shot=5, episodes=3)[0],
    ):
        assert (out.pred == test_y.numpy()).mean() == 1.0
        assert out.proba.shape == (100, 4)
        np.testing.assert_allclose(out.proba.sum(1), 1.0, atol=1e-6)


def test_shuffled_labels_stay_near_chance() -> None:
    train_x, train_y = _blobs(50, 0)
    test_x, test_y = _blobs(50, 1)
    # labels permuted independently of the features, in train and test alike
    g = torch.Generator().manual_seed(0)
    shuffled = train_y[torch.randperm(train_y.numel(), generator=g)]
    test_y = test_y[torch.randperm(test_y.numel(), generator=g)]
    for out in (
        linear_probe(train_x, shuffled, test_x, 4, l2=1e-2, max_iter=100),
        knn_probe(train_x, shuffled, test_x, 4),
    ):
        acc = balanced_accuracy(test_y.numpy(), out.pred)
        assert acc < 0.4, acc  # chance is 0.25


def test_knn_vote_hand_case() -> None:
    # 1-D features after centring: neighbours by cosine are the same-sign points
    train_x = torch.tensor([[1.0, 0.1], [1.0, -0.1], [1.0, 0.0], [-1.0, 0.0], [-1.0, 0.2]])
    train_y = torch.tensor([0, 0, 1, 1, 1])
    out = knn_probe(train_x, train_y, torch.tensor([[3.0, 0.0]]), 2, k=3)
    assert out.pred.tolist() == [0] and out.proba.tolist() == [[2 / 3, 1 / 3]]


def test_weighted_knn_against_a_naive_vote() -> None:
    # the temperature-weighted vote (Wu et al. 2018) computed row by row in float64
    train_x, train_y = _blobs(15, 0)
    test_x, _ = _blobs(6, 1)
    train_x = train_x + 0.8 * torch.randn(train_x.shape, generator=torch.Generator().manual_seed(2))
    out = knn_probe(train_x, train_y, test_x, 4, k=7, temperature=0.1)
    train_n, test_n = center_l2(train_x, train_x, test_x)
    for row, q in enumerate(test_n.double()):
        sims = [float(q @ t.double()) for t in train_n]
        nearest = sorted(range(len(sims)), key=lambda i: -sims[i])[:7]
        votes = [0.0] * 4
        for i in nearest:
            votes[int(train_y[i])] += math.exp(sims[i] / 0.1)
        assert out.pred[row] == max(range(4), key=lambda c: votes[c])
        np.testing.assert_allclose(out.proba[row], np.array(votes) / sum(votes), rtol=1e-6)
    with pytest.raises(ValueError, match="temperature"):
        knn_probe(train_x, train_y, test_x, 4, temperature=0.0)


def test_center_l2() -> None:
    ref = torch.tensor([[1.0, 1.0], [3.0, 1.0]])
    (a,) = center_l2(ref, torch.tensor([[4.0, 1.0]]))
    torch.testing.assert_close(a, torch.tensor([[1.0, 0.0]]))


def test_few_shot_is_seeded_and_uses_n_shots() -> None:
    train_x, train_y = _blobs(10, 0)
    test_x, _ = _blobs(5, 1)
    a = few_shot_episodes(train_x, train_y, test_x, 4, n_shot=1, episodes=2, seed=3)
    b = few_shot_episodes(train_x, train_y, test_x, 4, n_shot=1, episodes=2, seed=3)
    np.testing.assert_array_equal(a[1].proba, b[1].proba)
    with pytest.raises(ValueError):
        few_shot_episodes(train_x, train_y, test_x, 4, n_shot=0)


def test_evaluate_features_summary() -> None:
    train_x, train_y = _blobs(20, 0)
    test_x, test_y = _blobs(10, 1)
    res = evaluate_features(
        train_x, train_y, test_x, test_y, 4, max_iter=50, few_shots=[1, 4], episodes=4
    )
    assert res["linear"]["balanced_accuracy"] == 1.0
    assert res["knn"]["k"] == 20
    assert res["fewshot"]["4"]["episodes"] == 4
    assert 0.0 <= res["fewshot"]["1"]["balanced_accuracy"]["mean"] <= 1.0
