"""attnguide.metrics: each torchmetrics class against a value computed by hand on a tiny case,
accumulation over batches, and the engine using the same functions (one implementation)."""

from __future__ import annotations

import math

import pytest
import torch

from attnguide.errors import AttnGuideError
from attnguide.metrics import (
    AttentionArea,
    AttentionInside,
    CamMIoU,
    PointingGame,
    WorstGroupAccuracy,
    gt_classes,
)

# Two 2x2 images, classes 0 and 1 (mask values 1 and 2), one map each.
MAPS = torch.tensor([[[0.9, 0.1],
                      [0.0, 0.0]],
                     [[0.2, 0.0],
                      [0.6, 0.2]]])[:, None]  # (2, 1, 2, 2)
CLASSES = torch.tensor([[0], [1]])
MASKS = torch.tensor([[[1, 1],
                       [0, 0]],
                      [[0, 255],
                       [0, 2]]])


def test_attention_inside_by_hand():
    metric = AttentionInside()
    metric.update(MAPS, CLASSES, MASKS)
    # image 1: (0.9 + 0.1) / 1.0 = 1; image 2: the 255 pixel (0.0) is left out: 0.2 / (0.2 + 0.6 + 0.2) = 0.2
    assert float(metric.compute()) == pytest.approx((1.0 + 0.2) / 2)


def test_attention_inside_accumulates_over_batches():
    metric = AttentionInside()
    metric.update(MAPS[:1], CLASSES[:1], MASKS[:1])
    metric.update(MAPS[1:], CLASSES[1:], MASKS[1:])
    assert float(metric.compute()) == pytest.approx(0.6)
    metric.reset()
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert math.isnan(float(metric.compute()))  # no pair yet


def test_pointing_game_by_hand():
    metric = PointingGame()
    metric.update(MAPS, CLASSES, MASKS)
    # image 1: max at (0, 0), class 0 there: hit; image 2: max at (1, 0), background: miss
    assert float(metric.compute()) == pytest.approx(0.5)
    tolerant = PointingGame(tolerance=1)  # (1, 0) is one pixel from the class-1 pixel (1, 1)
    tolerant.update(MAPS, CLASSES, MASKS)
    assert float(tolerant.compute()) == pytest.approx(1.0)
    with pytest.raises(AttnGuideError, match="tolerance"):
        PointingGame(tolerance=-1)


def test_cam_miou_by_hand():
    metric = CamMIoU(num_classes=2, threshold=0.5)
    metric.update(MAPS, CLASSES, MASKS)
    # predictions: image 1 [[1, 0], [0, 0]], image 2 [[0, 0(ignored)], [2, 0]]
    # background: gt {img1: 2 px, img2: 2 px} = 4, pred bg on 6 valid px... count by hand:
    # img1: gt 1 1 0 0, pred 1 0 0 0 -> (1,1) (1,0) (0,0) (0,0)
    # img2: gt 0 . 0 2, pred 0 . 2 0 -> (0,0) (0,2) (2,0)
    # bg:   tp 3, gt 4, pred 5 -> 3 / (4 + 5 - 3) = 0.5
    # c1:   tp 1, gt 2, pred 1 -> 1 / 2;  c2: tp 0, gt 1, pred 1 -> 0
    assert metric.iou().tolist() == pytest.approx([0.5, 0.5, 0.0])
    assert float(metric.compute()) == pytest.approx(1 / 3)
    with pytest.raises(AttnGuideError, match="threshold"):
        CamMIoU(2, threshold=1.5)


def test_attention_area_and_padding():
    maps = torch.cat([MAPS, torch.ones_like(MAPS)], dim=1)  # (2, 2, 2, 2): a second, padded map
    classes = torch.tensor([[0, 0], [1, 1]])
    present = torch.tensor([[True, False], [True, False]])
    metric = AttentionArea()
    metric.update(maps, classes, None, present)
    assert float(metric.compute()) == pytest.approx((1.0 / 4 + 1.0 / 4) / 2)  # padding not counted
    inside = AttentionInside()
    inside.update(maps, classes, MASKS, present)
    assert float(inside.compute()) == pytest.approx(0.6)


def test_worst_group_accuracy_by_hand():
    metric = WorstGroupAccuracy(num_classes=2, num_bias=2)
    target = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    bias = torch.tensor([0, 0, 1, 0, 1, 1, 1])
    preds = torch.tensor([0, 0, 1, 1, 1, 0, 1])
    metric.update(preds[:4], target[:4], bias[:4])
    metric.update(torch.eye(2)[preds[4:]], target[4:], bias[4:])  # scores: arg-max
    # groups (0,0): 2/2, (0,1): 0/1, (1,0): 1/1, (1,1): 2/3 -> worst 0
    table = metric.group_accuracies()
    assert table.shape == (2, 2) and table.flatten().tolist() == pytest.approx([1.0, 0.0, 1.0, 2 / 3])
    assert float(metric.compute()) == 0.0
    empty = WorstGroupAccuracy(2, 3)
    empty.update(torch.tensor([1]), torch.tensor([1]), torch.tensor([2]))
    assert float(empty.compute()) == 1.0  # empty groups are left out
    with pytest.raises(AttnGuideError, match="bias values"):
        empty.update(torch.tensor([1]), torch.tensor([1]), torch.tensor([3]))


def test_bad_shapes_name_the_fix():
    with pytest.raises(AttnGuideError, match="resize the maps"):
        AttentionInside().update(MAPS, CLASSES, MASKS[:, :1])
    with pytest.raises(AttnGuideError, match="classes"):
        AttentionInside().update(MAPS, CLASSES[:1], MASKS)


def test_one_implementation_with_the_engine():
    from attnguide.engine import metrics as engine_metrics
    from attnguide.metrics import attention

    assert engine_metrics.cam_segmentation is attention.cam_segmentation
    assert engine_metrics.attention_inside is attention.attention_inside
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    classes, present = gt_classes(labels, multilabel=True)
    assert classes.tolist() == [[0, 2], [1, 1]] and present.tolist() == [[True, True], [True, False]]
