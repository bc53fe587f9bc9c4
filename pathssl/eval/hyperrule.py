"""BiT-HyperRule (Kolesnikov et al. 2020, "Big Transfer", section 3.3): one fine-tuning recipe
for every downstream task, its few settings chosen from the size of the labelled set.

The rule, as the paper states it:

- SGD, momentum 0.9, initial learning rate 0.003, batch 512; no weight decay; head initialised
  to zero (BiT's code);
- schedule length: 500 steps for fewer than 20k labelled examples, 10k steps up to 500k, 20k
  steps above; linear warm-up (BiT's code: 100 steps of the 500-step schedule, 500 of the
  others); the learning rate divided by 10 at 30 %, 60 % and 90 % of the steps (the public code
  uses 40/60/80 % for the 500-step schedule: we follow the paper);
- MixUp (alpha 0.1) only from 20k examples on;
- resolution: images smaller than 96 x 96 px are resized to 160 px and randomly cropped to 128;
  larger ones resized to 448 and cropped to 384 (test: resized to the crop size); random
  horizontal flips.

Tiles translate this as follows (:func:`resolution`), because a tile's pixels have a physical
size (``data.image_size`` px at the encoder's ``tile_mpp``) that resizing 224 px tiles to 448 would
halve: tiles of 96 px or more are **not resized**; training takes random crops of 6/7 of the side
(384 / 448, the paper's crop-to-resize ratio: 192 px of a 224 px tile), testing the whole tile
(a convolutional trunk takes any size; the crop and the test image share the scale, where BiT's
differ by 448 / 384). Tiles under 96 px (e.g. nucleus-centred crops) follow the paper: 160 ->
128 crop, tested at 128 (a stride-32 trunk needs the pixels). Random dihedral transforms replace
horizontal flips (tissue has no up or left).

The batch: 512 at rate 0.003 on an accelerator; a smaller batch (a CPU) scales the rate linearly
(``0.003 * batch / 512``) and keeps the step counts, so it sees fewer examples; ``steps``
shortens the schedule with warm-up and decays at the same fractions.

The rule's functions are torch-free; :func:`fine_tune_hyperrule` runs it through the one
training loop (:func:`pathssl.eval.finetune.train_classifier`) and :func:`hyperrule_scores` is
the ``protocols.bit_hyperrule`` entry of ``pathssl eval``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import torch
    from numpy.typing import NDArray
    from torch import Tensor
    from torch.utils.data import Dataset

    from pathssl.eval.encoder import Encoder
    from pathssl.eval.finetune import FineTuneResult

#: dataset-size thresholds (labelled examples) of the schedule and of MixUp
SMALL, LARGE = 20_000, 500_000
#: (steps, warm-up steps) by regime: fewer than SMALL, fewer than LARGE, more
SCHEDULES = ((500, 100), (10_000, 500), (20_000, 500))
#: fractions of the schedule at which the rate is divided by 10
DECAYS = (0.3, 0.6, 0.9)
BASE_LR, BASE_BATCH, MOMENTUM, MIXUP_ALPHA = 0.003, 512, 0.9, 0.1
#: images with fewer pixels than SMALL_SIDE^2 are "small" (resize 160, crop 128)
SMALL_SIDE, SMALL_RESIZE, SMALL_CROP = 96, 160, 128
#: the paper's crop-to-resize ratio for larger images (448 -> 384)
CROP_RATIO = 384 / 448


@dataclass(frozen=True)
class HyperRule:
    """The settings the rule gives a task (see the module docstring).

    ``steps``, ``warmup_steps``, ``milestones`` (steps at which the rate is divided by 10),
    ``lr`` (peak rate at ``batch_size``), ``momentum``, ``mixup_alpha`` (0: no MixUp),
    ``resize`` (square side to resize training and test images to before anything else; None:
    keep them as they are), ``crop`` (side of the random training crops) and ``test_size`` (side
    test images are resized to; None: as they are)."""

    steps: int
    warmup_steps: int
    milestones: tuple[int, ...]
    lr: float
    batch_size: int
    momentum: float
    mixup_alpha: float
    resize: int | None
    crop: int
    test_size: int | None


def schedule(n_examples: int, steps: int | None = None) -> tuple[int, int, tuple[int, ...]]:
    """``(steps, warm-up steps, decay steps)`` for ``n_examples`` labelled examples: the rule's
    (500 / 10k / 20k steps, warm-up 100 / 500 / 500, decays at 30/60/90 %) or, with ``steps``,
    a schedule of that length with warm-up and decays at the same fractions (each >= 1 step)."""
    if n_examples < 1:
        raise ValueError(f"the HyperRule needs at least one labelled example, got {n_examples}")
    regime = 0 if n_examples < SMALL else 1 if n_examples < LARGE else 2
    rule_steps, rule_warmup = SCHEDULES[regime]
    total = rule_steps if steps is None else int(steps)
    if total < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    warmup = max(1, round(total * rule_warmup / rule_steps))
    milestones = tuple(max(1, round(f * total)) for f in DECAYS)
    return total, warmup, milestones


def mixup_alpha(n_examples: int) -> float:
    """MixUp's alpha: 0.1 from 20k labelled examples on, else 0 (no MixUp)."""
    return MIXUP_ALPHA if n_examples >= SMALL else 0.0


def resolution(image_size: int) -> tuple[int | None, int, int | None]:
    """``(resize, crop, test_size)`` for square tiles of ``image_size`` px: tiles under 96 px
    ``(160, 128, 128)`` (the paper's small-image rule); larger ones ``(None, round(6/7 side),
    None)``: no resizing, random crops of 384/448 of the side, whole tiles at test time."""
    if image_size < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size}")
    if image_size * image_size < SMALL_SIDE * SMALL_SIDE:
        return SMALL_RESIZE, SMALL_CROP, SMALL_CROP
    return None, max(1, round(image_size * CROP_RATIO)), None


def scaled_lr(batch_size: int, base_lr: float = BASE_LR) -> float:
    """The rate for ``batch_size``: ``base_lr * batch_size / 512`` (linear scaling)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return base_lr * batch_size / BASE_BATCH


def hyperrule(
    n_examples: int,
    image_size: int,
    batch_size: int = BASE_BATCH,
    base_lr: float = BASE_LR,
    steps: int | None = None,
    mixup: float | None = None,
) -> HyperRule:
    """The rule for a task of ``n_examples`` labelled tiles of ``image_size`` px, trained with
    ``batch_size`` (the rate scaled from ``base_lr`` at 512). ``steps``: a shorter (or longer)
    schedule of the same shape; ``mixup``: alpha instead of the rule's (0: off)."""
    total, warmup, milestones = schedule(n_examples, steps)
    resize, crop, test_size = resolution(image_size)
    alpha = mixup_alpha(n_examples) if mixup is None else float(mixup)
    if alpha < 0:
        raise ValueError(f"mixup alpha must be >= 0, got {alpha}")
    return HyperRule(
        steps=total,
        warmup_steps=warmup,
        milestones=milestones,
        lr=scaled_lr(batch_size, base_lr),
        batch_size=batch_size,
        momentum=MOMENTUM,
        mixup_alpha=alpha,
        resize=resize,
        crop=crop,
        test_size=test_size,
    )


def lr_at(rule: HyperRule, step: int) -> float:
    """The learning rate at ``step`` (0-based): linear warm-up ``lr * (step + 1) / warmup``, then
    ``lr / 10**k`` with ``k`` the decays at or before ``step`` (what the training loop's
    ``WarmupStep`` schedule applies)."""
    if step < rule.warmup_steps:
        return rule.lr * (step + 1) / rule.warmup_steps
    return rule.lr * 0.1 ** sum(step >= m for m in rule.milestones)


def fine_tune_hyperrule(
    encoder: Encoder,
    train: Dataset[tuple[Tensor, int]],
    labels: NDArray[np.int64],
    num_classes: int,
    out_dir: str | Path,
    *,
    image_size: int,
    batch_size: int = BASE_BATCH,
    base_lr: float = BASE_LR,
    steps: int | None = None,
    dataset_size: int | None = None,
    mixup: float | None = None,
    hed_jitter: float = 0.0,
    val_fraction: float = 0.0,
    precision: str = "auto",
    device: str | torch.device = "cpu",
    seed: int = 0,
    progress: bool = True,
    resume: bool = False,
) -> tuple[FineTuneResult, HyperRule]:
    """Fine-tune ``encoder`` (all weights) + a zero-initialised linear layer with the rule for
    ``dataset_size`` examples (default: the training tiles) of ``image_size`` px: SGD momentum
    0.9, no weight decay, rate ``base_lr * batch / 512`` (batch: ``batch_size``, at most the
    training tiles), the rule's steps (or ``steps``) with linear warm-up and decays by 10 at
    30/60/90 %, the rule's MixUp (or alpha ``mixup``), random crops (resized first for tiles
    under 96 px), dihedral transforms (+ HED jitter when ``hed_jitter`` > 0).

    ``train`` yields ``((3, H, W) uint8, label)``, ``labels (N,)``. No validation by default
    (the rule trains a fixed schedule); ``val_fraction`` > 0 holds that part of each class
    apart, scores it 10 times a run and keeps the best weights. ``out_dir`` receives
    ``metrics.jsonl``, ``last.pt`` (``resume=True`` continues from it). Returns the result and
    the settings used."""
    import numpy as np
    import torch

    from pathssl.eval import finetune as ft
    from pathssl.train.config import OptimConfig

    torch.manual_seed(seed)
    labels = np.asarray(labels, np.int64)
    n_train = ft._check_inputs(train, labels, val_fraction, seed)
    rule = hyperrule(
        dataset_size or n_train, image_size, min(batch_size, n_train), base_lr, steps, mixup
    )
    optim = OptimConfig(
        name="sgd",
        lr=rule.lr,
        lr_scaling="none",
        weight_decay=0.0,
        momentum=rule.momentum,
        warmup_steps=rule.warmup_steps,
        schedule="step",
        milestones=list(rule.milestones),
        gamma=0.1,
    )
    where = "protocols.bit_hyperrule"
    optim.check(where)
    every = max(1, rule.steps // 10)
    loop = ft.run_settings(
        where, out_dir, rule.steps, every, precision, device, seed, progress, resume
    )
    augment = ft._Chain([ft.BatchBiTCrop(rule.resize, rule.crop), ft.build_augment(hed_jitter)])
    module = ft.ClassifierModule(encoder, num_classes, zero_head=True, input_size=rule.test_size)
    meta = {"kind": "bit_hyperrule", "backbone": encoder.name, "num_classes": num_classes}
    result = ft.train_classifier(
        module, train, labels, num_classes, optim=optim, loop=loop, batch_size=rule.batch_size,
        augment=augment, val_fraction=val_fraction, patience=None, mixup_alpha=rule.mixup_alpha,
        meta=meta,
    )  # fmt: skip
    return result, rule


def hyperrule_scores(
    encoder: Encoder,
    train: Dataset[tuple[Tensor, int]],
    train_labels: NDArray[np.int64],
    test: Dataset[tuple[Tensor, int]],
    num_classes: int,
    out_dir: str | Path,
    *,
    image_size: int,
    batch_size: int,
    base_lr: float,
    steps: int | None,
    dataset_size: int | None,
    mixup: float | None,
    hed_jitter: float,
    val_fraction: float,
    eval_batch_size: int,
    precision: str,
    device: str,
    seed: int,
    progress: bool = True,
) -> dict[str, Any]:
    """``protocols.bit_hyperrule`` of ``pathssl eval``: :func:`fine_tune_hyperrule` of a copy
    of ``encoder`` (``encoder`` itself is left as it is), then the test metrics (``test``
    predicted in batches of ``eval_batch_size``), the run's summary and the rule's settings."""
    import copy
    import dataclasses

    from pathssl.eval.finetune import predict, summary
    from pathssl.eval.protocols import score

    result, rule = fine_tune_hyperrule(
        copy.deepcopy(encoder), train, train_labels, num_classes, out_dir, image_size=image_size,
        batch_size=batch_size, base_lr=base_lr, steps=steps, dataset_size=dataset_size,
        mixup=mixup, hed_jitter=hed_jitter, val_fraction=val_fraction, precision=precision,
        device=device, seed=seed, progress=progress,
    )  # fmt: skip
    output, labels = predict(result.classifier, test, eval_batch_size, device)
    settings = dataclasses.asdict(rule) | {"milestones": list(rule.milestones)}
    return {**score(output, labels, num_classes), **summary(result), "hyperrule": settings}
