"""End-to-end fine-tuning of an encoder + linear classifier through the one training loop
(:func:`train_classifier`: :class:`pathssl.train.loop.Trainer` with bf16 autocast on CUDA, NaN
guard, ``metrics.jsonl``, resumable ``last.pt``, ``best.pt``; batches augmented on the device).

- :func:`fine_tune`: the "full fine-tune" rows of SSL pathology benchmarks (Kang et al. 2023;
  kaiko eva): AdamW, warm-up + cosine, dihedral transforms (+ HED jitter, Tellez et al. 2019),
  a validation split scored every epoch, best weights kept, early stopping;
- :func:`pathssl.eval.hyperrule.fine_tune_hyperrule`: BiT's HyperRule (Kolesnikov et al.
  2020) through the same function, with :class:`BatchBiTCrop`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from pathssl.data.sampler import ResumableSampler
from pathssl.eval.classification import classification_metrics
from pathssl.eval.encoder import Encoder, feature_dim
from pathssl.eval.probes import ProbeOutput
from pathssl.train.assemble import assemble, check_out_dir, check_previous_run, start
from pathssl.train.config import LoopConfig, OptimConfig
from pathssl.train.logger import read_metrics
from pathssl.train.loop import BatchStep, Validation
from pathssl.train.steps import MixUpStep, SupervisedStep

VAL_KEYS = ("balanced_accuracy", "accuracy", "macro_f1")


class ClassifierModule(nn.Module):
    """Encoder trunk + linear layer, normalisation inside.

    ``logits(images)``: ``(B, 3, H, W)`` uint8 (or float in [0, 255]) -> ``(B, C)``, resized
    to ``input_size`` first when set and different; ``zero_head``: the linear layer starts at 0;
    ``forward(images, {"label": (B,) or (B, C) soft})`` -> ``{"loss": cross-entropy,
    "accuracy"}`` (what the training loop calls)."""

    def __init__(
        self,
        encoder: Encoder,
        num_classes: int,
        label_smoothing: float = 0.0,
        zero_head: bool = False,
        input_size: int | None = None,
    ) -> None:
        super().__init__()
        self.trunk = encoder.model
        self.head = nn.Linear(feature_dim(encoder), num_classes)
        if zero_head:  # BiT: the new head starts at zero
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)
        self.label_smoothing = label_smoothing
        self.input_size = input_size
        self.mean: Tensor
        self.std: Tensor
        self.register_buffer("mean", torch.tensor(encoder.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(encoder.std).view(1, 3, 1, 1))

    def logits(self, images: Tensor) -> Tensor:
        x = (images.float() / 255.0 - self.mean) / self.std
        size = self.input_size
        if size is not None and tuple(x.shape[-2:]) != (size, size):  # HyperRule test size
            x = nn.functional.interpolate(x, (size, size), mode="bilinear", align_corners=False)
        out: Tensor = self.head(self.trunk(x))
        return out

    def forward(self, images: Tensor, targets: dict[str, Tensor]) -> dict[str, Tensor]:
        logits = self.logits(images).float()
        y = targets["label"]  # (B,) class ids, or (B, C) soft targets (MixUp)
        loss = nn.functional.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        hard = y.argmax(1) if y.ndim == 2 else y
        acc = (logits.argmax(1) == hard).float().mean()
        return {"loss": loss, "accuracy": acc.detach()}


class AugmentedStep(SupervisedStep):
    """:class:`SupervisedStep` that applies ``augment`` (a batched op ``(x, generator) -> x`` of
    :mod:`pathssl.augment.torch_ops`) to the uint8 images on the device, seeded by
    ``generator`` (checkpointed by the loop)."""

    def __init__(
        self, device: torch.device, augment: nn.Module | None, generator: torch.Generator
    ) -> None:
        super().__init__(device)
        self.augment = augment
        self.generator = generator

    def prepare(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        images, targets = super().prepare(batch)
        if self.augment is not None:
            images = self.augment(images, self.generator)
        return images, targets


class _Labelled(Dataset[dict[str, Tensor]]):
    """``((3, H, W) uint8, label)`` items as the loop's ``{"image", "label"}`` dicts."""

    def __init__(self, base: Dataset[tuple[Tensor, int]], index: NDArray[np.int64]) -> None:
        self.base, self.index = base, index

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        image, label = self.base[int(self.index[i])]
        return {"image": image, "label": torch.tensor(label, dtype=torch.long)}


def build_augment(hed_jitter: float = 0.05) -> nn.Module:
    """Random dihedral transform, then HED jitter (alpha = beta = ``hed_jitter``, p 0.5; 0: off)."""
    from pathssl.augment.torch_ops import BatchDihedral, BatchHEDJitter

    ops: list[nn.Module] = [BatchDihedral()]
    if hed_jitter > 0:
        ops.append(BatchHEDJitter(hed_jitter, hed_jitter, p=0.5))
    return _Chain(ops)


class _Chain(nn.Module):
    """Batched ops ``(x, generator) -> x`` applied in order."""

    def __init__(self, ops: list[nn.Module]) -> None:
        super().__init__()
        self.ops = nn.ModuleList(ops)

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        for op in self.ops:
            x = op(x, generator)
        return x


class BatchBiTCrop(nn.Module):
    """BiT's training crop on a batch ``(B, 3, S, S)``: resize to ``resize`` (None: keep S) and
    take a random ``crop`` x ``crop`` window per image (offsets on the resized grid, drawn from
    ``generator``), done as one resampling of the source window (exact pixels when not
    resized). Output ``(B, 3, crop, crop)`` of the input's dtype."""

    def __init__(self, resize: int | None, crop: int) -> None:
        super().__init__()
        self.resize, self.crop = resize, crop

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        from pathssl.augment.torch_geometry import crop_boxes

        side = x.shape[-1]
        grid = self.resize or side
        if self.crop > grid:
            raise ValueError(f"crop {self.crop} px is larger than the {grid} px images")
        scale = side / grid  # source pixels per resized pixel
        off = torch.randint(0, grid - self.crop + 1, (x.shape[0], 2), generator=generator)
        boxes = torch.cat([off.float() * scale, torch.full_like(off, self.crop) * scale], 1)
        return crop_boxes(x, boxes, (self.crop, self.crop))


def validation_split(
    labels: NDArray[np.int64], fraction: float, seed: int = 0
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """(train, validation) indices: ``fraction`` of each class held apart (seeded; at least one
    tile per class with two or more, none for a class of one). ``fraction`` 0: no validation."""
    if not 0 <= fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = 0 if fraction == 0 or idx.size < 2 else max(1, round(fraction * idx.size))
        val.extend(idx[:n_val].tolist())
        train.extend(idx[n_val:].tolist())
    return np.sort(np.array(train, np.int64)), np.sort(np.array(val, np.int64))


@dataclass
class FineTuneResult:
    """The fine-tuned classifier (best validated weights when validation ran), the step they
    come from (``steps_run`` without validation; 0 when no validation score was finite: then the
    weights are the last ones), the number of steps run and the validation history
    ``[(step, scores)]``."""

    classifier: ClassifierModule
    best_step: int
    steps_run: int
    history: list[tuple[int, dict[str, float]]] = field(default_factory=list)


@torch.no_grad()
def predict(
    classifier: ClassifierModule,
    dataset: Dataset[tuple[Tensor, int]],
    batch_size: int = 64,
    device: str | torch.device = "cpu",
) -> tuple[ProbeOutput, NDArray[np.int64]]:
    """Class probabilities of a fine-tuned classifier and the dataset's ``(N,)`` labels."""
    classifier.eval()
    probas, labels = [], []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    for images, y in loader:
        probas.append(torch.softmax(classifier.logits(images.to(device)).double(), 1).cpu())
        labels.append(torch.as_tensor(y).long())
    p = torch.cat(probas)
    out = ProbeOutput(p.argmax(dim=1).numpy().astype(np.int64), p.numpy())
    return out, torch.cat(labels).numpy().astype(np.int64)


def train_classifier(
    module: ClassifierModule,
    train: Dataset[tuple[Tensor, int]],
    labels: NDArray[np.int64],
    num_classes: int,
    *,
    optim: OptimConfig,
    loop: LoopConfig,
    batch_size: int,
    augment: nn.Module | None,
    val_fraction: float,
    patience: int | None,
    mixup_alpha: float,
    meta: dict[str, Any],
) -> FineTuneResult:
    """Train ``module`` (trunk + head, all weights) on ``train`` (``((3, H, W) uint8, label)``
    items, ``labels (N,)``) with ``optim`` for ``loop.max_steps`` steps of ``batch_size`` in
    the one loop (``loop``: out_dir, device, seed, precision, resume, ...), ``augment`` and
    optional MixUp on the device. ``val_fraction`` of each class is held apart and scored every
    ``loop.ckpt_every`` steps (balanced accuracy; the best weights are kept, ``patience``
    validations without improvement stop it). ``meta``: the checkpoints' (kind, backbone)."""
    tr_idx, val_idx = validation_split(labels, val_fraction, loop.seed)
    train_ds = _Labelled(train, tr_idx)
    check_out_dir(loop.out_dir, "--out")
    check_previous_run(loop, meta)
    device = torch.device(loop.device)
    module = module.to(device)
    sampler = ResumableSampler(np.zeros(len(train_ds), np.int64), seed=loop.seed)
    loader = DataLoader(train_ds, batch_size=batch_size, sampler=sampler, drop_last=True)
    history: list[tuple[int, dict[str, float]]] = []
    validation = None
    if val_idx.size:
        val_ds = torch.utils.data.Subset(train, val_idx.tolist())

        def run_validation() -> dict[str, float]:
            out, y = predict(module, val_ds, batch_size, device)
            m = classification_metrics(y, out.pred, out.proba, num_classes)
            scores = {k: float(m[k]) for k in VAL_KEYS}  # type: ignore[arg-type]
            history.append((trainer.step, scores))
            return scores

        every = loop.ckpt_every
        validation = Validation(run_validation, every, "balanced_accuracy", "max", patience)
    generator = torch.Generator().manual_seed(loop.seed)
    step: BatchStep = AugmentedStep(device, augment, generator)
    if mixup_alpha > 0:
        step = MixUpStep(step, num_classes, mixup_alpha, generator)
    params = [{"params": list(module.parameters()), "name": "all"}]
    trainer = assemble(
        module, params, loader, sampler, step, optim=optim, train=loop, device=device,
        meta=meta, generator=generator, validation=validation,
    )  # fmt: skip
    if start(trainer, loop):  # the validations already done, from the run's log
        for r in read_metrics(trainer.metrics.path):
            if r.get("kind") == "val":
                history.append((int(r["step"]), {k: float(r[k]) for k in VAL_KEYS}))
    trainer.fit()
    best = trainer.restore_best() if validation is not None else trainer.step
    return FineTuneResult(module.eval(), best, trainer.step, history)


def run_settings(
    where: str,
    out_dir: str | Path,
    steps: int,
    every: int,
    precision: str,
    device: str | torch.device,
    seed: int,
    progress: bool,
    resume: bool,
) -> LoopConfig:
    """The loop settings of a fine-tuning run (``every``: steps between checkpoints and
    validations), checked; errors name ``where`` (e.g. ``protocols.finetune``)."""
    loop = LoopConfig(
        max_steps=steps,
        seed=seed,
        out_dir=str(out_dir),
        ckpt_every=every,
        log_every=max(1, min(10, every)),
        precision=precision,
        device=str(device),
        progress=progress,
        resume=resume,
    )
    loop.check(where)
    return loop


def _check_inputs(
    train: Dataset[tuple[Tensor, int]], labels: NDArray[np.int64], val_fraction: float, seed: int
) -> int:
    """The number of training tiles left after the validation split (errors when none)."""
    if len(labels) != len(train):  # type: ignore[arg-type]
        raise ValueError(f"{len(labels)} labels for {len(train)} tiles")  # type: ignore[arg-type]
    n_train = validation_split(labels, val_fraction, seed)[0].size
    if n_train == 0:
        raise ValueError("no training tiles left after the validation split")
    return int(n_train)


def fine_tune(
    encoder: Encoder,
    train: Dataset[tuple[Tensor, int]],
    labels: NDArray[np.int64],
    num_classes: int,
    out_dir: str | Path,
    *,
    epochs: int = 10,
    lr: float = 1e-4,
    weight_decay: float = 1e-4,
    batch_size: int = 32,
    warmup_epochs: float = 1.0,
    val_fraction: float = 0.1,
    patience: int | None = 3,
    hed_jitter: float = 0.05,
    label_smoothing: float = 0.0,
    mixup_alpha: float = 0.0,
    precision: str = "auto",
    device: str | torch.device = "cpu",
    seed: int = 0,
    progress: bool = True,
    resume: bool = False,
) -> FineTuneResult:
    """Fine-tune ``encoder`` (all weights) + a linear layer on ``train``.

    ``train`` yields ``((3, H, W) uint8, label)``; ``labels`` ``(N,)`` are its labels (for the
    stratified validation split). Trains ``epochs`` passes over the training part, scoring the
    validation part (balanced accuracy) after each; the returned classifier carries the best
    validated weights (the last ones when ``val_fraction`` is 0). ``out_dir`` receives
    ``metrics.jsonl``, ``last.pt`` (every epoch; ``resume=True`` continues from it) and
    ``best.pt``. ``precision``: auto (bf16 on CUDA) | bf16 | fp32. ``mixup_alpha`` > 0: MixUp
    of the training batches (:class:`~pathssl.train.steps.MixUpStep`, Beta(alpha, alpha)).
    The optimiser, schedule and loop come from the one training assembly
    (:mod:`pathssl.train.assemble`): AdamW, ``warmup_epochs`` of linear warm-up, cosine decay,
    gradients clipped at 5.
    """
    torch.manual_seed(seed)
    labels = np.asarray(labels, np.int64)
    for key, value in (("epochs", epochs), ("batch_size", batch_size)):
        if value < 1:
            raise ValueError(f"protocols.finetune.{key} must be >= 1, got {value}")
    n_train = _check_inputs(train, labels, val_fraction, seed)
    batch_size = min(batch_size, n_train)
    steps_per_epoch = max(1, n_train // batch_size)
    optim = OptimConfig(
        name="adamw",
        lr=lr,
        lr_scaling="none",
        weight_decay=weight_decay,
        warmup_steps=max(1, int(warmup_epochs * steps_per_epoch)),
        clip_grad=5.0,
    )
    optim.check("protocols.finetune")
    loop = run_settings(
        "protocols.finetune", out_dir, epochs * steps_per_epoch, steps_per_epoch, precision,
        device, seed, progress, resume,
    )  # fmt: skip
    return train_classifier(
        ClassifierModule(encoder, num_classes, label_smoothing), train, labels, num_classes,
        optim=optim, loop=loop, batch_size=batch_size, augment=build_augment(hed_jitter),
        val_fraction=val_fraction, patience=patience, mixup_alpha=mixup_alpha,
        meta={"kind": "finetune", "backbone": encoder.name, "num_classes": num_classes},
    )  # fmt: skip


def summary(result: FineTuneResult) -> dict[str, Any]:
    """JSON-ready: best step, steps run, validation history."""
    return {
        "best_step": result.best_step,
        "steps_run": result.steps_run,
        "validation": [{"step": s, **v} for s, v in result.history],
    }
