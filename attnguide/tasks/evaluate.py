"""``attnguide evaluate``: mIoU of a folder of predicted label maps, or the metrics of a
trained classifier on a split (:func:`evaluate_classifier`: accuracy, mAP, CAM mIoU and the
worst-group / mean per-group accuracy of :mod:`attnguide.data.groups`' groups).

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
from attnguide.engine.distributed import resolve_device
from attnguide.engine.trainer import evaluate
from attnguide.errors import AttnGuideError
from attnguide.io.labels import load_label_png
from attnguide.models.trained import load_model
from attnguide.tasks.common import check_class_lists
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


CLASSIFIER_KEYS = ("accuracy", "map", "cam_miou", "attention_inside", "worst_group_accuracy",
                   "mean_group_accuracy", "groups", "decision_threshold")
"""What :func:`evaluate_classifier` reports first (the engine's ``val_`` names without it)."""


def evaluate_classifier(run: str | os.PathLike, data: str | os.PathLike, split: str = "test", *,
                        batch_size: int = 32, device: str = "auto", prefer: str = "best",
                        cam_threshold: float | None = None, workers: int = 0,
                        threshold: float | str = "auto") -> dict:
    """The engine's evaluation of a trained classifier on a data set split.

    Args:
        run: run folder (``best.pt``, else ``last.pt``; see ``prefer``), checkpoint or model
            folder of ``attnguide train`` / ``export``.
        data: the data set folder. split: the split to score.
        cam_threshold: background score of CAM mIoU (default: the run's ``cam_threshold``).
        threshold: multi-label decision threshold (a probability) of ``accuracy`` (exact
            match) and the group metrics; ``"auto"``: the one the run chose on its validation
            split (:attr:`TrainedModel.decision_threshold`), 0.5 when it has none.

    Returns:
        ``accuracy``, ``map`` and ``decision_threshold`` (multi-label), ``loss``, on images with masks ``cam_miou``,
        ``cam_iou``, ``attention_inside``, ``attention_area``, and with groups
        (``groups.csv``, the scenes' attributes) ``worst_group_accuracy``,
        ``mean_group_accuracy``, ``groups`` and ``group_accuracy`` {class: {bias: acc}};
        plus ``run``, ``checkpoint``, ``data``, ``split``, ``images``.
    """
    if prefer not in ("best", "last"):
        raise AttnGuideError(f"prefer must be 'best' or 'last', got {prefer!r}")
    torch_device = resolve_device(device)
    trained = load_model(run, device=torch_device, prefer=prefer)
    ds = open_dataset(data, split, image_size=trained.image_size, train=False,
                      mode="multi" if trained.multilabel else "single")
    check_class_lists(trained.class_names, ds.class_names, f"the model {trained.checkpoint}",
                      f"{ds.root}")
    cam = cam_threshold if cam_threshold is not None else float(trained.config.get("cam_threshold", 0.15))
    if not 0 <= cam <= 1:
        raise AttnGuideError(f"--cam-threshold must lie in [0, 1] (maps are min-max normalised), "
                             f"got {cam}")
    decision = decision_threshold(threshold, trained.decision_threshold)
    metrics = evaluate(trained.guide(), ds, multilabel=trained.multilabel, device=torch_device,
                       batch_size=batch_size, workers=workers, cam_threshold=cam,
                       group_table=True, threshold=decision)
    if trained.multilabel:
        metrics["decision_threshold"] = decision
    out = {key[4:] if key.startswith("val_") else key: value for key, value in metrics.items()}
    ordered = {key: out.pop(key) for key in CLASSIFIER_KEYS if key in out}
    return {**ordered, **out, "run": str(run), "checkpoint": trained.checkpoint, "data": str(data),
            "split": split, "images": len(ds)}


def decision_threshold(value: float | str, chosen: float | None) -> float:
    """A multi-label decision threshold from ``--threshold``: ``"auto"`` -> ``chosen`` (the
    run's, picked on its validation split) or 0.5 without one; else a probability in (0, 1)."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return 0.5 if chosen is None else float(chosen)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise AttnGuideError(f"--threshold takes 'auto' or a probability such as 0.5, got {value!r}") from None
    if not 0 < number < 1:
        raise AttnGuideError(f"--threshold must lie strictly between 0 and 1 (a sigmoid probability), got {value!r}")
    return number


def _pct(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{100 * value:.2f}"


def classifier_table(metrics: dict, title: str | None = None):
    """A rich renderable of :func:`evaluate_classifier`'s numbers (%), then the group
    accuracies as a class x bias grid."""
    from rich.console import Group
    from rich.table import Table

    table = Table(title=title, show_lines=False)
    table.add_column("metric")
    table.add_column("value (%)", justify="right")
    for key in CLASSIFIER_KEYS:
        if key in metrics:
            value = metrics[key]
            table.add_row(key.replace("_", " "), str(value) if key == "groups" else _pct(value))
    groups = metrics.get("group_accuracy")
    if not groups:
        return table
    biases = list(next(iter(groups.values())))
    grid = Table(title="group accuracy (%): class x bias attribute", show_lines=False)
    grid.add_column("class")
    for bias in biases:
        grid.add_column(bias, justify="right")
    for name, row in groups.items():
        grid.add_row(name, *[_pct(row[b]) for b in biases])
    return Group(table, grid)


def classifier_markdown(metrics: dict) -> str:
    """The metrics as a Markdown table, then the (class x bias) group accuracies (%)."""
    lines = ["| metric | value (%) |", "|---|---|"]
    lines += [f"| {key.replace('_', ' ')} | {metrics[key] if key == 'groups' else _pct(metrics[key])} |"
              for key in CLASSIFIER_KEYS if key in metrics]
    groups = metrics.get("group_accuracy")
    if groups:
        biases = list(next(iter(groups.values())))
        lines += ["", "| class | " + " | ".join(biases) + " |", "|---|" + "---|" * len(biases)]
        lines += [f"| {name} | " + " | ".join(_pct(row[b]) for b in biases) + " |"
                  for name, row in groups.items()]
    return "\n".join(lines) + "\n"
