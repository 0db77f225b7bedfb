"""Per-epoch attention snapshots: ``RUN/snapshots/epoch_XXX.png``.

`AttentionSnapshots` is a training callback (``attnguide train --snapshots N``):
after each epoch's evaluation it draws the attention of the trainer's model on
N validation images, the same ones every epoch, with the epoch's facts in the
header. Without matplotlib it warns once through the trainer's reporter and
training goes on.
"""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import Any

import torch

from attnguide.errors import AttnGuideError
from attnguide.viz.common import CELL_PX, pick_indices, require_matplotlib, run_name
from attnguide.viz.grid import draw_grid
from attnguide.viz.inputs import Run, gather

__all__ = ["AttentionSnapshots", "training_snapshot"]


class AttentionSnapshots:
    """Training callback: an attention grid of ``count`` validation images per epoch.

    Args:
        count: images per snapshot (0: none).

    It reads these attributes of the trainer it is given: ``val_ds``, ``guide``,
    ``class_names``, ``multilabel``, ``run_dir``, ``device``, ``reporter``,
    ``cfg.guidance`` and ``cfg.image_size``.
    """

    def __init__(self, count: int) -> None:
        self.count = int(count or 0)
        self.warned = False  # matplotlib missing: said once

    def on_epoch_end(self, trainer: Any, record: dict[str, Any]) -> Path | None:
        """Write ``RUN/snapshots/epoch_XXX.png`` for the epoch of ``record`` (its
        metrics.jsonl line), on the main process after the epoch's evaluation.

        Returns the path, or None when there is nothing to draw (no validation split,
        ``count`` 0) or matplotlib is missing. The model's train/eval flags and the
        random generators are left as they were.
        """
        if self.count <= 0 or trainer.val_ds is None or len(trainer.val_ds) == 0:
            return None
        try:
            require_matplotlib()
        except AttnGuideError as e:
            if not self.warned:
                self.warned = True
                trainer.reporter.warn(f"no attention snapshots: {e} (or pass --snapshots 0)")
            return None
        epoch = int(record["epoch"])
        cfg = trainer.cfg
        run = Run(run_name(trainer.run_dir), trainer.guide, list(trainer.class_names),
                  bool(trainer.multilabel), str(cfg.guidance), int(cfg.image_size))
        data = gather(trainer.val_ds, pick_indices(len(trainer.val_ds), self.count), None, None,
                      trainer.val_ds.split, run, cfg.image_size, self.count)
        facts = [f"epoch {epoch}",
                 "guided" if record.get("guided") else "not guided (classification only)"]
        for key, label in (("val_cam_miou", "CAM mIoU"),
                           ("val_attention_inside", "attention inside mask")):
            if isinstance(record.get(key), (int, float)):
                facts.append(f"{label} {record[key]:.3f}")
        devices = [trainer.device] if getattr(trainer.device, "type", "cpu") == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            return draw_grid([run], data,
                             Path(trainer.run_dir) / "snapshots" / f"epoch_{epoch:03d}.png",
                             max_classes=None, title=f"{run.name}: attention after epoch {epoch}",
                             cmap="turbo", cell_px=CELL_PX, subtitle=", ".join(facts) + ".")


_callbacks: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
"""trainer -> its `AttentionSnapshots`, so `training_snapshot` warns once per trainer."""


def training_snapshot(trainer: Any, record: dict[str, Any]) -> Path | None:
    """`AttentionSnapshots` of ``trainer.cfg.snapshots`` images, called once: the
    function form of the callback (one callback per trainer, kept here, not on it)."""
    callback = _callbacks.get(trainer)
    count = int(getattr(trainer.cfg, "snapshots", 0) or 0)
    if callback is None or callback.count != count:
        callback = _callbacks[trainer] = AttentionSnapshots(count)
    return callback.on_epoch_end(trainer, record)
