"""What an attention grid draws: the runs, the images, and their attention.

`as_run` turns a run folder, a checkpoint or a `TrainedModel` into a `Run`;
`gather` picks the images of a data set or a tensor with their classes and
masks (`Images`); `attend` computes, per (image, class), the attention, the
erased image I* and the class probabilities on both.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from attnguide.constants import IMAGENET_MEAN, IMAGENET_STD
from attnguide.core import eval_mode, extract_logits
from attnguide.data import open_dataset
from attnguide.errors import AttnGuideError
from attnguide.models import TrainedModel, load_model
from attnguide.viz.common import pick_indices, run_name


@dataclass
class Run:
    """One classifier to draw: its GuidedAttention and what the titles need."""

    name: str
    guide: Any  # GuidedAttention
    class_names: list[str]
    multilabel: bool
    guidance: str = ""
    image_size: int = 224


def as_run(run: Any, device: str | torch.device) -> Run:
    """A run folder, checkpoint path or TrainedModel as a :class:`Run` to draw."""
    if isinstance(run, (str, os.PathLike)):
        name = run_name(run)
        run = load_model(run, device=device)
    elif isinstance(run, TrainedModel):
        name = run_name(run.checkpoint) if run.checkpoint else "model"
    else:
        raise AttnGuideError(
            f"a run must be a run folder, a checkpoint path or a TrainedModel (load_model(...)), "
            f"not {type(run).__name__}"
        )
    return Run(name, run.guide(), list(run.class_names), run.multilabel,
                str(run.config.get("guidance", "")), int(run.image_size))


@dataclass
class Images:
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


def gather(data: Any, indices: Sequence[int] | None, labels: Any, masks: Any, split: str,
            run: Run, image_size: int, n_default: int) -> Images:
    """The images to draw: a data set folder, a data set or an (N, 3, H, W) tensor, the
    chosen ``indices`` (default: ``n_default`` spread over the set), checked against ``run``."""
    if isinstance(data, (str, os.PathLike)):
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
    return Images(stacked, classes, mask_list, titles, predicted, mean, std)


def _probabilities(logits: Tensor, multilabel: bool) -> Tensor:
    return logits.float().sigmoid() if multilabel else logits.float().softmax(dim=1)


def attend(run: Run, images: Tensor, classes: Tensor, batch: int = 8) -> dict[str, Tensor]:
    """Attention, erased images and class probabilities of (image, class) pairs.

    Args:
        images: (N, 3, H, W) normalised; classes: (N, K) int64.

    Returns:
        ``attention`` (N, K, H, W) in [0, 1], ``erased`` (N, K, 3, H, W) normalised,
        ``p`` (N, K) probability of the class on the image, ``p_erased`` (N, K) on I*.
    """
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
