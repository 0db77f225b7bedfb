"""Segmentation metrics: confusion matrix, per-class IoU, mIoU, pixel accuracy.

For ``N = C + 1`` classes (background included) the confusion matrix ``M``
``(N, N)`` counts pixels with ground truth ``i`` (row) predicted as ``j``
(column), the layout of ``torchmetrics.functional.multiclass_confusion_matrix``.
Pixels whose ground truth is 255 are skipped. Then::

    IoU_c          = M_cc / (sum_j M_cj + sum_i M_ic - M_cc)
    mIoU           = mean of IoU_c over the classes whose IoU is defined
    pixel accuracy = trace(M) / sum(M)

A class absent from both the ground truth and the predictions of the whole
set has ``0 / 0``: its IoU is NaN and it is left out of the mean (a class
that no image contains says nothing about the method). A class predicted
but never present has IoU 0 and counts.

The matrix is accumulated with ``numpy.bincount`` over ``N * gt + pred``;
the test suite checks it equals torchmetrics' (``ignore_index=255``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from attnguide.constants import IGNORE
from attnguide.errors import AttnGuideError
from attnguide.io.labels import load_label_png

__all__ = [
    "confusion_matrix",
    "iou_from_confusion",
    "ConfusionMatrix",
    "SegMetrics",
    "evaluate_folders",
]

_SHOW = 10  # how many offending names an error message lists


def _check_values(label: np.ndarray, num_classes: int, what: str, allow_ignore: bool) -> None:
    """Raise if ``label`` holds a value < 0 or >= num_classes (other than 255 where allowed)."""
    if label.dtype == np.uint8:  # the usual case: a 256-bin histogram is faster than np.unique
        values = np.flatnonzero(np.bincount(label.reshape(-1), minlength=256))
    else:
        values = np.unique(label)
    bad = values[((values < 0) | (values >= num_classes)) & ~((values == IGNORE) & allow_ignore)]
    if bad.size:
        allowed = f"0..{num_classes - 1}" + (" and 255 (ignore)" if allow_ignore else "")
        hint = (
            "predictions must give every pixel a class (255 is for ground truth only)"
            if IGNORE in bad and not allow_ignore
            else "check class_names (background included) or the files"
        )
        raise AttnGuideError(
            f"{what} has label values {bad[:_SHOW].tolist()} but there are {num_classes} "
            f"classes, so only {allowed} are valid; {hint}"
        )


def _count(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> np.ndarray:
    """``bincount`` of ``N * gt + pred`` over pixels with ``gt != 255``, as ``(N, N)``."""
    valid = gt != IGNORE
    index = num_classes * gt[valid].astype(np.int64) + pred[valid]
    return np.bincount(index, minlength=num_classes**2).reshape(num_classes, num_classes)


def confusion_matrix(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> np.ndarray:
    """Confusion matrix of one prediction, ``int64 (num_classes, num_classes)``.

    Args:
        pred: ``(H, W)`` predicted labels in ``0..num_classes-1``.
        gt: ``(H, W)`` ground truth in ``0..num_classes-1`` or 255 (skipped).
        num_classes: ``N``, background included.

    Returns:
        ``M`` with ``M[i, j]`` = pixels of ground truth ``i`` predicted ``j``.
    """
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape:
        raise AttnGuideError(f"prediction shape {pred.shape} differs from ground truth {gt.shape}")
    for what, label in (("prediction", pred), ("ground truth", gt)):
        if not np.issubdtype(label.dtype, np.integer):
            raise AttnGuideError(
                f"{what} must hold integer class indices, got dtype {label.dtype}; "
                "take the argmax over class scores first"
            )
    _check_values(pred, num_classes, "prediction", allow_ignore=False)
    _check_values(gt, num_classes, "ground truth", allow_ignore=True)
    return _count(pred, gt, num_classes)


def iou_from_confusion(confusion: np.ndarray) -> np.ndarray:
    """Per-class IoU ``(N,)`` float64; NaN for classes absent from GT and prediction."""
    confusion = np.asarray(confusion, dtype=np.float64)
    true_positive = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - true_positive
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, true_positive / union, np.nan)


@dataclass(frozen=True)
class SegMetrics:
    """Metrics of a whole set, computed from its summed confusion matrix.

    Attributes:
        confusion: ``int64 (N, N)``, rows ground truth, columns prediction.
        class_names: ``N`` names, background first.
    """

    confusion: np.ndarray
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        n = len(self.class_names)
        if self.confusion.shape != (n, n):
            raise AttnGuideError(
                f"confusion matrix is {self.confusion.shape} but there are {n} class names"
            )

    @property
    def per_class_iou(self) -> np.ndarray:
        """``(N,)`` IoU per class, NaN where undefined."""
        return iou_from_confusion(self.confusion)

    @property
    def miou(self) -> float:
        """Mean IoU over the classes with a defined IoU (NaN if none)."""
        iou = self.per_class_iou
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")

    @property
    def pixel_accuracy(self) -> float:
        """Correct pixels / labelled pixels (NaN when no pixel is labelled)."""
        total = self.confusion.sum()
        return float(np.trace(self.confusion) / total) if total else float("nan")

    def to_json(self) -> dict:
        """JSON-ready dict; NaN IoUs become ``None``.

        Keys: ``miou``, ``pixel_accuracy``, ``per_class`` (name → IoU),
        ``confusion`` (list of rows), ``class_names``.
        """

        def clean(value: float) -> float | None:
            return None if np.isnan(value) else float(value)

        return {
            "miou": clean(self.miou),
            "pixel_accuracy": clean(self.pixel_accuracy),
            "per_class": {
                name: clean(iou) for name, iou in zip(self.class_names, self.per_class_iou)
            },
            "confusion": self.confusion.tolist(),
            "class_names": list(self.class_names),
        }

    def to_markdown(self, class_names: Sequence[str] | None = None) -> str:
        """A Markdown table of IoU per class (percent), then mIoU and pixel accuracy.

        Args:
            class_names: names to print instead of ``self.class_names`` (same count).
        """
        names = list(class_names) if class_names is not None else list(self.class_names)
        if len(names) != len(self.class_names):
            raise AttnGuideError(
                f"to_markdown got {len(names)} class names for {len(self.class_names)} classes"
            )

        def percent(value: float) -> str:
            return "n/a" if np.isnan(value) else f"{100 * value:.2f}"

        rows = ["| class | IoU (%) |", "|---|---|"]
        rows += [f"| {name} | {percent(iou)} |" for name, iou in zip(names, self.per_class_iou)]
        rows.append(f"| **mIoU** | **{percent(self.miou)}** |")
        rows.append(f"| pixel accuracy | {percent(self.pixel_accuracy)} |")
        return "\n".join(rows)


class ConfusionMatrix:
    """Accumulates :func:`confusion_matrix` over a set of label maps.

    Example:
        >>> acc = ConfusionMatrix(["background", "cat"])
        >>> acc.update(np.array([[0, 1]]), np.array([[0, 1]]))
        >>> acc.metrics().miou
        1.0
    """

    def __init__(self, class_names: Sequence[str]) -> None:
        if len(class_names) < 2:
            raise AttnGuideError(
                f"need at least 2 class names (background first), got {list(class_names)}"
            )
        self.class_names = tuple(class_names)
        n = len(self.class_names)
        self.confusion = np.zeros((n, n), dtype=np.int64)

    def update(self, pred: np.ndarray, gt: np.ndarray) -> None:
        """Add one ``(H, W)`` prediction and its ground truth."""
        self.confusion += confusion_matrix(pred, gt, len(self.class_names))

    def metrics(self) -> SegMetrics:
        return SegMetrics(self.confusion.copy(), self.class_names)


def _missing_message(pred_dir: Path, missing: list[str], total: int) -> str:
    shown = ", ".join(missing[:_SHOW])
    more = f" (and {len(missing) - _SHOW} more)" if len(missing) > _SHOW else ""
    return (
        f"prediction folder {str(pred_dir)!r} lacks {len(missing)} of {total} label maps: "
        f"{shown}{more}. Predict the whole split, or pass (name, gt_path) pairs for the "
        "subset you want to evaluate."
    )


def evaluate_folders(
    pred_dir: str | os.PathLike,
    gt: str | os.PathLike | Sequence[tuple[str, str | os.PathLike]],
    class_names: Sequence[str],
) -> SegMetrics:
    """Evaluate the label-map PNGs of ``pred_dir`` against ground-truth PNGs.

    Args:
        pred_dir: folder with one ``<name>.png`` label map per image.
        gt: either a folder of ground-truth ``<name>.png`` (every one of them is
            evaluated), or ``(name, gt_path)`` pairs (a split list); the
            prediction of ``name`` is ``pred_dir/<name>.png``.
        class_names: ``N`` names, background first (21 for VOC).

    Returns:
        :class:`SegMetrics` of the whole set.

    Raises:
        FileNotFoundError: a folder or ground-truth file does not exist.
        AttnGuideError: predictions are missing (the first names and the
            count are listed), a file is not a label map, sizes differ, or a
            file holds a label value >= N.
    """
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise FileNotFoundError(f"prediction folder {str(pred_dir)!r} does not exist")
    if isinstance(gt, (str, os.PathLike)):
        gt_dir = Path(gt)
        if not gt_dir.is_dir():
            raise FileNotFoundError(f"ground-truth folder {str(gt_dir)!r} does not exist")
        pairs = [(path.stem, path) for path in sorted(gt_dir.glob("*.png"))]
        if not pairs:
            raise AttnGuideError(f"ground-truth folder {str(gt_dir)!r} holds no .png label maps")
    else:
        pairs = [(str(name), Path(path)) for name, path in gt]
        if not pairs:
            raise AttnGuideError("evaluate_folders got an empty list of (name, gt_path) pairs")

    missing = [name for name, _ in pairs if not (pred_dir / f"{name}.png").is_file()]
    if missing:
        raise AttnGuideError(_missing_message(pred_dir, missing, len(pairs)))

    accumulator = ConfusionMatrix(class_names)
    n = len(accumulator.class_names)
    for name, gt_path in pairs:
        pred_path = pred_dir / f"{name}.png"
        pred, truth = load_label_png(pred_path), load_label_png(gt_path)
        if pred.shape != truth.shape:
            raise AttnGuideError(
                f"prediction {str(pred_path)!r} is {pred.shape} but ground truth "
                f"{str(gt_path)!r} is {truth.shape}; predict at the original image size"
            )
        _check_values(pred, n, f"prediction {str(pred_path)!r}", allow_ignore=False)
        _check_values(truth, n, f"ground truth {str(gt_path)!r}", allow_ignore=True)
        accumulator.confusion += _count(pred, truth, n)
    return accumulator.metrics()
