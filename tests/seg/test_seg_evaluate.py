"""Confusion matrix, IoU and folder evaluation: hand-computed values and torchmetrics identity."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
import torch
from torchmetrics.functional.classification import multiclass_confusion_matrix

from attnguide.errors import AttnGuideError
from attnguide.io.labels import save_label_png
from attnguide.wsss.evaluate import (
    ConfusionMatrix,
    SegMetrics,
    confusion_matrix,
    evaluate_folders,
    iou_from_confusion,
)

GT = np.array(
    [
        [0, 0, 1, 1],
        [0, 0, 1, 1],
        [0, 2, 2, 1],
        [255, 2, 2, 1],
    ],
    dtype=np.uint8,
)
PRED = np.array(
    [
        [0, 0, 1, 1],
        [0, 1, 1, 1],
        [0, 2, 2, 2],
        [0, 2, 2, 0],
    ],
    dtype=np.uint8,
)
NAMES = ["background", "cat", "dog", "bird"]


def test_hand_computed_4x4_example():
    # rows = ground truth, columns = prediction; the 255 pixel is skipped
    expected = np.array([[4, 1, 0, 0], [1, 4, 1, 0], [0, 0, 4, 0], [0, 0, 0, 0]])
    confusion = confusion_matrix(PRED, GT, num_classes=4)
    np.testing.assert_array_equal(confusion, expected)
    metrics = SegMetrics(confusion, tuple(NAMES))
    iou = metrics.per_class_iou
    # IoU = TP / (GT + pred - TP): 4/(5+5-4), 4/(6+5-4), 4/(4+5-4); bird absent everywhere
    np.testing.assert_allclose(iou[:3], [4 / 6, 4 / 7, 4 / 5])
    assert math.isnan(iou[3])
    assert metrics.miou == pytest.approx((4 / 6 + 4 / 7 + 4 / 5) / 3)
    assert metrics.pixel_accuracy == pytest.approx(12 / 15)


def test_predicted_but_absent_class_counts_as_zero():
    metrics = SegMetrics(confusion_matrix(np.array([[1, 1]]), np.array([[0, 0]]), 2), ("bg", "cat"))
    np.testing.assert_array_equal(metrics.per_class_iou, [0.0, 0.0])
    assert metrics.miou == 0.0


def test_json_and_markdown():
    metrics = SegMetrics(confusion_matrix(PRED, GT, 4), tuple(NAMES))
    report = metrics.to_json()
    json.dumps(report)  # NaN became None, so this is valid JSON
    assert report["per_class"]["bird"] is None
    assert report["per_class"]["cat"] == pytest.approx(4 / 7)
    assert report["miou"] == pytest.approx(metrics.miou)
    assert report["pixel_accuracy"] == pytest.approx(0.8)
    assert report["confusion"][0] == [4, 1, 0, 0]
    table = metrics.to_markdown(["bg", "Cat", "Dog", "Bird"])
    assert "| Cat | 57.14 |" in table and "| Bird | n/a |" in table and "67.94" in table
    with pytest.raises(AttnGuideError, match="3 class names for 4"):
        metrics.to_markdown(["a", "b", "c"])


def test_bincount_equals_torchmetrics_on_random_maps_with_ignore():
    rng = np.random.default_rng(0)
    n = 21
    accumulator = ConfusionMatrix([str(i) for i in range(n)])
    reference = torch.zeros(n, n, dtype=torch.int64)
    for _ in range(5):
        gt = rng.integers(0, n, size=(37, 29)).astype(np.uint8)
        gt[rng.random(gt.shape) < 0.2] = 255
        pred = rng.integers(0, n, size=gt.shape).astype(np.uint8)
        accumulator.update(pred, gt)
        reference += multiclass_confusion_matrix(
            torch.from_numpy(pred).long(), torch.from_numpy(gt).long(), n, ignore_index=255
        )
    np.testing.assert_array_equal(accumulator.confusion, reference.numpy())


def _best_of(fn, repeat=5) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def test_bincount_speed_against_torchmetrics_is_printed():
    rng = np.random.default_rng(1)
    gt = rng.integers(0, 21, size=(500, 375)).astype(np.uint8)
    gt[rng.random(gt.shape) < 0.1] = 255
    pred = rng.integers(0, 21, size=gt.shape).astype(np.uint8)
    preds, target = torch.from_numpy(pred).long(), torch.from_numpy(gt).long()
    ours = _best_of(lambda: confusion_matrix(pred, gt, 21))
    checked = _best_of(lambda: multiclass_confusion_matrix(preds, target, 21, ignore_index=255))
    unchecked = _best_of(
        lambda: multiclass_confusion_matrix(
            preds, target, 21, ignore_index=255, validate_args=False
        )
    )
    print(
        f"500x375 confusion matrix, best of 5: bincount (values checked) {1e3 * ours:.2f} ms, "
        f"torchmetrics {1e3 * checked:.2f} ms (validate_args=False: {1e3 * unchecked:.2f} ms)"
    )


def test_bad_label_values_are_named():
    zeros = np.zeros((2, 2), dtype=np.uint8)
    with pytest.raises(AttnGuideError, match=r"values \[7\].*4 classes"):
        confusion_matrix(np.full((2, 2), 7), zeros, 4)
    with pytest.raises(AttnGuideError, match="every pixel a class"):
        confusion_matrix(np.full((2, 2), 255), zeros, 4)
    with pytest.raises(AttnGuideError, match=r"values \[-1\]"):
        confusion_matrix(np.full((2, 2), -1), zeros, 4)
    with pytest.raises(AttnGuideError, match="integer class indices"):
        confusion_matrix(np.zeros((2, 2), dtype=np.float32), zeros, 4)
    with pytest.raises(AttnGuideError, match="shape"):
        confusion_matrix(np.zeros((2, 3), dtype=np.uint8), zeros, 4)


def _write_set(root, names, pred=PRED, gt=GT):
    (root / "pred").mkdir()
    (root / "gt").mkdir()
    for name in names:
        save_label_png(root / "gt" / f"{name}.png", gt)
        save_label_png(root / "pred" / f"{name}.png", pred)


def test_evaluate_folders_dir_and_pairs(tmp_path):
    _write_set(tmp_path, ["a", "b"])
    metrics = evaluate_folders(tmp_path / "pred", tmp_path / "gt", NAMES)
    np.testing.assert_array_equal(metrics.confusion, 2 * confusion_matrix(PRED, GT, 4))
    subset = evaluate_folders(tmp_path / "pred", [("a", tmp_path / "gt" / "a.png")], NAMES)
    assert subset.miou == pytest.approx(metrics.miou)


def test_evaluate_folders_lists_missing_predictions(tmp_path):
    names = [f"img{i:02d}" for i in range(13)]
    _write_set(tmp_path, names)
    for name in names[1:]:
        (tmp_path / "pred" / f"{name}.png").unlink()
    with pytest.raises(AttnGuideError) as info:
        evaluate_folders(tmp_path / "pred", tmp_path / "gt", NAMES)
    message = str(info.value)
    assert "lacks 12 of 13" in message and "img01, img02" in message and "(and 2 more)" in message
    assert "img12" not in message


def test_evaluate_folders_names_bad_files(tmp_path):
    _write_set(tmp_path, ["a"], pred=np.where(PRED == 2, 9, PRED).astype(np.uint8))
    with pytest.raises(AttnGuideError, match=r"pred/a\.png.*values \[9\] but there are 4 classes"):
        evaluate_folders(tmp_path / "pred", tmp_path / "gt", NAMES)
    from PIL import Image

    # an RGB PNG is a label map only when painted in the VOC palette; (7, 7, 7) is not in it
    Image.fromarray(np.full((4, 4, 3), 7, dtype=np.uint8)).save(tmp_path / "pred" / "a.png")
    with pytest.raises(AttnGuideError, match=r"pred/a\.png.*not a label map"):
        evaluate_folders(tmp_path / "pred", tmp_path / "gt", NAMES)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        evaluate_folders(tmp_path / "nowhere", tmp_path / "gt", NAMES)


def test_tensors_and_arrays_count_alike():
    rng = np.random.default_rng(2)
    gt = rng.integers(0, 5, size=(3, 9, 7))
    gt[rng.random(gt.shape) < 0.2] = 255
    pred = rng.integers(0, 5, size=gt.shape)
    from_arrays = confusion_matrix(pred.astype(np.uint8), gt.astype(np.uint8), 5)
    from_tensors = confusion_matrix(torch.from_numpy(pred), torch.from_numpy(gt), 5)
    assert isinstance(from_arrays, np.ndarray) and isinstance(from_tensors, torch.Tensor)
    np.testing.assert_array_equal(from_arrays, from_tensors.numpy())
    mixed = confusion_matrix(torch.from_numpy(pred), gt, 5)
    assert isinstance(mixed, torch.Tensor) and torch.equal(mixed, from_tensors)
    iou = iou_from_confusion(from_arrays)
    assert isinstance(iou, np.ndarray)
    np.testing.assert_allclose(iou, iou_from_confusion(from_tensors).numpy())
    with pytest.raises(AttnGuideError, match="integer class indices, got dtype float32"):
        confusion_matrix(torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.long), 5)
    with pytest.raises(AttnGuideError, match=r"values \[9\]"):
        confusion_matrix(torch.full((2, 2), 9), torch.zeros(2, 2, dtype=torch.long), 5)
