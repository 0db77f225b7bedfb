"""Attention metrics: CAM mIoU at a threshold, share of attention inside the mask (energy),
pointing game, mean attention area.

Every metric's ``update(maps, classes, masks, present=None)`` takes

    maps     (N, K, H, W) attention >= 0 (min-max normalised to [0, 1] for CamMIoU),
             or (N, H, W) with classes (N,): one map per image
    classes  (N, K) int64 class index of each map (0-based, without background)
    masks    (N, H, W) int64 labels: 0 background, c + 1 class c, 255 ignore
    present  (N, K) bool, False for padding entries (default: all True)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric

from attnguide.constants import IGNORE
from attnguide.errors import AttnGuideError
from attnguide.wsss.evaluate import confusion_matrix, iou_from_confusion


def _inputs(maps: Tensor, classes: Tensor, masks: Tensor | None,
            present: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None, Tensor]:
    """Check shapes; (N, H, W) maps with (N,) classes become K = 1."""
    if maps.dim() == 3:
        maps = maps[:, None]
    if classes.dim() == 1:
        classes = classes[:, None]
    if maps.dim() != 4 or classes.shape != maps.shape[:2]:
        raise AttnGuideError(f"maps must be (N, K, H, W) with classes (N, K), got maps "
                             f"{tuple(maps.shape)} and classes {tuple(classes.shape)}")
    if masks is not None and masks.shape != (maps.shape[0], *maps.shape[2:]):
        raise AttnGuideError(f"masks must be (N, H, W) = {(maps.shape[0], *maps.shape[2:])} like the "
                             f"maps, got {tuple(masks.shape)}; resize the maps to the mask size")
    if present is None:
        present = torch.ones(classes.shape, dtype=torch.bool, device=classes.device)
    elif present.dim() == 1:
        present = present[:, None]
    if present.shape != classes.shape:
        raise AttnGuideError(f"present must be (N, K) = {tuple(classes.shape)}, got {tuple(present.shape)}")
    return maps, classes.long(), masks, present.bool()


def gt_classes(labels: Tensor, multilabel: bool) -> tuple[Tensor, Tensor]:
    """(N, C) multi-hot -> classes (N, K) padded with each row's first class, present (N, K).

    Single-label: the arg-max class, K = 1. Multi-label: the positives in class order.
    """
    if not multilabel:
        return (labels.argmax(dim=1, keepdim=True),
                torch.ones(len(labels), 1, dtype=torch.bool, device=labels.device))
    pos = labels >= 0.5
    k = max(1, int(pos.sum(1).max())) if len(labels) else 1
    order = torch.sort((~pos).int(), dim=1, stable=True).indices[:, :k]  # (N, K) positives first
    present = pos.gather(1, order)
    return torch.where(present, order, order[:, :1]), present


def cam_segmentation(maps: Tensor, classes: Tensor, present: Tensor, threshold: float) -> Tensor:
    """Segment with CAMs and a fixed background score.

    Args:
        maps: (N, K, H, W) attention in [0, 1] of the classes ``classes`` (N, K).
        classes: (N, K) int64 class indices (repeats allowed).
        present: (N, K) bool, False for padding entries.
        threshold: the background's score: a pixel is background where every
            class's attention is below it.

    Returns:
        (N, H, W) int64 labels in the VOC convention (0 background, c + 1 class c).
    """
    maps = maps.float().masked_fill(~present[:, :, None, None], -1.0)
    best, arg = maps.max(dim=1)  # (N, H, W)
    label = classes.gather(1, arg.flatten(1)).view_as(arg) + 1
    return torch.where(best >= threshold, label, torch.zeros_like(label))


def _shares(maps: Tensor, classes: Tensor, present: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
    """Per-pair share of attention inside the class's mask (N, K) and which pairs count."""
    valid = (masks != IGNORE)[:, None]  # (N, 1, H, W)
    inside = masks[:, None] == (classes[:, :, None, None] + 1)  # (N, K, H, W)
    mass = (maps.float() * valid).flatten(2).sum(-1)  # (N, K)
    mass_in = (maps.float() * inside).flatten(2).sum(-1)
    ok = present & (mass > 0) & inside.flatten(2).any(-1)
    return torch.where(ok, mass_in / mass.clamp_min(1e-30), torch.zeros_like(mass)), ok


def attention_inside(maps: Tensor, classes: Tensor, present: Tensor, masks: Tensor) -> tuple[float, int]:
    """Share of each map's attention mass inside its class's mask, summed over pairs.

    ``share = sum(A * [mask == c + 1]) / sum(A * [mask != 255])`` per (image, class) pair.

    Returns:
        (sum of per-pair shares, number of pairs counted): pairs whose class has
        no pixel in the mask or whose map is all zero are skipped. Pixels whose
        mask is 255 are left out of both numerator and denominator.
    """
    share, ok = _shares(maps, classes, present, masks)
    return float(share[ok].sum()), int(ok.sum())


def pointing_game(maps: Tensor, classes: Tensor, present: Tensor, masks: Tensor,
                  tolerance: int = 0) -> tuple[int, int]:
    """Pointing game (Zhang et al., 2016): a hit when a map's maximum lies on its class.

    The maximum is taken over the pixels whose mask is not 255 (first one in raster
    order on ties); it is a hit when a pixel of class c lies within ``tolerance``
    pixels of it (a (2t+1) x (2t+1) square; the paper used 15 px). Pairs whose class
    has no pixel in the mask are skipped.

    Returns:
        (hits, pairs counted).
    """
    valid = (masks != IGNORE)[:, None]  # (N, 1, H, W)
    inside = (masks[:, None] == (classes[:, :, None, None] + 1)).float()  # (N, K, H, W)
    if tolerance:
        inside = F.max_pool2d(inside, 2 * tolerance + 1, stride=1, padding=tolerance)
    scored = maps.float().masked_fill(~valid, float("-inf")).flatten(2)  # (N, K, HW)
    top = scored.argmax(-1, keepdim=True)
    hit = inside.flatten(2).gather(2, top).squeeze(2) > 0  # (N, K)
    ok = present & (masks[:, None] == (classes[:, :, None, None] + 1)).flatten(2).any(-1)
    return int((hit & ok).sum()), int(ok.sum())


class _PairMetric(Metric):
    """A mean over counted (image, class) pairs: ``total / count``, NaN before any pair."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def compute(self) -> Tensor:
        if int(self.count) == 0:
            return torch.tensor(float("nan"), dtype=torch.float64)
        return self.total / self.count


class AttentionInside(_PairMetric):
    """Mean share of a map's attention mass inside its class's mask (the "energy"
    pointing measure of Wang et al. / Rao et al.); see :func:`attention_inside`."""

    def update(self, maps: Tensor, classes: Tensor, masks: Tensor, present: Tensor | None = None) -> None:
        maps, classes, masks, present = _inputs(maps, classes, masks, present)
        share, ok = _shares(maps, classes, present, masks)
        self.total += share[ok].double().sum()
        self.count += ok.sum()


class PointingGame(_PairMetric):
    """Share of maps whose maximum lies on their class; see :func:`pointing_game`.

    Args:
        tolerance: pixels around the maximum that may hold the class (0 = the pixel itself).
    """

    def __init__(self, tolerance: int = 0, **kwargs) -> None:
        if tolerance < 0:
            raise AttnGuideError(f"PointingGame tolerance must be >= 0 pixels, got {tolerance}")
        super().__init__(**kwargs)
        self.tolerance = int(tolerance)

    def update(self, maps: Tensor, classes: Tensor, masks: Tensor, present: Tensor | None = None) -> None:
        maps, classes, masks, present = _inputs(maps, classes, masks, present)
        hits, n = pointing_game(maps, classes, present, masks, self.tolerance)
        self.total += hits
        self.count += n


class AttentionArea(_PairMetric):
    """Mean attention value of the present maps (the share of the image a [0, 1] map
    covers; the degenerate "erase everything" solution drives it towards 1). No masks."""

    higher_is_better = False

    def update(self, maps: Tensor, classes: Tensor, masks: Tensor | None = None,
               present: Tensor | None = None) -> None:
        maps, classes, _, present = _inputs(maps, classes, None, present)
        self.total += (maps.float().mean(dim=(2, 3)) * present).double().sum()
        self.count += present.sum()


class CamMIoU(Metric):
    """mIoU of the segmentation that CAMs give at a fixed background threshold.

    A pixel is background when every present class's attention is below ``threshold``,
    else the class with the highest attention (:func:`cam_segmentation`); one confusion
    matrix over background + ``num_classes`` is accumulated (255 ignored) and the mIoU is
    the mean IoU over the classes whose IoU is defined (:mod:`attnguide.wsss.evaluate`).

    Args:
        num_classes: classes without background.
        threshold: background score, in [0, 1] (IRN's CAM evaluation: 0.15).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, num_classes: int, threshold: float = 0.15, **kwargs) -> None:
        if num_classes < 1:
            raise AttnGuideError(f"CamMIoU needs num_classes >= 1 (without background), got {num_classes}")
        if not 0 <= threshold <= 1:
            raise AttnGuideError(f"CamMIoU threshold must lie in [0, 1] (maps are min-max normalised), "
                                 f"got {threshold}")
        super().__init__(**kwargs)
        self.num_classes, self.threshold = int(num_classes), float(threshold)
        n = self.num_classes + 1
        self.add_state("confmat", default=torch.zeros(n, n, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, maps: Tensor, classes: Tensor, masks: Tensor, present: Tensor | None = None) -> None:
        maps, classes, masks, present = _inputs(maps, classes, masks, present)
        seg = cam_segmentation(maps, classes, present, self.threshold)
        self.confmat += confusion_matrix(seg, masks.to(seg.device), self.num_classes + 1).to(self.confmat)

    def iou(self) -> Tensor:
        """Per-class IoU, background first (NaN where undefined)."""
        return iou_from_confusion(self.confmat)

    def compute(self) -> Tensor:
        iou = self.iou()
        iou = iou[~iou.isnan()]
        return iou.mean() if len(iou) else torch.tensor(float("nan"))
