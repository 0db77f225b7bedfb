"""``attnguide evaluate``: mIoU of a folder of predicted label maps.

Ground truth comes from a data set split (``data`` + ``split``: every image
of the split that has a mask; predictions are ``PRED/<sample name>.png``) or
from a folder of ground-truth PNGs (``gt``: every ``GT/**/*.png``; the
prediction of ``GT/a/b.png`` is ``PRED/a/b.png``), with class names from
``data`` or ``classes``.

The confusion matrix, IoU and mIoU are :mod:`attnguide.wsss.evaluate`'s
(``numpy.bincount``, checked equal to torchmetrics' multiclass confusion
matrix with ``ignore_index=255`` by the seg tests): 255 in the ground truth is
ignored; a class absent from both ground truth and predictions is left out of
the mean.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from attnguide.constants import BACKGROUND
from attnguide.data import open_dataset
from attnguide.data.segmentation import label_path
from attnguide.errors import AttnGuideError
from attnguide.io.labels import load_label_png
from attnguide.wsss.evaluate import ConfusionMatrix, SegMetrics

_SHOW = 10


def _read_class_file(spec: str) -> list[str]:
    path = Path(spec)
    if path.is_file():
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        names = [n.strip() for n in spec.split(",") if n.strip()]
    if not names:
        raise AttnGuideError(f"--classes {spec!r} names no class; give a classes.txt or 'cat,dog'")
    return names


def ground_truth_pairs(data: str | None = None, split: str = "val", gt: str | None = None,
                       classes: str | Sequence[str] | None = None) -> tuple[list[tuple[str, Path]], list[str]]:
    """``(name, gt_path)`` pairs and the class names (background first)."""
    names: list[str] | None = None
    if isinstance(classes, str):
        names = _read_class_file(classes)
    elif classes is not None:
        names = list(classes)
    if gt is not None:
        gt_dir = Path(gt)
        if not gt_dir.is_dir():
            raise FileNotFoundError(f"ground-truth folder {str(gt_dir)!r} does not exist")
        pairs = [(p.relative_to(gt_dir).with_suffix("").as_posix(), p) for p in sorted(gt_dir.rglob("*.png"))]
        if not pairs:
            raise AttnGuideError(f"ground-truth folder {str(gt_dir)!r} holds no .png label maps")
        if names is None:
            if data is None:
                raise AttnGuideError("with --gt, name the classes: --data PATH (its classes.txt) or "
                                     "--classes FILE_OR_LIST")
            names = list(open_dataset(data, split, train=False, require_labels=False).class_names)
        if names and names[0].lower() == BACKGROUND:
            names = names[1:]
        return pairs, [BACKGROUND, *names]
    if data is None:
        raise AttnGuideError("pass the ground truth: --data PATH --split NAME, or --gt DIR")
    ds = open_dataset(data, split, train=False, require_labels=False)
    pairs = [(s.name, s.mask_path) for s in ds.samples if s.mask_path is not None]
    if not pairs:
        raise AttnGuideError(f"split {split!r} of {ds.root} has no masks to evaluate against; "
                             "pick a split with masks (e.g. val)")
    if names is not None and names != list(ds.class_names):
        raise AttnGuideError(f"--classes {names} differ from the data set's {ds.class_names}")
    return pairs, [BACKGROUND, *ds.class_names]


def evaluate_predictions(pred: str | os.PathLike, data: str | None = None, split: str = "val",
                         gt: str | None = None, classes=None) -> SegMetrics:
    """:class:`~attnguide.wsss.evaluate.SegMetrics` of the label maps in ``pred``.

    Raises:
        FileNotFoundError: ``pred`` or the ground truth is missing.
        AttnGuideError: predictions missing (named), a PNG that is not a label
            map (named), a size mismatch, or label values beyond the classes.
    """
    pred_dir = Path(pred)
    if not pred_dir.is_dir():
        raise FileNotFoundError(f"prediction folder {str(pred_dir)!r} does not exist")
    pairs, names = ground_truth_pairs(data, split, gt, classes)
    files = [(name, label_path(pred_dir, name), gt_path) for name, gt_path in pairs]
    missing = [name for name, path, _ in files if not path.is_file()]
    if missing:
        shown = ", ".join(missing[:_SHOW]) + (f" (and {len(missing) - _SHOW} more)" if len(missing) > _SHOW else "")
        raise AttnGuideError(
            f"prediction folder {str(pred_dir)!r} lacks {len(missing)} of the {len(files)} label maps: "
            f"{shown}; predict the whole split (e.g. attnguide predict RUN --data PATH --split "
            f"{split} --out {pred_dir})")
    confusion = ConfusionMatrix(names)
    for _, path, gt_path in files:
        label = load_label_png(path)  # names the file when it is not a label map
        truth = load_label_png(gt_path)
        if label.shape != truth.shape:
            raise AttnGuideError(
                f"prediction {str(path)!r} is {label.shape[1]}x{label.shape[0]} but its ground truth "
                f"{str(gt_path)!r} is {truth.shape[1]}x{truth.shape[0]}; predict at the image's size")
        values = np.flatnonzero(np.bincount(label.ravel(), minlength=256))
        bad = [int(v) for v in values if v >= len(names)]
        if bad:
            raise AttnGuideError(
                f"prediction {str(path)!r} is not a label map of these {len(names)} classes: it holds "
                f"values {bad[:_SHOW]} (valid: 0..{len(names) - 1}); was it made for another data set?")
        try:
            confusion.update(label, truth)
        except AttnGuideError as err:
            raise AttnGuideError(f"{path} vs {gt_path}: {err}") from None
    return confusion.metrics()
