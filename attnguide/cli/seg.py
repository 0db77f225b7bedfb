"""The segmentation commands of the ``attnguide`` command line.

``register(app)`` adds them to the main typer app (``attnguide.cli.main``)::

    attnguide pseudo-label RUN --data PATH --split train --out DIR [--scales 1.0,0.5,1.5,2.0]
                           [--flip] [--bg threshold:0.15 | --bg power:4] [--crf] [--workers N] [--resume]
    attnguide segment --data PATH --labels DIR --arch deeplabv3plus --encoder resnet50 --out RUN ...
                      [--mode sec --fg-fraction 0.2 --bg-threshold 0.05 --constrain-weight 1]
    attnguide evaluate --pred DIR --data PATH --split val [--json FILE] [--markdown FILE]
    attnguide evaluate --run RUN --data PATH --split test [--json FILE]
    attnguide predict RUN --images DIR_OR_FILES --out DIR [--overlay] [--resume]

The options of ``pseudo-label`` and ``segment`` are generated from
:class:`~attnguide.tasks.pseudo_labels.PseudoLabelConfig` and
:class:`~attnguide.engine.segment_config.SegmentConfig` by
:func:`attnguide.engine.options.typer_parameters` (one option per field, help from the
field's comment, ``--config FILE`` with the precedence of ``train``). Bad input raises AttnGuideError; ``attnguide.cli.main.main``
prints it as one red line and exits with code 2.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

import typer

from attnguide.cli.common import console, setup_logging, stdout, with_config
from attnguide.engine.options import from_command_line, typer_parameters
from attnguide.engine.progress import Reporter
from attnguide.engine.segment_config import SegmentConfig, config_from_options
from attnguide.errors import AttnGuideError
from attnguide.io.atomic import atomic_write
from attnguide.tasks.common import metrics_table, write_json
from attnguide.tasks.evaluate import (
    classifier_markdown,
    classifier_table,
    evaluate_classifier,
    evaluate_predictions,
)
from attnguide.tasks.prediction import predict
from attnguide.tasks.pseudo_labels import PseudoLabelConfig, pseudo_label
from attnguide.tasks.segmentation import segment

COMMANDS = ("pseudo-label", "segment", "evaluate", "predict")


def _given(options: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if v is not None}


# ---------------------------------------------------------------------- pseudo-label


def pseudo_label_command(**options: Any) -> None:
    """Pseudo labels from a trained classifier's CAMs (multi-scale + flip, background rule, dense CRF).

    Writes OUT/<name>.png (VOC palette), with --crf OUT/crf/<name>.png, with
    --save-cams OUT/cams/<name>.npz, and, when the split has masks, the mIoU
    with and without CRF to OUT/metrics.json.

    Examples:

      attnguide pseudo-label runs/ext --data data/scenes --split train --out pseudo/ext --crf --workers 2

      attnguide pseudo-label runs/ext --data data/scenes --out pseudo/ext --bg power:4 --resume
    """
    config_file = options.pop("config", None)
    cfg = from_command_line(PseudoLabelConfig, options, config_file)
    cfg.validate()
    setup_logging(cfg.quiet)
    out = console()
    result = pseudo_label(cfg, console=out)
    if not cfg.quiet and int(os.environ.get("RANK", "0")) == 0:  # torchrun: one line, rank 0
        parts = [f"{result.written} pseudo labels written to {result.out}"]
        if result.skipped:
            parts.append(f"{result.skipped} skipped (done)")
        if result.written:
            parts.append(f"{result.images_per_s:.1f} images/s")
        if result.metrics is not None:
            parts.append(f"mIoU {100 * result.metrics.miou:.2f}")
            if result.crf_metrics is not None:
                parts.append(f"with CRF {100 * result.crf_metrics.miou:.2f}")
        out.print(", ".join(parts), soft_wrap=True)


def _pseudo_label_signature() -> inspect.Signature:
    return inspect.Signature(typer_parameters(PseudoLabelConfig))


# ---------------------------------------------------------------------- segment


def segment_command(**options: Any) -> None:
    """Train a segmenter on pseudo labels (or on the ground truth with --labels gt).

    Any segmentation-models-pytorch architecture and encoder (timm encoders as
    tu-NAME), or deeplab-largefov (DeepLab v1, VGG16). Random scale, crop and
    flip; label 255 ignored; poly or step LR; val mIoU after every epoch.
    --mode sec trains with SEC's seed, expand and constrain losses on the CAMs
    of 'pseudo-label --save-cams' instead (GAIN's segmentation stage).

    Examples:

      attnguide segment --data data/scenes --labels pseudo/ext/crf --arch deeplabv3plus --encoder resnet50 --out runs/seg

      attnguide segment --data data/scenes --labels gt --arch deeplab-largefov --weights vgg16.pth --iterations 8000 --out runs/upper

      attnguide segment --mode sec --data data/scenes --labels pseudo/ext --arch deeplab-largefov --weights vgg16.pth --out runs/sec

      attnguide segment --resume runs/seg --epochs 20
    """
    config_file = options.pop("config", None)
    cfg = config_from_options(options, config_file)
    setup_logging(cfg.quiet)
    result = segment(cfg, Reporter(console(), quiet=cfg.quiet))
    if not cfg.quiet:
        if int(os.environ.get("RANK", "0")) == 0:
            best = "" if result.best_value is None else f" (val mIoU {100 * result.best_value:.2f})"
            console().print(f"run saved in {result.run_dir}: last.pt, best.pt{best}, metrics.jsonl",
                             soft_wrap=True)


def _segment_signature() -> inspect.Signature:
    return inspect.Signature(typer_parameters(SegmentConfig))


# ---------------------------------------------------------------------- evaluate


@with_config("evaluate")
def evaluate_command(
    pred: Path | None = typer.Option(None, "--pred", help="folder of predicted label-map PNGs (<name>.png)"),
    run: str | None = typer.Option(None, "--run", help="instead of --pred: a trained classifier (run folder, checkpoint, model folder) to score on --data --split: accuracy, mAP, CAM mIoU, worst-group"),
    data: str | None = typer.Option(None, "--data", help="data set folder: ground truth of --split (and class names)"),
    split: str = typer.Option("val", "--split", help="split whose masks are the ground truth"),
    gt: Path | None = typer.Option(None, "--gt", help="folder of ground-truth PNGs instead of a data set split"),
    classes: str | None = typer.Option(None, "--classes", help="with --gt: classes.txt or 'cat,dog' (background excluded)"),
    json_file: Path | None = typer.Option(None, "--json", help="write the metrics as JSON here"),
    markdown: Path | None = typer.Option(None, "--markdown", help="write the IoU table as Markdown here"),
    device: str = typer.Option("auto", "--device", help="with --run: auto, cpu, cuda, cuda:1, ..."),
    threshold: str = typer.Option("auto", "--threshold", help="with --run, multi-label: the decision threshold of exact-match and group accuracy; auto: the one the run chose on its validation split (0.5 without one)"),
) -> None:
    """mIoU of a folder of predicted label maps against a split's masks (or a GT folder), or
    with --run the metrics of a trained classifier on a split.

    Prints a per-class IoU table; --json writes miou, pixel_accuracy,
    per_class (name -> IoU), confusion and class_names. With --run: accuracy, mAP, CAM mIoU
    and worst-group / mean per-group accuracy over the (class, bias) groups of groups.csv
    (or the scenes' backgrounds). Multi-label exact match and group accuracy apply the
    decision threshold the run chose on its validation split (--threshold auto), so a
    classifier whose probabilities sit low is not scored at 0.5.

    Examples:

      attnguide evaluate --pred preds/val --data data/scenes --split val --json val.json

      attnguide evaluate --run runs/ext --data data/birds --split test --json test.json
    """
    if run is not None:
        _evaluate_classifier_command(run, pred, gt, data, split, device, json_file, markdown, threshold)
        return
    if threshold != "auto":
        raise AttnGuideError("--threshold is the decision threshold of a classifier: it goes with --run RUN, "
                             "not with --pred (label maps have no threshold)")
    if pred is None:
        raise AttnGuideError("missing --pred: pass --pred DIR (predicted label maps) or --run RUN (a trained "
                             "classifier), on the command line or in the --config file")
    metrics = evaluate_predictions(pred, data=data, split=split, gt=None if gt is None else str(gt),
                                   classes=classes)
    where = f"split {split!r}" if gt is None else str(gt)
    stdout().print(metrics_table({"": metrics}, title=f"{pred} vs {where}"))
    if json_file is not None:
        write_json(json_file, {**metrics.to_json(), "pred": str(pred),
                               "ground_truth": str(gt) if gt is not None else {"data": data, "split": split}})
    if markdown is not None:
        atomic_write(markdown, (metrics.to_markdown() + "\n").encode())


def _evaluate_classifier_command(run, pred, gt, data, split, device, json_file, markdown, threshold) -> None:
    if pred is not None or gt is not None:
        raise AttnGuideError("--run scores a classifier on --data --split; drop --pred / --gt (or drop --run)")
    if data is None:
        raise AttnGuideError("--run needs --data PATH (and --split NAME) to score the classifier on")
    metrics = evaluate_classifier(run, data, split, device=device, threshold=threshold)
    stdout().print(classifier_table(metrics, title=f"{run} on split {split!r} of {data}"))
    if json_file is not None:
        write_json(json_file, metrics)
    if markdown is not None:
        atomic_write(markdown, classifier_markdown(metrics).encode())


# ---------------------------------------------------------------------- predict


@with_config("predict")
def predict_command(
    run: str = typer.Argument(..., metavar="RUN", help="segmenter run folder or checkpoint of 'attnguide segment'", show_default=False),
    out: Path = typer.Option(..., "--out", help="output folder: <name>.png, overlay/<name>.png, crf/<name>.png"),
    images: list[Path] | None = typer.Option(None, "--images", help="image folder or file (repeat for several)"),
    data: str | None = typer.Option(None, "--data", help="predict a data set split instead (names = sample names)"),
    split: str = typer.Option("val", "--split", help="with --data: the split"),
    overlay: bool = typer.Option(False, "--overlay/--no-overlay", help="also write colour overlays to OUT/overlay/"),
    crf: bool = typer.Option(False, "--crf/--no-crf", help="also write dense-CRF post-processed maps to OUT/crf/"),
    crf_params: str = typer.Option("deeplab", "--crf-params", help="CRF preset irn, psa or deeplab, then overrides"),
    workers: int = typer.Option(0, "--workers", help="CRF worker processes"),
    resume: bool = typer.Option(False, "--resume/--no-resume", help="skip images whose output files exist (same segmenter and CRF options)"),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1, ..."),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bar"),
) -> None:
    """Label maps (and colour overlays) of a trained segmenter for a folder of images.

    Writes OUT/predict.json (counts, time, settings). Under torchrun each process
    predicts its share of the images.

    Examples:

      attnguide predict runs/seg --images photos/ --out preds --overlay

      attnguide predict runs/seg --data data/scenes --split val --out preds/val --resume
    """
    setup_logging(quiet)
    written = predict(run, out, images=images or None, data=data, split=split, overlay=overlay, crf=crf,
                      crf_params=crf_params, workers=workers, resume=resume, device=device, quiet=quiet,
                      console=console())
    if not quiet and int(os.environ.get("RANK", "0")) == 0:  # torchrun: one line, rank 0
        skipped = f", {written.skipped} skipped (done)" if written.skipped else ""
        console().print(f"{len(written)} label maps written to {out}{skipped}", soft_wrap=True)


# ---------------------------------------------------------------------- registration


def register(app: typer.Typer) -> None:
    """Add ``pseudo-label``, ``segment``, ``evaluate`` and ``predict`` to ``app`` (idempotent)."""
    have = {c.name for c in app.registered_commands}
    pseudo_label_command.__signature__ = _pseudo_label_signature()  # type: ignore[attr-defined]
    segment_command.__signature__ = _segment_signature()  # type: ignore[attr-defined]
    for name, fn in (("pseudo-label", pseudo_label_command), ("segment", segment_command),
                     ("evaluate", evaluate_command), ("predict", predict_command)):
        if name not in have:
            app.command(name=name)(fn)
