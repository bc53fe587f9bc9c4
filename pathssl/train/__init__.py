"""Pretraining: typed config, the one builder (config -> objects), the generic loop,
optimisers/schedules and atomic, exactly resumable checkpoints.

Example::

    from pathssl.train import build_trainer, load_config, start
    cfg = load_config("configs/pretrain/simclr.yaml", ["train.max_steps=10"])
    trainer = build_trainer(cfg)
    start(trainer, cfg.train)   # resume from out_dir/last.pt, or start fresh
    trainer.fit()

or in one call, ``pretrain(cfg, evaluator=None)``. An online probe (``eval.*``, an
:class:`Evaluator` such as ``pathssl.eval.online.knn_evaluator(...)``) is passed to either.
"""

from pathssl.train.assemble import assemble, start
from pathssl.train.build import build_trainer, pretrain
from pathssl.train.checkpoint import load_checkpoint, save_checkpoint
from pathssl.train.config import ConfigError, PretrainConfig, load_config
from pathssl.train.loop import LoopSettings, Trainer, TrainingDiverged
from pathssl.train.online import Evaluator

__all__ = [
    "ConfigError",
    "Evaluator",
    "LoopSettings",
    "PretrainConfig",
    "Trainer",
    "TrainingDiverged",
    "assemble",
    "build_trainer",
    "load_checkpoint",
    "load_config",
    "pretrain",
    "save_checkpoint",
    "start",
]
