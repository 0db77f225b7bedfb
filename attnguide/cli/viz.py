"""The picture commands of the ``attnguide`` command line.

``register(app)`` adds them to the main typer app (``attnguide.cli.main``)::

    attnguide visualize RUN [RUN2] [--data PATH] [--split val] [--images N | --indices 0,3,7] [--out FILE.png]
    attnguide plot RUN [RUN ...] [--out FILE.png]

Both need matplotlib (``pip install 'attnguide[viz]'``). Bad input raises
AttnGuideError; ``attnguide.cli.main.main`` prints it as one red line and exits
with code 2.
"""

from __future__ import annotations

from pathlib import Path

import typer

from attnguide.cli.common import console, with_config
from attnguide.engine.distributed import resolve_device
from attnguide.errors import AttnGuideError
from attnguide.io.checkpoints import read_checkpoint, resolve_checkpoint
from attnguide.viz import attention_grid, plot_curves

COMMANDS = ("visualize", "plot")


def _parse_indices(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.replace(" ", "").split(",") if v != ""]
    except ValueError:
        raise AttnGuideError(f"--indices takes comma-separated image numbers such as 0,3,7, "
                             f"not {text!r}") from None
    if not values:
        raise AttnGuideError("--indices is empty; give image numbers such as 0,3,7")
    return values


def _default_data(run: str) -> str:
    """The data set the run was trained on (its config), if it still exists here."""
    config = read_checkpoint(resolve_checkpoint(run)).get("config") or {}
    data = str(config.get("data") or "")
    if not data or not Path(data).exists():
        where = f" ({data} does not exist here)" if data else ""
        raise AttnGuideError(f"pass --data PATH: the data set run {run} was trained on is unknown{where}")
    return data


def _out_folder(run: str) -> Path:
    path = Path(run)
    return path.parent if path.suffix in (".pt", ".pth") else path


@with_config("visualize")
def visualize_command(
    runs: list[str] = typer.Argument(..., metavar="RUN [RUN2]", show_default=False,
                                     help="run folder(s) or checkpoint(s) of 'attnguide train'; two runs "
                                          "are drawn before/after (e.g. a baseline and GAIN_ext)"),
    data: str | None = typer.Option(None, "--data", help="data set folder (default: the one the first run was trained on)"),
    split: str = typer.Option("val", "--split", help="split to draw images from"),
    images: int | None = typer.Option(None, "--images", help="number of images, spread evenly over the split (default: 8)"),
    indices: str | None = typer.Option(None, "--indices", help="image numbers in the split, e.g. 0,3,7 (instead of --images)"),
    out: Path | None = typer.Option(None, "--out", help="PNG to write (default: RUN/attention_<split>.png)"),
    max_classes: int | None = typer.Option(None, "--max-classes", help="draw at most this many classes per image"),
    names: str | None = typer.Option(None, "--names", help="comma-separated run names for the titles (default: folder names)"),
    cmap: str = typer.Option("turbo", "--cmap", help="matplotlib colour map of the attention (turbo, jet, ...)"),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:1, ... or auto"),
) -> None:
    """Draw attention grids: each image, its mask, the attention of each class per run, and the erased image I*.

    Examples:

      attnguide visualize runs/ext --data data/scenes --split val --images 8 --out attention.png

      attnguide visualize runs/baseline runs/ext --split test --indices 0,3,7 --out before_after.png
    """
    if images is not None and indices is not None:
        raise AttnGuideError("pass either --images N or --indices 0,3,7, not both")
    if images is not None and images < 1:
        raise AttnGuideError(f"--images must be at least 1, got {images}")
    chosen = _parse_indices(indices) if indices is not None else None
    run_names = [n.strip() for n in names.split(",")] if names else None
    device = str(resolve_device(device))  # the device check of every command
    if data is None:
        data = _default_data(runs[0])
    if out is None:
        out = _out_folder(runs[0]) / f"attention_{split}.png"
    path = attention_grid(runs, data, chosen, out, split=split, images=images or 8,
                          max_classes=max_classes, names=run_names, cmap=cmap, device=device)
    console().print(f"attention grid written to {path}", soft_wrap=True)


@with_config("plot")
def plot_command(
    runs: list[str] = typer.Argument(..., metavar="RUN [RUN ...]", show_default=False,
                                     help="run folders with a metrics.jsonl"),
    out: Path | None = typer.Option(None, "--out", help="PNG to write (default: RUN/curves.png)"),
    names: str | None = typer.Option(None, "--names", help="comma-separated run names for the legend (default: folder names)"),
    keys: str | None = typer.Option(None, "--keys", help="comma-separated metrics.jsonl keys to draw (default: losses and val metrics)"),
) -> None:
    """Draw the loss terms and metrics per epoch from metrics.jsonl: one panel per quantity, one line per run.

    Guided epochs (L_am switched on) are shaded.

    Examples:

      attnguide plot runs/ext

      attnguide plot runs/baseline runs/ext --out curves.png
    """
    run_names = [n.strip() for n in names.split(",")] if names else None
    chosen = [k.strip() for k in keys.split(",") if k.strip()] if keys else None
    if out is None:
        out = _out_folder(runs[0]) / "curves.png"
    path = plot_curves(runs, out, names=run_names, keys=chosen)
    console().print(f"curves written to {path}", soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add ``visualize`` and ``plot`` to ``app`` (idempotent)."""
    have = {c.name for c in app.registered_commands}
    for name, fn in (("visualize", visualize_command), ("plot", plot_command)):
        if name not in have:
            app.command(name=name)(fn)
