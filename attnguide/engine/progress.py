"""Console output of a training run: a rich progress bar (TTY only) and one
summary line per epoch; only warnings with ``quiet``."""

from __future__ import annotations

import math
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def make_console() -> Console:
    """The rich console attnguide prints progress and messages to (stderr, no highlighting)."""
    return Console(stderr=True, highlight=False)


class Reporter:
    """Progress bar and epoch lines for the main process.

    Args:
        console: where to write. quiet: only warnings. silent: nothing at all.
        bar: show the bar (default: when the console is a terminal).
    """

    def __init__(self, console: Console | None = None, quiet: bool = False, bar: bool | None = None,
                 silent: bool = False) -> None:
        self.console = console or make_console()
        self.quiet = quiet or silent
        self.silent = silent  # not even warnings (DDP ranks other than 0)
        self.bar = (not quiet) and (self.console.is_terminal if bar is None else bar)
        self._progress: Progress | None = None
        self._task: Any = None

    def info(self, text: str) -> None:
        if not self.quiet:
            self.console.print(escape(text), soft_wrap=True)

    def warn(self, text: str) -> None:
        if not self.silent:
            self.console.print(f"[yellow]warning:[/yellow] {escape(text)}", soft_wrap=True)

    def start_epoch(self, epoch: int, epochs: int, total: int, done: int, guided: bool) -> None:
        if not self.bar:
            return
        self._progress = Progress(
            TextColumn(f"epoch {epoch + 1}/{epochs}" + ("" if guided else " (cls only)")),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[ips]} img/s"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )
        self._progress.start()
        self._task = self._progress.add_task("train", total=total, completed=done, loss="-", ips="-")

    def update(self, loss: float, images_per_s: float) -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=1, loss=f"{loss:.4f}", ips=f"{images_per_s:.0f}")

    def end_epoch(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def epoch_line(self, record: dict[str, Any], epochs: int) -> None:
        if self.quiet:
            return
        parts = [f"epoch {record['epoch']}/{epochs}", f"loss {record['train_loss']:.4f}"]
        if record.get("train_loss_am") or record.get("train_loss_ext"):
            parts.append(f"(cls {record['train_loss_cls']:.3f} am {record['train_loss_am']:.3f} "
                         f"ext {record['train_loss_ext']:.3f})")
        for key, label in (("val_accuracy", "acc"), ("val_map", "mAP"), ("val_cam_miou", "CAM mIoU"),
                           ("val_attention_inside", "inside")):
            value = record.get(key)
            if value is not None and not (isinstance(value, float) and math.isnan(value)):
                parts.append(f"{label} {value:.3f}")
        parts.append(f"{record['time']:.1f}s {record['images_per_s']:.0f} img/s")
        if record.get("best"):
            parts.append("[green]best[/green]")
        self.console.print("  ".join(parts), soft_wrap=True)
