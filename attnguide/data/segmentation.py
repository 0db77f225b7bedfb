"""Training sets of ``attnguide segment``: a data set split's images with label maps.

:class:`SegmentationSet` pairs each image with its label PNG (``LABELS/<name>.png``
of ``attnguide pseudo-label``, or the data set's own masks), under the same random
geometry; SEC's cue set (:class:`attnguide.engine.segmenter.CueSet`) subclasses it
to read saved CAMs instead. :func:`label_path` is the file layout every label folder
(pseudo labels, CAMs, predictions) shares; :func:`to_input` a whole image as a network's input.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from attnguide.constants import IGNORE, IMAGENET_MEAN, IMAGENET_STD
from attnguide.data.io import read_rgb
from attnguide.errors import AttnGuideError
from attnguide.io.labels import load_label_png

__all__ = ["SegmentationSet", "cams_folder", "label_path", "shown", "to_input"]


def label_path(folder: str | Path, name: str, suffix: str = ".png") -> Path:
    """``folder/<name><suffix>`` for a sample name (which may hold ``/``), kept inside ``folder``."""
    parts = PurePosixPath(name).parts
    if not parts or any(p in ("..", "") for p in parts) or PurePosixPath(name).is_absolute():
        raise AttnGuideError(f"sample name {name!r} cannot be used as a file name inside {folder}")
    return Path(folder).joinpath(*parts[:-1], parts[-1] + suffix)


def to_input(image: np.ndarray, mean: Sequence[float], std: Sequence[float],
             device: torch.device | str = "cpu") -> torch.Tensor:
    """``uint8 (H, W, 3)`` RGB -> normalised ``float32 (3, H, W)`` on ``device`` (a whole
    image as evaluation, pseudo-label and predict feed it to a network)."""
    x = torch.from_numpy(np.ascontiguousarray(image)).to(device).permute(2, 0, 1).float().div_(255)
    m = torch.tensor(mean, dtype=torch.float32, device=device)[:, None, None]
    s = torch.tensor(std, dtype=torch.float32, device=device)[:, None, None]
    return (x - m) / s


class SegmentationSet(Dataset):
    """Images of a split with their label maps, under joint random geometry.

    Items: ``image (3, S, S)`` float32 normalised, ``label (S, S)`` int64 in
    0..C or 255. ``labels_dir`` None uses the data set's own masks.
    """

    def __init__(self, ds, labels_dir: Path | None, crop_size: int, scales: tuple[float, float]) -> None:
        self.ds, self.labels_dir, self.scales = ds, labels_dir, scales
        self.num_classes = ds.num_classes
        fill = tuple(round(255 * m) for m in IMAGENET_MEAN)
        self.geometry = v2.Compose([
            v2.RandomCrop(crop_size, pad_if_needed=True, fill={tv_tensors.Image: fill, tv_tensors.Mask: IGNORE}),
            v2.RandomHorizontalFlip(p=0.5),
            v2.ToDtype(torch.float32, scale=True),  # images only; masks keep their dtype
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ])
        self.paths = [self.label_file(i) for i in range(len(ds))]
        self._check_files()

    def _check_files(self) -> None:
        ds, labels_dir = self.ds, self.labels_dir
        if labels_dir is None:
            unlabelled = [s.name for s in ds.samples if s.mask_path is None]
            if unlabelled:
                raise AttnGuideError(
                    f"--labels gt needs a mask for every image of split {ds.split!r}, but "
                    f"{len(unlabelled)} have none (e.g. {', '.join(unlabelled[:5])}); "
                    "train on pseudo labels with --labels DIR")
        else:
            missing = self._missing()
            if missing:
                raise AttnGuideError(
                    f"label folder {str(labels_dir)!r} lacks {len(missing)} of the {len(ds)} label maps "
                    f"of split {ds.split!r}: {shown(missing)}; run 'attnguide pseudo-label RUN --data "
                    f"{ds.root} --split {ds.split} --out {labels_dir}' (with --resume to complete it)")

    def _missing(self) -> list[str]:
        return [s.name for s, p in zip(self.ds.samples, self.paths) if not p.is_file()]

    def label_file(self, index: int) -> Path:
        sample = self.ds.samples[index]
        if self.labels_dir is None:
            return sample.mask_path
        return label_path(self.labels_dir, sample.name)

    def __len__(self) -> int:
        return len(self.ds)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Image ``uint8 (H, W, 3)`` and label ``uint8 (H, W)`` at the original size."""
        sample = self.ds.samples[index]
        image = read_rgb(sample.image_path)
        path = self.paths[index]
        label = load_label_png(path)
        if label.shape != image.shape[:2]:
            raise AttnGuideError(
                f"label map {path} is {label.shape[1]}x{label.shape[0]} but image "
                f"{sample.image_path} is {image.shape[1]}x{image.shape[0]}; label maps must have "
                "their image's size")
        present = np.flatnonzero(np.bincount(label.ravel(), minlength=256))
        bad = [int(v) for v in present if self.num_classes < v < IGNORE]
        if bad:
            raise AttnGuideError(
                f"label map {path} holds values {bad[:10]} but the data set has {self.num_classes} "
                f"classes (valid: 0 background, 1..{self.num_classes}, 255 ignore)")
        return image, label

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, label = self.load(index)  # (H, W, 3), (H, W)
        img = tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1))
        mask = tv_tensors.Mask(torch.from_numpy(label))
        low, high = self.scales
        factor = random.uniform(low, high)  # seeded per item by the engine's loader
        if factor != 1.0:
            height, width = image.shape[:2]
            size = [max(1, round(height * factor)), max(1, round(width * factor))]
            img, mask = TF.resize(img, size, antialias=True), TF.resize(mask, size)  # masks: nearest
        img, mask = self.geometry(img, mask)
        return {"image": img.as_subclass(torch.Tensor), "label": mask.as_subclass(torch.Tensor).long(),
                "index": index}


def shown(names: list[str], limit: int = 10) -> str:
    """The first ``limit`` names, comma-separated, and how many more (error messages)."""
    more = f" (and {len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def cams_folder(labels: str | Path) -> Path:
    """The folder of ``<name>.npz`` CAMs for ``--mode sec``: ``LABELS/cams`` (what
    ``attnguide pseudo-label --save-cams`` writes), or ``LABELS`` itself when it holds them."""
    labels = Path(labels)
    if (labels / "cams").is_dir():
        return labels / "cams"
    if labels.is_dir() and next(labels.rglob("*.npz"), None) is not None:
        return labels
    raise AttnGuideError(
        f"--mode sec reads the CAMs that 'attnguide pseudo-label --save-cams' writes to OUT/cams/, but "
        f"{str(labels)!r} has no cams/ folder and no .npz file; rerun pseudo-label with --save-cams "
        f"--resume --out {labels}, or train on its label PNGs with --mode pseudo")
