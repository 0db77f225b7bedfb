"""Attention-quality metrics as ``torchmetrics.Metric`` subclasses (accumulate over batches,
sync under DDP), and the pure functions they are built on.

The layer sits between :mod:`attnguide.wsss` (the confusion matrix and IoU it reuses) and
:mod:`attnguide.engine` (whose evaluation and the Lightning integration use these
classes and functions: one implementation).

Shapes: N images, K maps per image (the classes ``classes`` (N, K), ``present`` (N, K)
False for padding), H x W pixels; masks (N, H, W) in the VOC convention (0 background,
c + 1 class c, 255 ignore).

Example:
    >>> import torch
    >>> from attnguide.metrics import AttentionInside
    >>> metric = AttentionInside()
    >>> maps = torch.tensor([[[[1.0, 3.0], [0.0, 0.0]]]])       # (1, 1, 2, 2)
    >>> masks = torch.tensor([[[1, 0], [0, 0]]])                 # class 0 at the top left
    >>> metric.update(maps, torch.tensor([[0]]), masks)
    >>> float(metric.compute())                                  # 1 of 4 units inside
    0.25
"""

from __future__ import annotations

from attnguide.metrics.attention import (
    AttentionArea,
    AttentionInside,
    CamMIoU,
    PointingGame,
    attention_inside,
    cam_segmentation,
    gt_classes,
    pointing_game,
)
from attnguide.metrics.groups import (
    MeanGroupAccuracy,
    WorstGroupAccuracy,
    group_accuracy,
    pair_predictions,
)

__all__ = [
    "AttentionArea",
    "AttentionInside",
    "CamMIoU",
    "MeanGroupAccuracy",
    "PointingGame",
    "WorstGroupAccuracy",
    "attention_inside",
    "cam_segmentation",
    "group_accuracy",
    "gt_classes",
    "pair_predictions",
    "pointing_game",
]
