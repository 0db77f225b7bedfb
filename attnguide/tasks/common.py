"""Small pieces shared by the pipeline commands: option parsing, file layout,
input normalisation, a progress bar and the mIoU table."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from attnguide.data.segmentation import label_path, to_input  # noqa: F401 - re-exported
from attnguide.engine.progress import make_console  # noqa: F401 - re-exported
from attnguide.errors import AttnGuideError
from attnguide.io.atomic import atomic_write

# ---------------------------------------------------------------------- options


def parse_scales(spec: str | Sequence[float]) -> tuple[float, ...]:
    """``"1.0,0.5,1.5,2.0"`` (or a sequence) -> ``(1.0, 0.5, 1.5, 2.0)``; each > 0."""
    if isinstance(spec, str):
        parts = [p for p in spec.replace(" ", ",").split(",") if p]
        try:
            values = tuple(float(p) for p in parts)
        except ValueError:
            raise AttnGuideError(
                f"--scales {spec!r} is not a list of numbers; write e.g. --scales 1.0,0.5,1.5,2.0"
            ) from None
    else:
        values = tuple(float(v) for v in spec)
    if not values or any(not math.isfinite(v) or v <= 0 for v in values):
        raise AttnGuideError(f"--scales needs positive factors such as 1.0,0.5,1.5,2.0, got {spec!r}")
    return values


def check_class_lists(model_classes: Sequence[str], data_classes: Sequence[str], model_what: str,
                      data_what: str) -> None:
    """Raise when a model was trained on another class list than the data set's."""
    if list(model_classes) == list(data_classes):
        return

    def show(names: Sequence[str]) -> str:
        names = list(names)
        return "[" + ", ".join(names[:12]) + (f", ... ({len(names)} classes)" if len(names) > 12 else "") + "]"

    raise AttnGuideError(
        f"class lists differ: {model_what} was trained on {show(model_classes)} but {data_what} "
        f"has {show(data_classes)}; use the data set the model was trained on (same classes.txt, "
        "same order)")


# ---------------------------------------------------------------------- files


def write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically; NaN becomes null."""
    atomic_write(path, (json.dumps(_clean(data), indent=2) + "\n").encode())


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        return _clean(value.item())
    return value


# ---------------------------------------------------------------------- console


@contextmanager
def progress_bar(total: int, description: str, console=None, quiet: bool = False,
                 done: int = 0) -> Iterator[Any]:
    """A transient rich bar (only on a terminal, never with ``quiet``).

    Yields ``advance(n=1, **fields)``; ``fields`` may set ``ips`` (images/s).
    """
    console = console or make_console()
    if quiet or not console.is_terminal:
        yield lambda n=1, **fields: None
        return
    progress = Progress(TextColumn(description), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[ips]} img/s"), TimeElapsedColumn(),
                        TimeRemainingColumn(), console=console, transient=True)
    task = progress.add_task(description, total=total, completed=done, ips="-")
    progress.start()
    try:
        yield lambda n=1, **fields: progress.update(task, advance=n, **fields)
    finally:
        progress.stop()


def metrics_table(columns: Mapping[str, Any], title: str | None = None):
    """A rich Table of IoU (%) per class, one column per :class:`SegMetrics`."""
    from rich.table import Table

    first = next(iter(columns.values()))
    table = Table(title=title, show_lines=False)
    table.add_column("class")
    for header in columns:
        table.add_column(f"{header} IoU (%)".strip(), justify="right")

    def pct(value: float) -> str:
        return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}"

    ious = [m.per_class_iou for m in columns.values()]
    for c, name in enumerate(first.class_names):
        table.add_row(name, *[pct(float(iou[c])) for iou in ious])
    table.add_section()
    table.add_row("[bold]mIoU[/bold]", *[f"[bold]{pct(m.miou)}[/bold]" for m in columns.values()])
    table.add_row("pixel accuracy", *[pct(m.pixel_accuracy) for m in columns.values()])
    return table
