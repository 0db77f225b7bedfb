"""The training engine: the loops of ``attnguide train`` and ``attnguide segment``, their
options, resumable state, data loading, optimisers and metrics.

Example:
    >>> from attnguide.engine import TrainConfig
    >>> from attnguide.tasks import train
    >>> result = train(TrainConfig(data="data/scenes", model="resnet18", guidance="ext",
    ...                            epochs=5, out="runs/scenes"))
    >>> result.history[-1]["val_map"], result.best_checkpoint

Names are loaded on first use, so that reading options loads no training code.
"""

from __future__ import annotations

from attnguide._lazy import lazy_exports

_EXPORTS = {
    "TrainConfig": "config",
    "config_from_options": "config",
    "read_config_file": "config",
    "resolve_config": "config",
    "save_config": "config",
    "SegmentConfig": "segment_config",
    "Loop": "loop",
    "RunResult": "loop",
    "Callback": "loop",
    "Trainer": "trainer",
    "TrainResult": "trainer",
    "evaluate": "trainer",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
