"""Evaluation metrics as small pure functions (tested against torchmetrics).

Shapes: N images, C classes, H x W pixels. The confusion matrix and the IoU are
:mod:`attnguide.wsss.evaluate`'s, the attention metrics (CAM segmentation, share of
attention inside the mask, worst-group accuracy) :mod:`attnguide.metrics`' (one
implementation for training, evaluation and the ``torchmetrics`` classes), re-exported here
for the training loop.
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnguide.metrics.attention import (
    AttentionArea,
    AttentionInside,
    CamMIoU,
    attention_inside,
    cam_segmentation,
    gt_classes,
)
from attnguide.metrics.groups import MeanGroupAccuracy, WorstGroupAccuracy, pair_predictions
from attnguide.wsss.evaluate import confusion_matrix, iou_from_confusion

__all__ = [
    "AttentionArea",
    "AttentionInside",
    "CamMIoU",
    "MeanGroupAccuracy",
    "WorstGroupAccuracy",
    "accuracy",
    "attention_inside",
    "average_precision",
    "cam_segmentation",
    "choose_threshold",
    "confusion_matrix",
    "gt_classes",
    "iou_from_confusion",
    "mean_average_precision",
    "mean_iou",
    "pair_predictions",
]


def average_precision(scores: Tensor, targets: Tensor) -> Tensor:
    """Per-class average precision (VOC/sklearn "AP", no interpolation).

    ``AP_c = sum over positives k of precision@rank(k) / #positives``, ranks
    by descending score (ties: the stable sort keeps the input order).

    Args:
        scores: (N, C) float. targets: (N, C) in {0, 1}.

    Returns:
        (C,) AP; NaN for classes without a positive.
    """
    scores, targets = scores.float(), targets.float()
    order = scores.argsort(dim=0, descending=True, stable=True)  # (N, C)
    hits = targets.gather(0, order)  # (N, C)
    tp = hits.cumsum(0)
    ranks = torch.arange(1, len(scores) + 1, dtype=torch.float32, device=scores.device)[:, None]
    positives = hits.sum(0)
    ap = (tp / ranks * hits).sum(0) / positives
    return torch.where(positives > 0, ap, torch.full_like(ap, float("nan")))


def mean_average_precision(scores: Tensor, targets: Tensor) -> float:
    """mAP over classes that have at least one positive (NaN if none has)."""
    ap = average_precision(scores, targets)
    ap = ap[~ap.isnan()]
    return float(ap.mean()) if len(ap) else float("nan")


def accuracy(logits: Tensor, targets: Tensor, multilabel: bool, threshold: float = 0.5) -> float:
    """Single-label: top-1 accuracy (targets (N,) indices or (N, C) one-hot).
    Multi-label: exact match, every class right at probability ``threshold``."""
    if multilabel:
        pred = logits.float().sigmoid() >= threshold
        return float((pred == (targets >= 0.5)).all(dim=1).float().mean())
    if targets.dim() == 2:
        targets = targets.argmax(dim=1)
    return float((logits.argmax(dim=1) == targets).float().mean())


DECISION_THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(1, 20))
"""The probabilities :func:`choose_threshold` tries: 0.05, 0.10, ..., 0.95."""


def choose_threshold(logits: Tensor, targets: Tensor, grid: tuple[float, ...] = DECISION_THRESHOLDS) -> float:
    """The multi-label decision threshold that maximises exact match on these images.

    A classifier can rank well (high mAP) and still score low exact match at 0.5 when its
    probabilities sit lower or higher than the labels' rate; guided classifiers often predict
    fewer positives. Choose the threshold on a validation split and apply it to the test split
    (``attnguide evaluate --run`` does, from the run's last validation). Ties go to the
    threshold nearest 0.5.

    Args:
        logits: (N, C). targets: (N, C) in {0, 1}. grid: the probabilities to try.

    Returns:
        The chosen probability threshold.
    """
    if not grid:
        raise ValueError("choose_threshold needs at least one threshold to try")
    return max(grid, key=lambda t: (accuracy(logits, targets, True, t), -abs(t - 0.5)))


def mean_iou(conf: Tensor) -> float:
    """Mean of :func:`iou_from_confusion` over the classes whose IoU is defined (NaN if none)."""
    iou = iou_from_confusion(conf)
    iou = iou[~iou.isnan()]
    return float(iou.mean()) if len(iou) else float("nan")
