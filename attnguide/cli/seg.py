"""The segmentation commands of the ``attnguide`` command line.

``register(app)`` adds them to the main typer app (``attnguide.cli.main``)::

    attnguide pseudo-label RUN --data PATH --split train --out DIR [--scales 1.0,0.5,1.5,2.0]
                           [--flip] [--bg threshold:0.15 | --bg power:4] [--crf] [--workers N] [--resume]
    attnguide segment --data PATH --labels DIR --arch deeplabv3plus --encoder resnet50 --out RUN ...
                      [--mode sec --fg-fraction 0.2 --bg-threshold 0.05 --constrain-weight 1]
    attnguide evaluate --pred DIR --data PATH --split val [--json FILE] [--markdown FILE]
    attnguide predict RUN --images DIR_OR_FILES --out DIR [--overlay]

The options of ``pseudo-label`` and ``segment`` are generated from
:class:`~attnguide.tasks.pseudo_label.PseudoLabelConfig` and
:class:`~attnguide.tasks.segment.SegmentConfig` (one option per field, help
from the field's comment). Bad input raises AttnGuideError; ``attnguide.cli.main.main``
prints it as one red line and exits with code 2.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from pathlib import Path
from typing import Any

import typer

COMMANDS = ("pseudo-label", "segment", "evaluate", "predict")


# ---------------------------------------------------------------------- options from dataclasses


def _field_help(cls: type) -> tuple[dict[str, str], dict[str, str]]:
    """(field -> comment after its default, field -> section ``# --- name`` above it)."""
    names = {f.name for f in dataclasses.fields(cls)}
    helps, panels, current = {}, {}, "Options"
    for line in inspect.getsource(cls).splitlines():
        text = line.strip()
        if text.startswith("# ---"):
            current = text[5:].strip().capitalize()
            continue
        name = text.split(":", 1)[0].strip()
        if ":" in text and name in names and not text.startswith("#"):
            panels[name] = current
            if "#" in text:
                helps[name] = text.split("#", 1)[1].strip()
    return helps, panels


def _option_type(tp: Any) -> type:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    if typing.get_origin(tp) is tuple:
        return str  # "1.0,0.5,1.5,2.0"
    return tp


def _parameters(cls: type, skip: tuple[str, ...] = ()) -> list[inspect.Parameter]:
    """One keyword-only typer option per field of ``cls`` (default None = not given)."""
    from rich.markup import escape

    hints = typing.get_type_hints(cls)
    helps, panels = _field_help(cls)
    params = []
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        tp = _option_type(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        if isinstance(default, tuple):
            default = ",".join(str(v) for v in default)
        if tp is bool:
            decls = [f"{flag}/--no-{flag[2:]}"]
            shown = f" [default: {'on' if default else 'off'}]"
        else:
            decls = [flag]
            shown = "" if default in ("", None) else f" [default: {default}]"
        option = typer.Option(None, *decls, help=escape(helps.get(f.name, "") + shown), show_default=False,
                              rich_help_panel=panels.get(f.name, "Options"))
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY,
                                        annotation=tp | None, default=option))
    return params


def _given(options: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if v is not None}


def _console():
    from attnguide.engine.progress import make_console

    return make_console()


def _stdout():
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


def _setup_logging(quiet: bool) -> None:
    from attnguide.cli.main import setup_logging

    setup_logging(quiet)


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
    from attnguide.tasks.pseudo_label import PseudoLabelConfig, pseudo_label

    cfg = PseudoLabelConfig(**_given(options))
    cfg.validate()
    _setup_logging(cfg.quiet)
    console = _console()
    result = pseudo_label(cfg, console=console)
    if not cfg.quiet:
        parts = [f"{result.written} pseudo labels written to {result.out}"]
        if result.skipped:
            parts.append(f"{result.skipped} skipped (done)")
        if result.written:
            parts.append(f"{result.images_per_s:.1f} images/s")
        if result.metrics is not None:
            parts.append(f"mIoU {100 * result.metrics.miou:.2f}")
            if result.crf_metrics is not None:
                parts.append(f"with CRF {100 * result.crf_metrics.miou:.2f}")
        console.print(", ".join(parts), soft_wrap=True)


def _pseudo_label_signature() -> inspect.Signature:
    from attnguide.tasks.pseudo_label import PseudoLabelConfig

    run = inspect.Parameter("run", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=str,
                            default=typer.Argument(..., metavar="RUN", help="classifier run folder or checkpoint of "
                                                   "'attnguide train'", show_default=False))
    return inspect.Signature([run, *_parameters(PseudoLabelConfig, skip=("run",))])


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
    from attnguide.engine.progress import Reporter
    from attnguide.tasks.segment import config_from_options, segment

    cfg = config_from_options(options)
    _setup_logging(cfg.quiet)
    result = segment(cfg, Reporter(_console(), quiet=cfg.quiet))
    if not cfg.quiet:
        import os

        if int(os.environ.get("RANK", "0")) == 0:
            best = "" if result.best_value is None else f" (val mIoU {100 * result.best_value:.2f})"
            _console().print(f"run saved in {result.run_dir}: last.pt, best.pt{best}, metrics.jsonl",
                             soft_wrap=True)


def _segment_signature() -> inspect.Signature:
    from attnguide.tasks.segment import SegmentConfig

    return inspect.Signature(_parameters(SegmentConfig))


# ---------------------------------------------------------------------- evaluate


def evaluate_command(
    pred: Path = typer.Option(..., "--pred", help="folder of predicted label-map PNGs (<name>.png)"),
    data: str | None = typer.Option(None, "--data", help="data set folder: ground truth of --split (and class names)"),
    split: str = typer.Option("val", "--split", help="split whose masks are the ground truth"),
    gt: Path | None = typer.Option(None, "--gt", help="folder of ground-truth PNGs instead of a data set split"),
    classes: str | None = typer.Option(None, "--classes", help="with --gt: classes.txt or 'cat,dog' (background excluded)"),
    json_file: Path | None = typer.Option(None, "--json", help="write the metrics as JSON here"),
    markdown: Path | None = typer.Option(None, "--markdown", help="write the IoU table as Markdown here"),
) -> None:
    """mIoU of a folder of predicted label maps against a split's masks (or a GT folder).

    Prints a per-class IoU table; --json writes miou, pixel_accuracy,
    per_class (name -> IoU), confusion and class_names.

    Example:

      attnguide evaluate --pred preds/val --data data/scenes --split val --json val.json
    """
    from attnguide.io.atomic import atomic_write
    from attnguide.tasks.common import metrics_table, write_json
    from attnguide.tasks.evaluate import evaluate_predictions

    metrics = evaluate_predictions(pred, data=data, split=split, gt=None if gt is None else str(gt),
                                   classes=classes)
    where = f"split {split!r}" if gt is None else str(gt)
    _stdout().print(metrics_table({"": metrics}, title=f"{pred} vs {where}"))
    if json_file is not None:
        write_json(json_file, {**metrics.to_json(), "pred": str(pred),
                               "ground_truth": str(gt) if gt is not None else {"data": data, "split": split}})
    if markdown is not None:
        atomic_write(markdown, (metrics.to_markdown() + "\n").encode())


# ---------------------------------------------------------------------- predict


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
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1, ..."),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bar"),
) -> None:
    """Label maps (and colour overlays) of a trained segmenter for a folder of images.

    Examples:

      attnguide predict runs/seg --images photos/ --out preds --overlay

      attnguide predict runs/seg --data data/scenes --split val --out preds/val
    """
    from attnguide.tasks.predict import predict

    _setup_logging(quiet)
    written = predict(run, out, images=images or None, data=data, split=split, overlay=overlay, crf=crf,
                      crf_params=crf_params, workers=workers, device=device, quiet=quiet,
                      console=_console())
    if not quiet:
        _console().print(f"{len(written)} label maps written to {out}", soft_wrap=True)


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
