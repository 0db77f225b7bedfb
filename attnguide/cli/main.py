"""The ``attnguide`` command line (typer). It parses options and calls the library.

Commands:
    attnguide train --data PATH --model NAME --guidance {none,self,ext,rrr,bg,swap,ext+rrr,...} ...
    attnguide data scenes OUT [--n-train N ...]
    attnguide data composite OUT --objects DIR --backgrounds DIR [--bias P ...]
    attnguide data box-masks DATA [--split train] [--inner 0.5] [--replace-masks]
    attnguide data point-masks DATA [--split train] [--radius 0.1] [--reach 0.5] [--replace-masks]

The options of ``train`` (and of ``pseudo-label`` and ``segment``) are generated
from their options dataclass (:class:`attnguide.engine.TrainConfig`; one option per
field, help from the field's comment, ``--config FILE`` for all of them, see
:mod:`attnguide.engine.options`), so the CLI, the config file and the library never
drift apart.

Adding a command is one small function on ``app`` (or on a sub-app such as
``data_app``) that calls the library::

    @app.command()
    def evaluate(run: Path = typer.Argument(..., help="run folder")) -> None:
        \"\"\"Evaluate a trained run.\"\"\"
        from attnguide.something import evaluate_run
        evaluate_run(run)

Bad input (``AttnGuideError``, a missing file, a non-finite loss) prints one
red line ``error: ...`` and exits with code 2; ``ATTNGUIDE_DEBUG=1`` shows the
traceback instead.
"""

from __future__ import annotations

import errno
import inspect
import os
import sys
from pathlib import Path
from typing import Any

import typer

from attnguide.cli import demo, export, seg, viz
from attnguide.cli.common import console, setup_logging, with_config
from attnguide.data import make_scenes
from attnguide.data.composite import make_composite
from attnguide.engine.config import TrainConfig, config_from_options
from attnguide.engine.options import typer_parameters
from attnguide.engine.progress import Reporter
from attnguide.errors import AttnGuideError
from attnguide.tasks.annotation_masks import make_box_masks, make_point_masks
from attnguide.tasks.training import train as run_training

try:  # typer < 0.20 runs on click; newer typer vendors its own copy
    import click

    _CLICK: tuple[type, ...] = (click.ClickException,)
    _EXIT: tuple[type, ...] = (click.exceptions.Exit,)
    _ABORT: tuple[type, ...] = (click.exceptions.Abort,)
except ImportError:  # pragma: no cover
    _CLICK, _EXIT, _ABORT = (), (), ()
_USAGE_ERRORS = (*_CLICK, *((typer.TyperException,) if hasattr(typer, "TyperException") else ()))
_EXIT = (*_EXIT, typer.Exit)
_ABORT = (*_ABORT, typer.Abort)

app = typer.Typer(
    name="attnguide",
    help="Trainable attention for any timm classifier (GAIN), and weakly-supervised segmentation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Make or inspect data sets.", no_args_is_help=True)
app.add_typer(data_app, name="data")

EXIT_BAD_INPUT = 2
EXPECTED_ERRORS = (AttnGuideError, OSError, FloatingPointError)


# ---------------------------------------------------------------------- train


def train(**options: Any) -> None:
    """Train a classifier with guided attention (GAIN) on a data set folder.

    Examples:

      attnguide data scenes data/scenes

      attnguide train --data data/scenes --model resnet18 --guidance ext --epochs 10 --out runs/ext

      attnguide train --resume runs/ext --epochs 20

      torchrun --nproc_per_node 2 -m attnguide train --data data/scenes --batch-size 64 ...
    """
    config_file = options.pop("config", None)
    cfg = config_from_options(options, config_file)
    setup_logging(cfg.quiet)
    result = run_training(cfg, Reporter(console(), quiet=cfg.quiet))
    if not cfg.quiet and int(os.environ.get("RANK", "0")) == 0:
        best = "" if result.best_value is None else f" ({result.best_metric} {result.best_value:.4f})"
        console().print(f"run saved in {result.run_dir}: last.pt, best.pt{best}, metrics.jsonl", soft_wrap=True)


train.__signature__ = inspect.Signature(typer_parameters(TrainConfig))  # type: ignore[attr-defined]
app.command(name="train")(train)


# ---------------------------------------------------------------------- data


@data_app.command("scenes")
@with_config("scenes")
def data_scenes(
    out: Path = typer.Argument(..., help="folder to write"),
    n_train: int = typer.Option(2000, help="training images (train_unbiased.csv has as many)"),
    n_val: int = typer.Option(300, help="validation images"),
    n_test: int = typer.Option(500, help="test images"),
    image_size: int = typer.Option(96, help="side S of the S x S images"),
    num_classes: int = typer.Option(5, help="object classes (class 0 is 'boat')"),
    min_objects: int = typer.Option(1, help="objects per image, at least"),
    max_objects: int = typer.Option(3, help="objects per image, at most (1 and 1: single-label)"),
    bias: str = typer.Option("background", help="shortcut in train: background, cue, both or none"),
    bias_strength: float = typer.Option(0.9, help="probability that a train image follows the shortcut"),
    colours: str = typer.Option("class", help="class: each class its own colour; shared: only the shape tells the class"),
    seed: int = typer.Option(0, help="same seed, same files"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace a scenes folder made with other settings"),
) -> None:
    """Write the built-in biased scenes data set (a folder data set with exact masks)."""
    path = make_scenes(out, n_train=n_train, n_val=n_val, n_test=n_test, image_size=image_size,
                       num_classes=num_classes, min_objects=min_objects, max_objects=max_objects,
                       bias=bias, bias_strength=bias_strength, colours=colours, seed=seed,
                       overwrite=overwrite)
    console().print(f"scenes data set written to {path} "
                     f"({n_train} train, {n_val} val, {n_test} test images, {image_size} px)", soft_wrap=True)


@data_app.command("composite")
@with_config("composite")
def data_composite(
    out: Path = typer.Argument(..., help="folder to write"),
    objects: Path = typer.Option(..., "--objects", help="folder of class sub-folders of RGBA cut-outs (alpha = mask)"),
    backgrounds: Path = typer.Option(..., "--backgrounds", help="folder of pool sub-folders of photos (one pool per bias attribute value)"),
    n_train: int = typer.Option(1000, help="training images (train_unbiased.csv has as many)"),
    n_val: int = typer.Option(200, help="validation images"),
    n_test: int = typer.Option(400, help="test images"),
    image_size: int = typer.Option(64, help="side S of the S x S images"),
    bias: float = typer.Option(0.95, help="probability that a train image's background comes from its class's pool"),
    min_objects: int = typer.Option(1, help="objects per image, at least"),
    max_objects: int = typer.Option(1, help="objects per image, at most (up to 3; 1 and 1: single-label)"),
    object_scale: tuple[float, float] = typer.Option((0.4, 0.7), help="an object's longer side, as shares of S (low high)"),
    held_out: float = typer.Option(0.3, help="share of each class's cut-outs (and each pool's photos) kept for val/test"),
    seed: int = typer.Option(0, help="same seed and inputs, same files"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace a composite folder made with other settings"),
) -> None:
    """Paste cut-outs on background photos (Waterbirds-style): a folder data set with exact masks,
    a background shortcut in train, and groups.csv (image, class, bias).

    Example:

      attnguide data composite data/birds --objects cutouts/ --backgrounds photos/ --bias 0.95
    """
    path = make_composite(out, objects=objects, backgrounds=backgrounds, n_train=n_train, n_val=n_val,
                          n_test=n_test, image_size=image_size, bias=bias, min_objects=min_objects,
                          max_objects=max_objects, object_scale=tuple(object_scale), held_out=held_out,
                          seed=seed, overwrite=overwrite)
    console().print(f"composite data set written to {path} "
                    f"({n_train} train, {n_val} val, {n_test} test images, {image_size} px, bias {bias})",
                    soft_wrap=True)


@data_app.command("box-masks")
@with_config("box-masks")
def data_box_masks(
    data: Path = typer.Argument(..., help="folder data set whose CSV has a boxes column"),
    split: str = typer.Option("train", help="split whose boxes become masks (its CSV is read, not changed)"),
    inner: float = typer.Option(0.7, help="central share of each box's width and height seeded as its object (0.7: chosen on real pictures, see RESULTS.md)"),
    crf_params: str = typer.Option("irn", help="CRF preset irn, psa or deeplab, then overrides: \"irn,gt_prob=0.9\""),
    replace_masks: bool = typer.Option(False, "--replace-masks", help="also images that have a mask; their masks then score the box masks (mIoU)"),
    workers: int = typer.Option(0, help="CRF worker processes (0 or 1: in this process)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="make masks made with other options again"),
) -> None:
    """Fill each image's boxes with a pixel mask by a dense CRF ("Simple Does It"), into
    DATA/box_masks/SPLIT/ and the split DATA/SPLIT_box_masks.csv, so that the mask terms and
    --guidance auto's mask defaults train on box-annotated images.

    Example:

      attnguide data box-masks data/birds && attnguide train --data data/birds --train-split train_box_masks --pixel-labels 100%
    """
    out = console()
    res = make_box_masks(data, split, inner=inner, crf_params=crf_params, replace_masks=replace_masks,
                         workers=workers, overwrite=overwrite, console=out)
    _print_fill(out, res, "box", "boxes")


@data_app.command("point-masks")
@with_config("point-masks")
def data_point_masks(
    data: Path = typer.Argument(..., help="folder data set whose CSV has a points column"),
    split: str = typer.Option("train", help="split whose clicks become masks (its CSV is read, not changed)"),
    radius: float = typer.Option(0.1, help="radius of the disc around each click seeded as its object, a share of the image's shorter side"),
    reach: float = typer.Option(0.5, help="how far an object may extend from its click (a share of the shorter side); farther from every click is background (0.1 and 0.5: chosen on real pictures, see RESULTS.md)"),
    crf_params: str = typer.Option("irn", help="CRF preset irn, psa or deeplab, then overrides: \"irn,gt_prob=0.9\""),
    replace_masks: bool = typer.Option(False, "--replace-masks", help="also images that have a mask; their masks then score the click masks (mIoU)"),
    workers: int = typer.Option(0, help="CRF worker processes (0 or 1: in this process)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="make masks made with other options again"),
) -> None:
    """Grow each image's clicks into a pixel mask by a dense CRF, into DATA/point_masks/SPLIT/
    and the split DATA/SPLIT_point_masks.csv, so that the mask terms and --guidance auto's
    mask defaults train on click-annotated images.

    Example:

      attnguide data point-masks data/birds && attnguide train --data data/birds --train-split train_point_masks --pixel-labels 100%
    """
    out = console()
    res = make_point_masks(data, split, radius=radius, reach=reach, crf_params=crf_params,
                           replace_masks=replace_masks, workers=workers, overwrite=overwrite, console=out)
    _print_fill(out, res, "click", "clicks")


def _print_fill(out, res, word: str, plural: str) -> None:
    """The one line box-masks and point-masks print."""
    parts = [f"split {res.split} written to {res.csv}: {res.written} {word} masks made",
             f"{res.reused} found done", f"{res.kept} images keep their own mask",
             f"{res.without} without {plural}"]
    if res.miou is not None:
        parts.append(f"mIoU against the data set's masks {100 * res.miou:.2f}")
    out.print(", ".join(parts), soft_wrap=True)


# ---------------------------------------------------------------------- other modules' commands


for module in (seg, demo, viz, export):  # pseudo-label, segment, evaluate, predict; demo; visualize, plot; export
    module.register(app)


# ---------------------------------------------------------------------- entry point


def _fail(message: str) -> int:
    from rich.markup import escape

    message = " ".join(str(message).split())  # one line
    console().print(f"[bold red]error:[/bold red] {escape(message)}", soft_wrap=True)
    return EXIT_BAD_INPUT


_NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)


def _os_message(e: OSError) -> str:
    """One line for an OSError: attnguide's own message, or the file and the fix for a raw
    one ("[Errno 30] Read-only file system: 'runs/x'")."""
    if e.errno is None or e.filename is None:
        return str(e) or type(e).__name__
    where = e.filename if e.filename2 is None else f"{e.filename} -> {e.filename2}"
    if e.errno in _NOT_WRITABLE:
        return (f"cannot write {where}: {e.strerror}; pick a folder you can write to (--out) "
                "or fix its permissions")
    if e.errno == errno.ENOSPC:
        return f"cannot write {where}: {e.strerror}; free disk space or pick another --out"
    if e.errno == errno.ENOENT:
        return f"{where} does not exist ({e.strerror}); check the path"
    return f"{where}: {e.strerror}"


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point; returns the exit code (0, 2 for bad input)."""
    debug = os.environ.get("ATTNGUIDE_DEBUG", "").lower() not in ("", "0", "false", "no")
    try:
        result = app(args=argv, prog_name="attnguide", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except _EXIT as e:
        return int(getattr(e, "exit_code", 0) or 0)
    except _ABORT:
        return _fail("aborted")
    except _USAGE_ERRORS as e:  # bad option values, unknown options, missing arguments
        if debug:
            raise
        ctx = getattr(e, "ctx", None)
        hint = f" (see {ctx.command_path} --help)" if ctx is not None else ""
        message = e.format_message() if hasattr(e, "format_message") else str(e)
        if message.strip():  # empty when help was shown for a bare command
            _fail(message + hint)
        return int(getattr(e, "exit_code", EXIT_BAD_INPUT) or EXIT_BAD_INPUT)
    except EXPECTED_ERRORS as e:
        if debug:
            raise
        return _fail(_os_message(e) if isinstance(e, OSError) else str(e) or type(e).__name__)
    except KeyboardInterrupt:
        if debug:
            raise
        return _fail("interrupted")


def run() -> None:  # pragma: no cover - used by __main__
    sys.exit(main())
