"""Training curves: the loss terms and validation metrics of ``metrics.jsonl`` per
epoch, one panel per quantity, one line per run, guided epochs shaded.

Example:
    >>> from attnguide import viz
    >>> viz.plot_curves(["runs/baseline", "runs/ext"], "curves.png")
    PosixPath('curves.png')
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from attnguide.errors import AttnGuideError
from attnguide.viz.common import DPI, require_matplotlib, run_name, save_png, unique_names

__all__ = ["CURVES", "curve_keys", "plot_curves", "read_metrics"]

#: metrics.jsonl key -> panel title, in drawing order (keys a run lacks are skipped).
CURVES: dict[str, str] = {
    "train_loss": "total loss L (train)",
    "train_loss_cls": "L_cl classification (train)",
    "train_loss_am": "L_am attention mining (train)",
    "train_loss_ext": "L_e pixel masks (train)",
    "train_loss_area": "erased-area penalty (train)",
    "attention_area": "mean T(A), erased share (train)",
    "val_loss": "classification loss (val)",
    "val_accuracy": "accuracy (val)",
    "val_map": "mAP (val)",
    "val_cam_miou": "CAM mIoU (val)",
    "val_attention_inside": "attention inside the mask (val)",
    "val_attention_area": "mean attention (val)",
    "lr": "learning rate",
}
#: Loss terms drawn only when some run has a non-zero value (an unused term is all zeros).
_ZERO_WHEN_UNUSED = ("train_loss_am", "train_loss_ext", "train_loss_area")


def read_metrics(run: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a run's ``metrics.jsonl`` (a run folder or the file itself)."""
    path = Path(run)
    if path.suffix in (".pt", ".pth"):  # a checkpoint: its run folder
        path = path.parent
    if path.suffix != ".jsonl":
        if not path.exists():
            raise AttnGuideError(f"run folder {str(path)!r} does not exist")
        path = path / "metrics.jsonl"
    if not path.is_file():
        raise AttnGuideError(f"{str(path.parent)!r} has no metrics.jsonl: pass a run folder written "
                             "by 'attnguide train' (or segment)")
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise AttnGuideError(f"{path} line {number} is not JSON; is it a metrics.jsonl of "
                                 "'attnguide train'?") from None
        if isinstance(record, dict) and "epoch" in record:
            records.append(record)
    if not records:
        raise AttnGuideError(f"{path} holds no finished epoch yet; plot it after the first epoch")
    return records


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value)


def _spans(epochs: list[int]) -> list[tuple[float, float]]:
    """Consecutive epochs -> (start - 0.5, end + 0.5) spans."""
    spans: list[tuple[float, float]] = []
    for e in sorted(epochs):
        if spans and e - 0.5 <= spans[-1][1] + 1e-9:
            spans[-1] = (spans[-1][0], e + 0.5)
        else:
            spans.append((e - 0.5, e + 0.5))
    return spans


def curve_keys(histories: Sequence[Sequence[dict[str, Any]]], keys: Sequence[str] | None = None) -> list[str]:
    """The quantities :func:`plot_curves` draws: ``keys`` (default: :data:`CURVES`)
    that some run has a number for; unused loss terms (all zeros) left out."""
    wanted = list(keys) if keys is not None else list(CURVES)
    out = []
    for key in wanted:
        values = [_number(r.get(key)) for h in histories for r in h]
        finite = [v for v in values if not math.isnan(v)]
        if not finite:
            continue
        if keys is None and key in _ZERO_WHEN_UNUSED and all(v == 0 for v in finite):
            continue
        out.append(key)
    return out


def plot_curves(run_dirs: Sequence[str | os.PathLike] | str | os.PathLike,
                out_png: str | os.PathLike = "curves.png", *, names: Sequence[str] | None = None,
                keys: Sequence[str] | None = None, columns: int = 4) -> Path:
    """Loss terms and metrics per epoch from ``metrics.jsonl``: one panel per quantity,
    one line per run, guided epochs (L_am on) shaded.

    Args:
        run_dirs: run folders (or their ``metrics.jsonl``).
        out_png: PNG to write.
        names: a legend name per run (default: the folder names).
        keys: metrics.jsonl keys to draw (default: those of :data:`CURVES` present;
            loss terms that are zero in every run are left out).
        columns: panels per row.

    Returns:
        The path written.

    Raises:
        AttnGuideError: matplotlib missing, a run without metrics.jsonl, nothing to draw.

    Example:
        >>> plot_curves(["runs/baseline", "runs/ext"], "curves.png")
        PosixPath('curves.png')
    """
    matplotlib = require_matplotlib()
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    if isinstance(run_dirs, (str, os.PathLike)):
        run_dirs = [run_dirs]
    if not run_dirs:
        raise AttnGuideError("plot_curves needs at least one run folder")
    histories = [read_metrics(r) for r in run_dirs]
    labels = list(names) if names is not None else unique_names([run_name(r) for r in run_dirs])
    if len(labels) != len(histories):
        raise AttnGuideError(f"names has {len(labels)} entries for {len(histories)} runs")
    panels = curve_keys(histories, keys)
    if not panels:
        raise AttnGuideError(f"none of {', '.join(keys or CURVES)} is in the runs' metrics.jsonl")
    cols = max(1, min(columns, len(panels)))
    rows = math.ceil(len(panels) / cols)
    # fixed margins in inches (constrained layout would double the drawing time)
    panel_w, panel_h, left, right, top, bottom, gap_w, gap_h = 3.2, 2.4, 0.6, 0.15, 0.55, 0.45, 0.65, 0.7
    width = left + right + cols * panel_w + (cols - 1) * gap_w
    height = top + bottom + rows * panel_h + (rows - 1) * gap_h
    fig = Figure(figsize=(width, height), dpi=DPI, facecolor="white")
    axes = fig.subplots(rows, cols, squeeze=False, gridspec_kw={
        "left": left / width, "right": 1 - right / width, "top": 1 - top / height,
        "bottom": bottom / height, "wspace": gap_w / panel_w, "hspace": gap_h / panel_h}).flatten()
    colours = matplotlib.colormaps["tab10"].colors
    guided = [[int(r["epoch"]) for r in h if r.get("guided")] for h in histories]
    same = all(g == guided[0] for g in guided)
    first = min(int(r["epoch"]) for h in histories for r in h)
    last = max(int(r["epoch"]) for h in histories for r in h)
    handles = []
    for ax, key in zip(axes, panels):
        for i, (history, label) in enumerate(zip(histories, labels)):
            epochs = [int(r["epoch"]) for r in history]
            values = [_number(r.get(key)) for r in history]
            line, = ax.plot(epochs, values, marker="os^Dv"[i % 5], markersize=3.5, linewidth=1.5,
                            linestyle=("-", "--", ":", "-.")[i % 4], color=colours[i % len(colours)],
                            label=label)
            if ax is axes[0]:
                handles.append(line)
            spans = _spans(guided[i])
            if same and i > 0:
                continue
            for lo, hi in spans:
                ax.axvspan(lo, hi, color="grey" if same else colours[i % len(colours)],
                           alpha=0.15 if same else 0.08, linewidth=0, zorder=0)
        ax.set_xlim(first - 0.5, last + 0.5)
        ax.set_title(CURVES.get(key, key), fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=7)
        if last - first < 10:
            ax.set_xticks(range(first, last + 1))
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in axes[len(panels):]:
        ax.set_axis_off()
    if any(guided):
        if same:
            handles.append(Patch(color="grey", alpha=0.3, label="guided epochs (L_am on)"))
        else:
            handles.extend(Patch(color=colours[i % len(colours)], alpha=0.25, label=f"guided: {label}")
                           for i, label in enumerate(labels) if guided[i])
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 1 - 0.08 / height),
               ncol=min(len(handles), 6), fontsize=8, frameon=False)
    return save_png(fig, out_png)
