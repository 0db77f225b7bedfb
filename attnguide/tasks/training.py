"""``attnguide train``: train a guided classifier (:class:`attnguide.engine.trainer.Trainer`),
with the per-epoch attention snapshots of :mod:`attnguide.viz.snapshots` as a callback
(``RUN/snapshots/epoch_XXX.png``, ``--snapshots N`` images, 0 for none)."""

from __future__ import annotations

from attnguide.engine.config import TrainConfig
from attnguide.engine.progress import Reporter
from attnguide.engine.trainer import Trainer, TrainResult
from attnguide.viz.snapshots import AttentionSnapshots

__all__ = ["TrainResult", "train"]


def train(cfg: TrainConfig, reporter: Reporter | None = None) -> TrainResult:
    """Train a guided classifier as ``cfg`` says; see :class:`TrainConfig`.

    Example:
        >>> from attnguide.engine import TrainConfig
        >>> from attnguide.tasks.training import train
        >>> result = train(TrainConfig(data="data/scenes", model="resnet18", guidance="ext",
        ...                            epochs=5, out="runs/scenes"))
        >>> result.history[-1]["val_cam_miou"]
    """
    callbacks = [AttentionSnapshots(cfg.snapshots)] if cfg.snapshots > 0 else []
    return Trainer(cfg, reporter, callbacks=callbacks).fit()
