"""Run the frozen-feature protocols and score them: one call, one JSON-ready dict.

``evaluate_features`` takes train/test features and labels and runs the linear probe, kNN and
few-shot episodes (each optional), scoring every prediction with
:func:`pathssl.eval.classification.classification_metrics`. Few-shot results are summarised as
mean and standard deviation over episodes for each ``n``-shot setting. ``run_protocols`` runs
what an eval config's ``protocols`` section lists (fine-tuning through ``finetune_scores``); both
``pathssl eval`` and its benchmark (:mod:`pathssl.eval.benchmark`) call it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from pathssl.eval.classification import classification_metrics
from pathssl.eval.probes import ProbeOutput, few_shot_episodes, knn_probe, linear_probe

if TYPE_CHECKING:
    from torch.utils.data import Dataset

    from pathssl.eval.config import BitHyperRuleConfig, FinetuneConfig, ProtocolsConfig
    from pathssl.eval.encoder import Encoder

SUMMARY_KEYS = ("accuracy", "balanced_accuracy", "macro_f1", "auroc", "ece")


def score(output: ProbeOutput, labels: Tensor | np.ndarray, num_classes: int) -> dict[str, Any]:
    """Metrics of one set of predictions against ``(N,)`` labels."""
    y = labels.cpu().numpy() if isinstance(labels, Tensor) else np.asarray(labels)
    return classification_metrics(y.astype(np.int64), output.pred, output.proba, num_classes)


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"episodes": len(runs)}
    for key in SUMMARY_KEYS:
        values = np.array([r[key] for r in runs], dtype=np.float64)
        values = values[~np.isnan(values)]
        out[key] = {
            "mean": float(values.mean()) if values.size else float("nan"),
            "std": float(values.std()) if values.size else float("nan"),
        }
    return out


def evaluate_features(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    num_classes: int,
    linear: bool = True,
    l2: float = 1e-4,
    max_iter: int = 500,
    knn_k: int | None = 20,
    few_shots: Sequence[int] = (),
    episodes: int = 100,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """``{"linear": metrics, "knn": metrics, "fewshot": {"n": summary}}`` (absent = not run).

    Args:
        train_x, test_x: ``(N, D)`` frozen features; train_y, test_y: ``(N,)`` class indices.
        linear: run the logistic-regression probe (``l2``, ``max_iter``).
        knn_k: k of the kNN probe (``None`` skips it).
        few_shots: n of each SimpleShot setting, ``episodes`` episodes each, seeded by ``seed``.
    """
    torch.manual_seed(seed)
    results: dict[str, dict[str, Any]] = {}
    if linear:
        out = linear_probe(train_x, train_y, test_x, num_classes, l2=l2, max_iter=max_iter)
        results["linear"] = score(out, test_y, num_classes)
    if knn_k is not None:
        out = knn_probe(train_x, train_y, test_x, num_classes, k=knn_k)
        results["knn"] = {"k": knn_k, **score(out, test_y, num_classes)}
    if few_shots:
        results["fewshot"] = {}
        for n in few_shots:
            runs = [
                score(o, test_y, num_classes)
                for o in few_shot_episodes(
                    train_x, train_y, test_x, num_classes, n, episodes=episodes, seed=seed + n
                )
            ]
            results["fewshot"][str(n)] = _summary(runs)
    return results


def run_protocols(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    num_classes: int,
    protocols: ProtocolsConfig,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """:func:`evaluate_features` with the frozen-feature protocols ``protocols`` lists (linear,
    knn, fewshot; ``finetune`` is :func:`finetune_scores`'s). Features ``(N, D)``, labels
    ``(N,)``; ``seed`` seeds few-shot episodes."""
    lin, knn, few = protocols.linear, protocols.knn, protocols.fewshot
    return evaluate_features(
        train_x,
        train_y,
        test_x,
        test_y,
        num_classes,
        linear=lin is not None,
        l2=lin.l2 if lin is not None else 1e-4,
        max_iter=lin.max_iter if lin is not None else 500,
        knn_k=knn.k if knn is not None else None,
        few_shots=list(few.shots) if few is not None else (),
        episodes=few.episodes if few is not None else 100,
        seed=seed,
    )


def finetune_scores(
    encoder: Encoder,
    train: Dataset[tuple[Tensor, int]],
    train_labels: np.ndarray,
    test: Dataset[tuple[Tensor, int]],
    num_classes: int,
    ft: FinetuneConfig,
    out_dir: str | Path,
    *,
    batch_size: int,
    precision: str,
    device: str,
    seed: int,
    progress: bool = True,
) -> dict[str, Any]:
    """Fine-tune ``encoder`` (its weights change) + a linear layer on ``train`` (items
    ``((3, H, W) uint8, label)``, labels ``train_labels (N,)``) as ``ft`` says, in ``out_dir``;
    the test metrics of the best weights and the run's summary."""
    from pathssl.eval.finetune import fine_tune, predict, summary

    result = fine_tune(
        encoder,
        train,
        train_labels,
        num_classes,
        out_dir,
        epochs=ft.epochs,
        lr=ft.lr,
        weight_decay=ft.weight_decay,
        batch_size=ft.batch_size,
        warmup_epochs=ft.warmup_epochs,
        val_fraction=ft.val_fraction,
        patience=ft.patience,
        hed_jitter=ft.hed_jitter,
        label_smoothing=ft.label_smoothing,
        precision=precision,
        device=device,
        seed=seed,
        progress=progress,
    )
    output, labels = predict(result.classifier, test, batch_size, device)
    return {**score(output, labels, num_classes), **summary(result)}


def hyperrule_protocol_scores(
    encoder: Encoder,
    train: Dataset[tuple[Tensor, int]],
    train_labels: np.ndarray,
    test: Dataset[tuple[Tensor, int]],
    num_classes: int,
    hr: BitHyperRuleConfig,
    out_dir: str | Path,
    *,
    image_size: int,
    batch_size: int,
    precision: str,
    device: str,
    seed: int,
    progress: bool = True,
) -> dict[str, Any]:
    """``protocols.bit_hyperrule``: BiT-HyperRule fine-tuning of a copy of ``encoder`` as ``hr``
    says (:func:`pathssl.eval.hyperrule.hyperrule_scores`; the schedule follows the size of
    ``train``), in ``out_dir``; the test metrics, the run's summary and the rule's settings."""
    from pathssl.eval.hyperrule import hyperrule_scores

    return hyperrule_scores(
        encoder,
        train,
        train_labels,
        test,
        num_classes,
        out_dir,
        image_size=image_size,
        batch_size=hr.batch_size,
        base_lr=hr.base_lr,
        steps=hr.steps,
        dataset_size=hr.dataset_size,
        mixup=hr.mixup,
        hed_jitter=hr.hed_jitter,
        val_fraction=hr.val_fraction,
        eval_batch_size=batch_size,
        precision=precision,
        device=device,
        seed=seed,
        progress=progress,
    )
