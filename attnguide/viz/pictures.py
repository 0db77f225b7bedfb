"""Pictures of guided attention: attention grids, training curves, per-epoch snapshots.

- :func:`attention_grid` draws, for a few images, the attention of each
  ground-truth class for one run (or before/after for two runs, e.g. an
  unguided baseline and GAIN_ext) and the erased image
  ``I* = I - T(A) * (I - fill)`` that the attention-mining loss scores.
- :func:`plot_curves` draws the loss terms and validation metrics of
  ``metrics.jsonl`` per epoch, one line per run, guided epochs shaded.
- :func:`training_snapshot` is what ``attnguide train`` calls after each
  epoch (``--snapshots N``): ``RUN/snapshots/epoch_XXX.png``.

matplotlib is the ``viz`` extra (``pip install 'attnguide[viz]'``) and is
imported only when a picture is drawn. Figures are drawn on matplotlib's Agg
canvas without ``pyplot``: no window opens and the user's backend is untouched.

Example:
    >>> from attnguide import viz
    >>> viz.attention_grid(["runs/baseline", "runs/ext"], "data/scenes", indices=[0, 3, 7],
    ...                    out_png="attention.png", split="val")
    PosixPath('attention.png')
    >>> viz.plot_curves(["runs/baseline", "runs/ext"], "curves.png")
    PosixPath('curves.png')
"""

from __future__ import annotations

import json
import math
import os
import textwrap
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from attnguide.errors import AttnGuideError

__all__ = ["attention_grid", "plot_curves", "training_snapshot", "pick_indices", "grid_size",
           "read_metrics", "curve_keys", "CURVES", "CELL_PX"]

#: Default side of one grid cell in pixels (the figure is drawn at 100 dpi).
CELL_PX = 160
_DPI = 100
_HEADER = 0.5  # header band height, in cells
_TITLE = 0.25  # title band above each row's images, in cells
_GUIDANCE = {"none": "no guidance", "self": "GAIN (self-guided)", "ext": "GAIN_ext (pixel masks)",
             "rrr": "RRR (input gradients)", "ext+rrr": "GAIN_ext + RRR", "bg": "background erased",
             "swap": "background swap", "ext+swap": "GAIN_ext + background swap"}

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


def _require_matplotlib():
    """The matplotlib module, or AttnGuideError naming the extra to install."""
    try:
        import matplotlib
    except ImportError:
        raise AttnGuideError(
            "pictures need matplotlib, the 'viz' extra: pip install 'attnguide[viz]'"
        ) from None
    return matplotlib


# ---------------------------------------------------------------------- shared helpers


def pick_indices(n_total: int, n: int) -> list[int]:
    """``n`` indices spread evenly over ``range(n_total)`` (all of them when ``n >= n_total``),
    so that a sorted split still shows several classes; the same call gives the same set."""
    if n_total <= 0 or n <= 0:
        return []
    if n >= n_total:
        return list(range(n_total))
    return sorted({int(round(v)) for v in np.linspace(0, n_total - 1, n)})


def grid_size(n_images: int, n_columns: int, cell_px: int = CELL_PX) -> tuple[int, int]:
    """(width, height) in pixels of an :func:`attention_grid` PNG: ``n_columns`` cells
    of ``cell_px`` across; per image a row of ``cell_px`` plus a title band of a
    quarter cell; on top a header band of half a cell."""
    return n_columns * cell_px, n_images * _row_px(cell_px) + round(_HEADER * cell_px)


def _row_px(cell_px: int) -> int:
    return cell_px + round(_TITLE * cell_px)


def _save(fig, out_png: str | os.PathLike) -> Path:
    """Write ``fig`` as PNG atomically (a reader never sees half a file)."""
    path = Path(out_png)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        fig.savefig(tmp, format="png", dpi=_DPI, pil_kwargs={"compress_level": 3})
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _unique_names(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name} #{seen[name]}")
    return out


def _run_name(path: str | os.PathLike) -> str:
    """``runs/ext`` -> ``ext``; ``runs/ext/last.pt`` -> ``ext``."""
    path = Path(path)
    if path.suffix in (".pt", ".pth", ".jsonl"):
        path = path.parent
    return path.resolve().name or str(path)


# ---------------------------------------------------------------------- attention grid


@dataclass
class _Run:
    """One classifier to draw: its GuidedAttention and what the titles need."""

    name: str
    guide: Any  # GuidedAttention
    class_names: list[str]
    multilabel: bool
    guidance: str = ""
    image_size: int = 224


def _as_run(run: Any, device: str | torch.device) -> _Run:
    from attnguide.models.classifiers import TrainedModel, load_model

    if isinstance(run, (str, os.PathLike)):
        name = _run_name(run)
        run = load_model(run, device=device)
    elif isinstance(run, TrainedModel):
        name = _run_name(run.checkpoint) if run.checkpoint else "model"
    else:
        raise AttnGuideError(
            f"a run must be a run folder, a checkpoint path or a TrainedModel (load_model(...)), "
            f"not {type(run).__name__}"
        )
    return _Run(name, run.guide(), list(run.class_names), run.multilabel,
                str(run.config.get("guidance", "")), int(run.image_size))


@dataclass
class _Images:
    """The images of a grid, already selected: (N, 3, H, W) normalised, and per image
    its classes, mask (or None) and title."""

    images: Tensor
    classes: list[list[int]]
    masks: list[np.ndarray | None]
    titles: list[str]
    predicted: bool  # classes are the first run's top-1 prediction (no labels given)
    mean: tuple[float, ...]
    std: tuple[float, ...]


def _class_list(entry: Any, class_names: list[str], where: str) -> list[int]:
    """One image's labels (multi-hot row, class index, or names/indices) -> class indices."""
    if isinstance(entry, Tensor):
        entry = entry.detach().cpu()
        if entry.dim() == 1 and entry.is_floating_point():
            return entry.ge(0.5).nonzero().flatten().tolist()
        entry = entry.flatten().tolist()
    if isinstance(entry, (int, np.integer, str)):
        entry = [entry]
    out = []
    for value in entry:
        if isinstance(value, str):
            if value not in class_names:
                raise AttnGuideError(f"{where}: unknown class {value!r}; the classes are "
                                     f"{', '.join(class_names)}")
            value = class_names.index(value)
        value = int(value)
        if not 0 <= value < len(class_names):
            raise AttnGuideError(f"{where}: class index {value} is not in [0, {len(class_names) - 1}]")
        if value not in out:
            out.append(value)
    return out


def _gather(data: Any, indices: Sequence[int] | None, labels: Any, masks: Any, split: str,
            run: _Run, image_size: int, n_default: int) -> _Images:
    from attnguide.data import IMAGENET_MEAN, IMAGENET_STD

    if isinstance(data, (str, os.PathLike)):
        from attnguide.data import open_dataset

        data = open_dataset(data, split, image_size, train=False, mode="multi")
    if isinstance(data, Tensor):
        images = data if data.dim() == 4 else data[None]
        if images.dim() != 4 or images.shape[1] != 3:
            raise AttnGuideError(f"images must be (N, 3, H, W) normalised tensors, got {tuple(data.shape)}")
        n_total, source = len(images), "images"
    elif hasattr(data, "__getitem__") and hasattr(data, "class_names"):
        n_total = len(data)
        source = f"split {getattr(data, 'split', '?')!r} of {getattr(data, 'root', 'the data set')}"
        if list(data.class_names) != run.class_names:
            raise AttnGuideError(
                f"run {run.name!r} was trained on classes {', '.join(run.class_names)} but {source} "
                f"has {', '.join(data.class_names)}; pass the data set the run was trained on")
    else:
        raise AttnGuideError("data must be a data set folder, a data set (open_dataset(...)) or an "
                             f"(N, 3, H, W) tensor of normalised images, not {type(data).__name__}")
    if indices is None:
        indices = pick_indices(n_total, n_default)
    indices = [int(i) for i in indices]
    if not indices:
        raise AttnGuideError(f"no image to draw: {source} has {n_total} images")
    bad = [i for i in indices if not 0 <= i < n_total]
    if bad:
        raise AttnGuideError(f"image index {bad[0]} is out of range: {source} has {n_total} images "
                             f"(0..{n_total - 1})")
    if labels is not None and len(labels) != len(indices):
        raise AttnGuideError(f"labels has {len(labels)} entries for {len(indices)} images; "
                             "give one entry per image drawn")
    if masks is not None and len(masks) != len(indices):
        raise AttnGuideError(f"masks has {len(masks)} entries for {len(indices)} images")
    names = run.class_names
    tensors, classes, mask_list, titles = [], [], [], []
    for j, i in enumerate(indices):
        if isinstance(data, Tensor):
            tensors.append(images[i])
            row_classes = [] if labels is None else _class_list(labels[j], names, f"labels[{j}]")
            mask = None
            title = f"image {i}"
        else:
            item = data[i]
            tensors.append(item["image"])
            row_classes = _class_list(item["labels"] if labels is None else labels[j], names,
                                      f"{source}, image {i}")
            mask = item.get("mask")
            mask = None if mask is None else np.asarray(mask)
            if mask is not None and bool((mask == 255).all()):
                mask = None  # an image without a mask file
            title = f"{getattr(data, 'split', '')} #{i}".strip()
        if masks is not None:
            mask = None if masks[j] is None else np.asarray(masks[j])
        classes.append(row_classes)
        mask_list.append(mask)
        titles.append(title)
    stacked = torch.stack([t.float() for t in tensors])
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    predicted = all(not c for c in classes)
    return _Images(stacked, classes, mask_list, titles, predicted, mean, std)


def _probabilities(logits: Tensor, multilabel: bool) -> Tensor:
    return logits.float().sigmoid() if multilabel else logits.float().softmax(dim=1)


def _attend(run: _Run, images: Tensor, classes: Tensor, batch: int = 8) -> dict[str, Tensor]:
    """Attention, erased images and class probabilities of (image, class) pairs.

    Args:
        images: (N, 3, H, W) normalised; classes: (N, K) int64.

    Returns:
        ``attention`` (N, K, H, W) in [0, 1], ``erased`` (N, K, 3, H, W) normalised,
        ``p`` (N, K) probability of the class on the image, ``p_erased`` (N, K) on I*.
    """
    from attnguide.core.guide import extract_logits
    from attnguide.core.hooks import eval_mode

    guide = run.guide
    model = guide.model
    device = next(iter(model.parameters()), torch.empty(0)).device
    out: dict[str, list[Tensor]] = {"attention": [], "erased": [], "p": [], "p_erased": []}
    with eval_mode(model):
        for start in range(0, len(images), batch):
            x = images[start:start + batch].to(device)  # (b, 3, H, W)
            c = classes[start:start + batch].to(device)  # (b, K)
            b, k = c.shape
            with torch.enable_grad():
                att = guide.attention(x, c, resize=True, normalize=True).float()  # (b, K, H, W)
            with torch.no_grad():
                soft = guide.mask(att.flatten(0, 1))  # (b K, H, W) = T(A)
                erased = guide.erase(x.repeat_interleave(k, dim=0), soft)  # (b K, 3, H, W)
                p = _probabilities(extract_logits(model(x)), run.multilabel).gather(1, c)
                pe = _probabilities(extract_logits(model(erased)), run.multilabel)
                pe = pe.gather(1, c.reshape(-1, 1)).view(b, k)
            out["attention"].append(att.cpu())
            out["erased"].append(erased.float().view(b, k, *erased.shape[1:]).cpu())
            out["p"].append(p.cpu())
            out["p_erased"].append(pe.cpu())
    return {key: torch.cat(value) for key, value in out.items()}


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
    from attnguide.io.labels import voc_palette

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
    matplotlib = _require_matplotlib()
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
    loaded = [_as_run(r, device) for r in runs]
    if names is not None:
        if len(names) != len(loaded):
            raise AttnGuideError(f"names has {len(names)} entries for {len(loaded)} runs")
        for run, name in zip(loaded, names):
            run.name = str(name)
    for run, name in zip(loaded, _unique_names([r.name for r in loaded])):
        run.name = name
    for run in loaded[1:]:
        if run.class_names != loaded[0].class_names:
            raise AttnGuideError(
                f"runs {loaded[0].name!r} and {run.name!r} have different classes "
                f"({', '.join(loaded[0].class_names)} vs {', '.join(run.class_names)}); "
                "compare runs trained on the same data set")
    data = _gather(dataset_or_images, indices, labels, masks, split, loaded[0], loaded[0].image_size,
                   images)
    return _draw_grid(loaded, data, out_png, max_classes=max_classes, title=title, cmap=cmap,
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


def _draw_grid(runs: list[_Run], data: _Images, out_png: str | os.PathLike, *,
               max_classes: int | None, title: str | None, cmap: str, cell_px: int,
               subtitle: str = "") -> Path:
    """Compute every run's attention on ``data`` and draw the grid.

    The cells are composed as one RGB array at their final pixel size and drawn
    with ``figimage`` (pixel exact); matplotlib adds only the text. One axes per
    cell would cost a second per snapshot.
    """
    matplotlib = _require_matplotlib()
    from matplotlib import patheffects
    from matplotlib.figure import Figure

    from attnguide.core.guide import extract_logits
    from attnguide.core.hooks import eval_mode

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
    results = [_attend(run, data.images, padded) for run in runs]

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

    fig = Figure(figsize=(width / _DPI, height / _DPI), dpi=_DPI, facecolor="white")
    fig.figimage((canvas.clip(0, 1) * 255).round().astype(np.uint8), xo=0, yo=0, origin="upper")
    pt = cell_px / 160 * 72 / _DPI  # points per pixel, scaled with the cell
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
    return _save(fig, out_png)


# ---------------------------------------------------------------------- per-epoch snapshots


def training_snapshot(trainer: Any, record: dict[str, Any]) -> Path | None:
    """Write ``RUN/snapshots/epoch_XXX.png``: the attention of the trainer's model on
    ``trainer.cfg.snapshots`` validation images, the same ones every epoch.

    Called by the training loop on the main process after each epoch's evaluation
    (``record`` is the epoch's metrics.jsonl line). Returns the path, or None when
    there is nothing to draw (no validation split, ``snapshots`` = 0) or matplotlib
    is missing (then the trainer's reporter warns once and training goes on). The
    model's train/eval flags and the random generators are left as they were.
    """
    count = int(getattr(trainer.cfg, "snapshots", 0) or 0)
    if count <= 0 or trainer.val_ds is None or len(trainer.val_ds) == 0:
        return None
    try:
        _require_matplotlib()
    except AttnGuideError as e:
        if not getattr(trainer, "_snapshots_warned", False):
            trainer._snapshots_warned = True
            trainer.reporter.warn(f"no attention snapshots: {e} (or pass --snapshots 0)")
        return None
    epoch = int(record["epoch"])
    run = _Run(_run_name(trainer.run_dir), trainer.guide, list(trainer.class_names),
               bool(trainer.multilabel), str(trainer.cfg.guidance), int(trainer.cfg.image_size))
    data = _gather(trainer.val_ds, pick_indices(len(trainer.val_ds), count), None, None,
                   trainer.val_ds.split, run, trainer.cfg.image_size, count)
    facts = [f"epoch {epoch}", "guided" if record.get("guided") else "not guided (classification only)"]
    for key, label in (("val_cam_miou", "CAM mIoU"), ("val_attention_inside", "attention inside mask")):
        if isinstance(record.get(key), (int, float)):
            facts.append(f"{label} {record[key]:.3f}")
    devices = [trainer.device] if getattr(trainer.device, "type", "cpu") == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        return _draw_grid([run], data, Path(trainer.run_dir) / "snapshots" / f"epoch_{epoch:03d}.png",
                          max_classes=None, title=f"{run.name}: attention after epoch {epoch}",
                          cmap="turbo", cell_px=CELL_PX, subtitle=", ".join(facts) + ".")


# ---------------------------------------------------------------------- curves


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
    matplotlib = _require_matplotlib()
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    if isinstance(run_dirs, (str, os.PathLike)):
        run_dirs = [run_dirs]
    if not run_dirs:
        raise AttnGuideError("plot_curves needs at least one run folder")
    histories = [read_metrics(r) for r in run_dirs]
    labels = list(names) if names is not None else _unique_names([_run_name(r) for r in run_dirs])
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
    fig = Figure(figsize=(width, height), dpi=_DPI, facecolor="white")
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
    return _save(fig, out_png)
