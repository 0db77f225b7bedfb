"""The training engine of ``attnguide train``.

Example:
    >>> from attnguide.engine import TrainConfig, train
    >>> result = train(TrainConfig(data="data/scenes", model="resnet18", guidance="ext",
    ...                            epochs=5, out="runs/scenes"))
    >>> result.history[-1]["val_map"], result.best_checkpoint
"""

from __future__ import annotations

from attnguide.engine.config import TrainConfig, read_config_file, resolve_config, save_config
from attnguide.engine.trainer import Trainer, TrainResult, evaluate, train

__all__ = [
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "config_from_options",
    "evaluate",
    "read_config_file",
    "resolve_config",
    "save_config",
    "train",
]


def config_from_options(options: dict | None = None, config_file=None) -> TrainConfig:
    """The config of a run from command-line ``options`` (only those given) and a
    ``--config`` file; with ``resume`` the resumed run's saved config is the base.

    Precedence: defaults < resumed run's config < config file < options.
    """
    from attnguide.io.checkpoints import read_checkpoint, resolve_checkpoint

    first = resolve_config(options, config_file)
    if not first.resume:
        return first
    path = resolve_checkpoint(first.resume, prefer="last")
    base = dict(read_checkpoint(path).get("config") or {})
    cfg = resolve_config(options, config_file, base=base)
    cfg.resume = first.resume
    explicit_out = (options or {}).get("out") is not None or (
        config_file is not None and "out" in read_config_file(config_file))
    if not explicit_out:
        cfg.out = str(path.parent)  # continue in the checkpoint's own run folder
    return cfg
