"""Attention grids: for a few images, the attention of each class for one or more
runs (before/after), and the erased image ``I* = I - T(A) * (I - fill)`` that the
attention-mining loss scores.

Cells are composed as one RGB array at their final pixel size and drawn with
matplotlib's ``figimage`` on an Agg canvas without ``pyplot`` (no window opens,
the user's backend is untouched); matplotlib adds only the text.

Example:
    >>> from attnguide import viz
    >>> viz.attention_grid(["runs/baseline", "runs/ext"], "data/scenes", indices=[0, 3, 7],
    ...                    out_png="attention.png", split="val")
    PosixPath('attention.png')
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from attnguide.core import eval_mode, extract_logits
from attnguide.errors import AttnGuideError
from attnguide.io.labels import voc_palette
from attnguide.viz.common import CELL_PX, DPI, require_matplotlib, save_png, unique_names
from attnguide.viz.inputs import Images, Run, as_run, attend, gather

__all__ = ["attention_grid", "draw_grid", "grid_size"]

_HEADER = 0.5  # header band height, in cells
_TITLE = 0.25  # title band above each row's images, in cells
_GUIDANCE = {"none": "no guidance", "self": "GAIN (self-guided)", "ext": "GAIN_ext (pixel masks)",
             "rrr": "RRR (input gradients)", "ext+rrr": "GAIN_ext + RRR", "bg": "background erased",
             "swap": "background swap", "ext+swap": "GAIN_ext + background swap"}


def grid_size(n_images: int, n_columns: int, cell_px: int = CELL_PX) -> tuple[int, int]:
    """(width, height) in pixels of an :func:`attention_grid` PNG: ``n_columns`` cells
    of ``cell_px`` across; per image a row of ``cell_px`` plus a title band of a
    quarter cell; on top a header band of half a cell."""
    return n_columns * cell_px, n_images * _row_px(cell_px) + round(_HEADER * cell_px)


def _row_px(cell_px: int) -> int:
    return cell_px + round(_TITLE * cell_px)


def _to_rgb(image: Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Normalised (3, H, W) -> (H, W, 3) float RGB in [0, 1]."""
    m = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    s = torch.tensor(std, dtype=torch.float32)[:, None, None]
    return (image.float() * s + m).clamp(0, 1).permute(1, 2, 0).numpy()


def _overlay(rgb: np.ndarray, attention: np.ndarray, cmap, strength: float = 0.55) -> np.ndarray:
    """Blend a colour-mapped (H, W) attention map over an (H, W, 3) image."""
    heat = cmap(attention)[..., :3]
    return (1 - strength) * rgb + strength * heat


def _mask_rgb(mask: np.ndarray) -> np.ndarray:
    return voc_palette()[np.clip(mask, 0, 255).astype(np.int64)] / 255.0


def attention_grid(
    runs: Sequence[Any],
    dataset_or_images: Any,
    indices: Sequence[int] | None = None,
    out_png: str | os.PathLike = "attention.png",
    labels: Sequence[Any] | None = None,
    *,
    split: str = "val",
    masks: Sequence[Any] | None = None,
    names: Sequence[str] | None = None,
    images: int = 8,
    max_classes: int | None = None,
    title: str | None = None,
    cmap: str = "turbo",
    cell_px: int = CELL_PX,
    device: str | torch.device = "cpu",
) -> Path:
    """Draw the attention of each ground-truth class, per run, as a PNG grid.

    One row per image. Columns: the image; its mask in VOC palette colours with
    the class names written on the objects (when any drawn image has a mask);
    then, for each of the image's classes (up to ``max_classes``), the
    attention of every run as a ``cmap`` overlay (red = high; the class's mask
    outlined in white) followed by every run's erased image
    ``I* = I - T(A) * (I - fill)``: what the attention-mining loss L_am scores.
    Titles give the class, the run and ``p``, the class probability on the image
    (attention) or on I* (erased; GAIN drives it down). With two runs, e.g. an
    unguided baseline and GAIN_ext, their maps sit side by side: before/after.

    Args:
        runs: run folders, checkpoint files or :class:`~attnguide.models.classifiers.TrainedModel`
            (``load_model(...)``); all trained on the same classes.
        dataset_or_images: a data set folder (opened at the first run's image
            size, split ``split``), a data set from ``open_dataset``, or an
            (N, 3, H, W) tensor of images normalised like the training images.
        indices: images to draw; None: ``images`` of them spread evenly
            over the split (:func:`pick_indices`).
        out_png: PNG to write (folders are created; written atomically).
        labels: one entry per drawn image, its classes: a multi-hot row, a class
            index, or a list of indices or names. None: the data set's labels;
            for a tensor of images, the first run's top-1 prediction.
        split: split of a data set folder.
        masks: one (H, W) label map (or None) per drawn image, for a tensor of images.
        names: a name per run (default: the run folder's name).
        images: how many images when ``indices`` is None.
        max_classes: draw at most this many classes per image (None: all).
        title: first line of the header (default: says what the grid shows).
        cmap: matplotlib colour map of the attention (``"turbo"``, ``"jet"``, ...).
        cell_px: side of one cell in pixels.
        device: where runs given as paths are loaded.

    Returns:
        The path written. The PNG is ``grid_size(rows, columns, cell_px)`` pixels,
        with ``columns = 1 + (1 if a mask) + K * 2 * len(runs)``, K the most
        classes of a drawn image (capped by ``max_classes``).

    Raises:
        AttnGuideError: matplotlib missing, runs or data with other classes,
            indices out of range, bad labels.

    Example:
        >>> attention_grid(["runs/baseline", "runs/ext"], "data/scenes", indices=[0, 3],
        ...                out_png="attention.png", split="test")
        PosixPath('attention.png')     # 2 rows; columns image, mask, then per class 4 cells
    """
    matplotlib = require_matplotlib()
    if cmap not in matplotlib.colormaps:
        raise AttnGuideError(f"unknown colour map {cmap!r}: use a matplotlib name such as turbo, jet, "
                             "viridis or inferno")
    if cell_px < 48:
        raise AttnGuideError(f"cell_px must be at least 48 (titles need room), got {cell_px}")
    if indices is None and images < 1:
        raise AttnGuideError(f"images must be at least 1, got {images}")
    if isinstance(runs, (str, os.PathLike)) or not isinstance(runs, Sequence):
        runs = [runs]
    if not runs:
        raise AttnGuideError("attention_grid needs at least one run")
    loaded = [as_run(r, device) for r in runs]
    if names is not None:
        if len(names) != len(loaded):
            raise AttnGuideError(f"names has {len(names)} entries for {len(loaded)} runs")
        for run, name in zip(loaded, names):
            run.name = str(name)
    for run, name in zip(loaded, unique_names([r.name for r in loaded])):
        run.name = name
    for run in loaded[1:]:
        if run.class_names != loaded[0].class_names:
            raise AttnGuideError(
                f"runs {loaded[0].name!r} and {run.name!r} have different classes "
                f"({', '.join(loaded[0].class_names)} vs {', '.join(run.class_names)}); "
                "compare runs trained on the same data set")
    data = gather(dataset_or_images, indices, labels, masks, split, loaded[0], loaded[0].image_size,
                   images)
    return draw_grid(loaded, data, out_png, max_classes=max_classes, title=title, cmap=cmap,
                      cell_px=cell_px)


def _resize(rgb: np.ndarray, side: int, nearest: bool = False) -> np.ndarray:
    """(H, W, C) float -> (side, side, C): bilinear (antialiased when shrinking) or nearest."""
    t = torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)).permute(2, 0, 1)[None]
    if nearest:
        t = torch.nn.functional.interpolate(t, size=(side, side), mode="nearest")
    else:
        t = torch.nn.functional.interpolate(t, size=(side, side), mode="bilinear",
                                            align_corners=False, antialias=side < rgb.shape[0])
    return t[0].permute(1, 2, 0).numpy()


def _outline(region: np.ndarray, side: int, width: int) -> np.ndarray:
    """(H, W) bool region -> (side, side) bool pixels on its border, ``width`` pixels thick."""
    inside = _resize(region[..., None].astype(np.float32), side, nearest=True)[..., 0] > 0.5
    t = torch.from_numpy(inside.astype(np.float32))[None, None]
    k = 2 * width + 1
    grown = torch.nn.functional.max_pool2d(t, k, stride=1, padding=width)[0, 0].numpy() > 0.5
    shrunk = -torch.nn.functional.max_pool2d(-t, 3, stride=1, padding=1)[0, 0].numpy() > 0.5
    return grown & ~shrunk


def draw_grid(runs: list[Run], data: Images, out_png: str | os.PathLike, *,
               max_classes: int | None, title: str | None, cmap: str, cell_px: int,
               subtitle: str = "") -> Path:
    """Compute every run's attention on ``data`` and draw the grid.

    The cells are composed as one RGB array at their final pixel size and drawn
    with ``figimage`` (pixel exact); matplotlib adds only the text. One axes per
    cell would cost a second per snapshot.
    """
    matplotlib = require_matplotlib()
    from matplotlib import patheffects
    from matplotlib.figure import Figure

    n = len(data.images)
    classes_per_image = [list(c) for c in data.classes]
    if data.predicted:  # no labels: the first run's top-1 class
        model = runs[0].guide.model
        device = next(iter(model.parameters()), torch.empty(0)).device
        with torch.no_grad(), eval_mode(model):
            top = extract_logits(model(data.images.to(device))).argmax(dim=1).cpu()
        classes_per_image = [[int(t)] for t in top]
    if max_classes is not None:
        if max_classes < 1:
            raise AttnGuideError(f"max_classes must be at least 1, got {max_classes}")
        classes_per_image = [c[:max_classes] for c in classes_per_image]
    k_max = max(1, max(len(c) for c in classes_per_image))
    # (N, K) padded with each row's first class (or 0); padding is not drawn
    padded = torch.tensor([(c or [0]) + [(c or [0])[0]] * (k_max - len(c or [0]))
                           for c in classes_per_image], dtype=torch.int64)
    results = [attend(run, data.images, padded) for run in runs]

    has_mask = any(m is not None for m in data.masks)
    n_runs = len(runs)
    n_cols = 1 + int(has_mask) + k_max * 2 * n_runs
    width, height = grid_size(n, n_cols, cell_px)
    header, row_px = round(_HEADER * cell_px), _row_px(cell_px)
    pad = max(1, round(0.04 * cell_px))
    side = cell_px - 2 * pad  # image side in a cell
    canvas = np.ones((height, width, 3), dtype=np.float32)
    colormap = matplotlib.colormaps[cmap]
    names = runs[0].class_names
    line_w = max(1, round(cell_px / 100))
    texts: list[tuple[float, float, str, dict]] = []  # (x px, y px from the top, text, style)

    def place(row: int, col: int, rgb: np.ndarray, heading: str, nearest: bool = False) -> tuple[int, int]:
        """Paste an image into a cell and queue its two-line title; return the image's corner."""
        y = header + row * row_px + (row_px - cell_px) + pad
        x = col * cell_px + pad
        canvas[y:y + side, x:x + side] = _resize(rgb, side, nearest)
        texts.append((x + side / 2, y - pad, heading, {"ha": "center", "va": "bottom"}))
        return y, x

    for row in range(n):
        rgb = _to_rgb(data.images[row], data.mean, data.std)
        row_classes = classes_per_image[row]
        label_names = ", ".join(names[c] for c in row_classes)
        what = "predicted " if data.predicted else ""
        heading = "\n".join(textwrap.wrap(f"{data.titles[row]}: {what}{label_names}", 24,
                                          max_lines=2, placeholder="…"))
        place(row, 0, rgb, heading)
        col = 1
        mask = data.masks[row]
        if has_mask:
            if mask is None:
                y = header + row * row_px + (row_px - cell_px) + cell_px / 2
                texts.append((col * cell_px + cell_px / 2, y, "no mask",
                              {"ha": "center", "va": "center", "color": "grey"}))
            else:
                y, x = place(row, col, _mask_rgb(mask), "mask", nearest=True)
                scale = side / mask.shape[0]
                for c in row_classes:
                    ys, xs = np.nonzero(mask == c + 1)
                    if len(xs):  # the class name on its object
                        texts.append((x + (float(np.median(xs)) + 0.5) * side / mask.shape[1],
                                      y + (float(np.median(ys)) + 0.5) * scale, names[c],
                                      {"ha": "center", "va": "center", "color": "white",
                                       "outline": True}))
            col += 1
        for k in range(k_max):
            if k >= len(row_classes):
                col += 2 * n_runs
                continue
            if k > 0:  # a thin grey line between the classes of a row
                y0 = header + row * row_px + (row_px - cell_px)
                canvas[y0 + pad:y0 + cell_px - pad, col * cell_px - 1] = 0.75
            c = row_classes[k]
            border = None
            if mask is not None and (mask == c + 1).any():
                border = _outline(mask == c + 1, side, line_w)
            for run, res in zip(runs, results):
                att = res["attention"][row, k].numpy()
                flat = "  (all 0)" if float(att.max()) <= 0 else ""
                y, x = place(row, col, _overlay(rgb, att, colormap),
                             f"{names[c]}  p={float(res['p'][row, k]):.2f}\n{run.name}{flat}")
                if border is not None:
                    canvas[y:y + side, x:x + side][border] = 1.0
                col += 1
            for run, res in zip(runs, results):
                erased = _to_rgb(res["erased"][row, k], data.mean, data.std)
                place(row, col, erased,
                      f"I* {names[c]}  p={float(res['p_erased'][row, k]):.2f}\n{run.name}")
                col += 1

    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, facecolor="white")
    fig.figimage((canvas.clip(0, 1) * 255).round().astype(np.uint8), xo=0, yo=0, origin="upper")
    pt = cell_px / 160 * 72 / DPI  # points per pixel, scaled with the cell
    small = 10.5 * pt
    outline = [patheffects.withStroke(linewidth=2.8 * pt, foreground="black")]
    for x, y, text, style in texts:
        style = dict(style)
        effects = outline if style.pop("outline", False) else None
        fig.text(x / width, 1 - y / height, text, fontsize=small, linespacing=1.1,
                 path_effects=effects, **style)
    # header: what the grid shows, and which run is which
    heading = title or ("Attention of each ground-truth class" if not data.predicted
                        else "Attention of the predicted class")
    left = pad / width
    fig.text(left, 1 - 0.12 * header / height, heading, fontsize=14 * pt, weight="bold",
             va="top", ha="left")
    runs_line = "   ".join(f"{r.name}: {_GUIDANCE.get(r.guidance, r.guidance) or 'run'}" for r in runs)
    explain = (f"{subtitle + '   ' if subtitle else ''}{runs_line}.   Overlay: {cmap}, red = high "
               "attention; white outline = the class's mask.   I* = the image with the attended "
               "region erased, what the attention-mining loss scores (GAIN makes its p small).   "
               "p = class probability.")
    chars = max(30, int(width / (10 * 0.52 * cell_px / 160)))
    lines = textwrap.wrap(explain, chars, max_lines=3, placeholder="…")
    fig.text(left, 1 - 0.42 * header / height, "\n".join(lines), fontsize=10 * pt,
             va="top", ha="left", color="#333333", linespacing=1.15)
    return save_png(fig, out_png)
