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

The one implementation of the matrix and the IoU is here, in torch
(``torch.bincount`` over ``N * gt + pred``, on the inputs' device); numpy
arrays are accepted and numpy comes back, so the training loop (tensors on the
GPU) and the folder evaluation (PNG files) count the same way. The test suite
checks the matrix equals torchmetrics' (``ignore_index=255``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

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
_TORCH_INTS = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def _as_labels(label: np.ndarray | Tensor, what: str) -> Tensor:
    """``label`` as an integer tensor (numpy shares memory); refuse float or bool labels."""
    if isinstance(label, Tensor):
        if label.dtype not in _TORCH_INTS:
            dtype = str(label.dtype).removeprefix("torch.")
            raise AttnGuideError(
                f"{what} must hold integer class indices, got dtype {dtype}; "
                "take the argmax over class scores first"
            )
        return label
    label = np.asarray(label)
    if not np.issubdtype(label.dtype, np.integer):
        raise AttnGuideError(
            f"{what} must hold integer class indices, got dtype {label.dtype}; "
            "take the argmax over class scores first"
        )
    if label.dtype not in (np.uint8, np.int8, np.int16, np.int32, np.int64):
        label = label.astype(np.int64)  # uint16/32/64: no torch.bincount for them
    return torch.from_numpy(np.ascontiguousarray(label))


def _check_values(label: Tensor, num_classes: int, what: str, allow_ignore: bool) -> None:
    """Raise if ``label`` holds a value < 0 or >= num_classes (other than 255 where allowed)."""
    info = torch.iinfo(label.dtype)  # compare only with scalars the dtype holds
    bad = label >= num_classes if num_classes <= info.max else torch.zeros_like(label, dtype=bool)
    if info.min < 0:
        bad |= label < 0
    if allow_ignore and IGNORE <= info.max:
        bad &= label != IGNORE
    if not bool(bad.any()):  # one elementwise pass; the values are looked up only on error
        return
    values = torch.unique(label[bad]).tolist()
    allowed = f"0..{num_classes - 1}" + (" and 255 (ignore)" if allow_ignore else "")
    hint = (
        "predictions must give every pixel a class (255 is for ground truth only)"
        if IGNORE in values and not allow_ignore
        else "check class_names (background included) or the files"
    )
    raise AttnGuideError(
        f"{what} has label values {values[:_SHOW]} but there are {num_classes} "
        f"classes, so only {allowed} are valid; {hint}"
    )


def _count(pred: Tensor, gt: Tensor, num_classes: int) -> Tensor:
    """``bincount`` of ``N * gt + pred`` over pixels with ``gt != 255``, as ``(N, N)`` int64.

    Ignored pixels go to an extra bin ``N * N`` that is cut off: cheaper than
    selecting the valid pixels first (a boolean gather).
    """
    n2 = num_classes**2
    index = gt.to(torch.int32 if n2 < 2**31 else torch.int64) * num_classes + pred  # (...)
    if IGNORE <= torch.iinfo(gt.dtype).max:
        index.masked_fill_(gt == IGNORE, n2)
    return torch.bincount(index.reshape(-1), minlength=n2 + 1)[:n2].view(num_classes, num_classes)


def _confusion(pred, gt, num_classes: int, pred_what: str, gt_what: str) -> Tensor:
    """Checked :func:`_count` of integer labels (tensors or arrays), as a tensor.

    A numpy input joins the other input's device, so a GPU batch is counted on the GPU.
    """
    pred = pred if isinstance(pred, Tensor) else np.asarray(pred)
    gt = gt if isinstance(gt, Tensor) else np.asarray(gt)
    if tuple(pred.shape) != tuple(gt.shape):
        raise AttnGuideError(
            f"{pred_what} shape {tuple(pred.shape)} differs from {gt_what} {tuple(gt.shape)}")
    device = pred.device if isinstance(pred, Tensor) else gt.device if isinstance(
        gt, Tensor) else None
    pred_t = _as_labels(pred, pred_what).to(device)
    gt_t = _as_labels(gt, gt_what).to(device)
    _check_values(pred_t, num_classes, pred_what, allow_ignore=False)
    _check_values(gt_t, num_classes, gt_what, allow_ignore=True)
    return _count(pred_t, gt_t, num_classes)


def confusion_matrix(pred: np.ndarray | Tensor, gt: np.ndarray | Tensor,
                     num_classes: int) -> np.ndarray | Tensor:
    """Confusion matrix of one prediction (or a batch), ``int64 (num_classes, num_classes)``.

    Args:
        pred: ``(H, W)`` (or any shape) predicted labels in ``0..num_classes-1``.
        gt: the ground truth, same shape, in ``0..num_classes-1`` or 255 (skipped).
        num_classes: ``N``, background included.

    Returns:
        ``M`` with ``M[i, j]`` = pixels of ground truth ``i`` predicted ``j``: a tensor
        (on the inputs' device) if either input is a tensor, else a numpy array.
    """
    matrix = _confusion(pred, gt, num_classes, "prediction", "ground truth")
    tensors = isinstance(pred, Tensor) or isinstance(gt, Tensor)
    return matrix if tensors else matrix.numpy()


def iou_from_confusion(confusion: np.ndarray | Tensor) -> np.ndarray | Tensor:
    """Per-class IoU ``(N,)`` float64; NaN for classes absent from GT and prediction.

    A tensor gives a tensor (same device), anything else a numpy array.
    """
    matrix = (confusion if isinstance(confusion, Tensor)
              else torch.from_numpy(np.ascontiguousarray(confusion))).double()
    true_positive = matrix.diag()
    union = matrix.sum(0) + matrix.sum(1) - true_positive
    iou = torch.where(union > 0, true_positive / union.clamp_min(1),
                      torch.full_like(true_positive, float("nan")))
    return iou if isinstance(confusion, Tensor) else iou.numpy()


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
        accumulator.confusion += _confusion(
            pred, truth, n, f"prediction {str(pred_path)!r}", f"ground truth {str(gt_path)!r}"
        ).numpy()
    return accumulator.metrics()
