"""`open_dataset`: one entry point for folder data sets and VOC 2012, one item format.

Each item is a dict (default collation stacks it)::

    image        (3, S, S) float32, ImageNet-normalised
    labels       (C,) float32 multi-hot (also for single-label data)
    mask         (S, S) int64, 0 background, k = k-th class from 1, 255 ignore
                 (all 255 when the image has no mask; the real mask otherwise,
                 also outside the pixel-labelled subset, for evaluation)
    pixel_label  () bool, True iff the mask may supervise attention
                 (the image has a mask and is in ``ds.pixel_labelled``)
    index        int, position in ``ds.samples``
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from attnguide.data.folder import CLASSES_FILE, is_folder_dataset, read_folder_split
from attnguide.data.io import check_label_values, labels_in_mask, read_image_size, read_rgb
from attnguide.data.sample import Sample
from attnguide.data.transforms import apply_joint, joint_transform
from attnguide.data.voc import find_voc_root, read_voc_split
from attnguide.errors import AttnGuideError
from attnguide.io.labels import load_label_png

MODES = ("auto", "multi", "single")


class ImageLabelDataset(Dataset):
    """Images with image-level labels and optional VOC-convention masks.

    Build it with `open_dataset`. Attributes: ``root``, ``split``,
    ``image_size``, ``class_names`` (background excluded; class k has mask
    value k + 1), ``num_classes``, ``multilabel``, ``samples``, ``sources``
    (where each sample is listed, e.g. ``"train.csv line 3"``) and
    ``pixel_labelled`` (indices whose masks may be used as supervision) and
    ``mode_reason`` (why the data are single- or multi-label, e.g.
    ``"every row of train.csv has one label"``).
    """

    def __init__(
        self,
        *,
        root: Path,
        split: str,
        class_names: list[str],
        samples: list[Sample],
        sources: list[str],
        multilabel: bool,
        image_size: int,
        train: bool,
        pixel_labelled: set[int],
        mode_reason: str = "",
    ) -> None:
        self.root = root
        self.split = split
        self.class_names = class_names
        self.num_classes = len(class_names)
        self.samples = samples
        self.sources = sources
        self.multilabel = multilabel
        self.image_size = image_size
        self.train = train
        self.pixel_labelled = pixel_labelled
        self.mode_reason = mode_reason
        self.transform = joint_transform(image_size, train)

    def __len__(self) -> int:
        return len(self.samples)

    def __repr__(self) -> str:
        kind = "multi-label" if self.multilabel else "single-label"
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, "
            f"{len(self)} images, {self.num_classes} classes, {kind}, "
            f"{len(self.pixel_labelled)} pixel-labelled, image_size={self.image_size})"
        )

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        image, mask = self._load(index)
        image_t, mask_t = apply_joint(self.transform, image, mask)  # (3, S, S), (S, S)
        labels = torch.zeros(self.num_classes, dtype=torch.float32)
        labels[list(self.samples[index].labels)] = 1.0
        has_pixels = mask is not None and index in self.pixel_labelled
        return {
            "image": image_t,
            "labels": labels,
            "mask": mask_t,
            "pixel_label": torch.tensor(has_pixels),
            "index": index,
        }

    def load_raw(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Image (H, W, 3) uint8 RGB and mask (H, W) int64 or None, at the original size."""
        image, mask = self._load(index)
        return image, None if mask is None else mask.astype(np.int64)

    def _load(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Decode and check sample `index`: (H, W, 3) uint8 image, (H, W) uint8 mask or None."""
        sample, source = self.samples[index], self.sources[index]
        image = read_rgb(sample.image_path, source)
        if sample.mask_path is None:
            return image, None
        mask = load_label_png(sample.mask_path, source)
        _check_mask(mask, image.shape[1], image.shape[0], sample, source, self.class_names)
        return image, mask

    def check_files(self) -> None:
        """Check every listed file before anything is written: each image's header (an
        image, under the pixel limit) and each mask (a label map of its image's size whose
        classes are in its row's labels). Pixels of images are decoded only when used."""
        for sample, source in zip(self.samples, self.sources, strict=True):
            width, height = read_image_size(sample.image_path, source)
            if sample.mask_path is not None:
                mask = load_label_png(sample.mask_path, source)
                _check_mask(mask, width, height, sample, source, self.class_names)


def _check_mask(mask: np.ndarray, width: int, height: int, sample: Sample, source: str,
                class_names: list[str]) -> None:
    """An (H, W) label map against its image's size, the class count and its row's labels."""
    if mask.shape != (height, width):
        raise AttnGuideError(
            f"mask {sample.mask_path} is {mask.shape[1]}x{mask.shape[0]} (WxH) but its image "
            f"{sample.image_path} is {width}x{height} ({source}); masks must have their image's size"
        )
    check_label_values(mask, len(class_names), sample.mask_path, source)
    extra = sorted(set(labels_in_mask(mask)) - set(sample.labels)) if sample.labels_known else []
    if extra:
        names = [class_names[k] for k in extra]
        listed = [class_names[k] for k in sample.labels] or "no class"
        raise AttnGuideError(
            f"mask {sample.mask_path} ({source}) shows {names}, but the row's labels are "
            f"{listed}; add the mask's classes to the labels or fix the mask"
        )


def open_dataset(
    root: str | Path,
    split: str = "train",
    image_size: int = 96,
    train: bool = True,
    pixel_labels: int | str | None = None,
    seed: int = 0,
    mode: str = "auto",
    check_files: bool = True,
    require_labels: bool = True,
) -> ImageLabelDataset:
    """Open a folder data set (``classes.txt`` + CSVs) or a VOC 2012 folder.

    Args:
        root: folder data set, or VOC2012 folder (its ``VOCdevkit`` parent, or
            a folder holding ``VOC2012/``, is accepted too).
        split: folder data set: the CSV stem (``train``, ``val``, ``test``,
            any ``NAME.csv``); VOC: ``train``, ``val``, ``train_aug`` (SBD) or
            any list in ``ImageSets/Segmentation``.
        image_size: side S of the (3, S, S) images and (S, S) masks returned.
        train: random resized crop + horizontal flip (True) or plain resize (False).
        pixel_labels: which masks may supervise attention: None (or ``"all"``) =
            every image with a mask; int N = N of them drawn with `seed`; ``"10%"`` = that
            share of the split's images (rounded), drawn among those with masks.
            Subsets of one seed are nested (N=10 is inside N=20).
        seed: seed of the pixel-label draw.
        mode: ``"auto"`` (folder data set: single-label iff every row has one
            label; VOC: multi-label), ``"multi"`` or ``"single"``; ``ds.mode_reason``
            says why.
        check_files: folder data sets: check every listed file now
            (`ImageLabelDataset.check_files`: image headers, masks decoded), so that a
            broken file stops a command before it writes anything.
        require_labels: folder data sets: an empty ``labels`` cell is an error (training
            needs them; ``-`` says "none of the classes"). False for commands that only
            look at images (pseudo labels with predicted classes, predict, evaluate): such a
            row has unknown labels (``Sample.labels_known`` False).

    Raises:
        FileNotFoundError: `root`, a split list or a listed file is missing.
        AttnGuideError: anything else wrong with the arguments or the files.

    Example:
        >>> ds = open_dataset("data/scenes", "val", image_size=96, train=False)
        >>> ds[0]["image"].shape, ds[0]["mask"].shape
        (torch.Size([3, 96, 96]), torch.Size([96, 96]))
    """
    root = Path(root).expanduser()
    _check_arguments(root, image_size, mode)
    folder = is_folder_dataset(root)
    if folder:
        class_names, samples, sources = read_folder_split(root, split, require_labels)
    elif (voc_root := find_voc_root(root)) is not None:
        root = voc_root
        class_names, samples, sources = read_voc_split(root, split)
    else:
        raise AttnGuideError(
            f"{root} is not a data set: expected a folder data set ({CLASSES_FILE} plus "
            "train.csv/val.csv) or a VOC 2012 folder (JPEGImages/ and ImageSets/Segmentation/, "
            "possibly under VOC2012/ or VOCdevkit/VOC2012/)"
        )
    if not samples:
        raise AttnGuideError(
            f"split {split!r} of {root} lists no image; add rows to it or pick another split"
        )
    multilabel, reason = _data_mode(samples, sources, mode, folder, split)
    ds = ImageLabelDataset(
        root=root,
        split=split,
        class_names=class_names,
        samples=samples,
        sources=sources,
        multilabel=multilabel,
        mode_reason=reason,
        image_size=image_size,
        train=train,
        pixel_labelled=select_pixel_labelled(samples, pixel_labels, seed),
    )
    if folder and check_files:
        ds.check_files()
    return ds


def _check_arguments(root: Path, image_size: int, mode: str) -> None:
    if not root.is_dir():
        raise FileNotFoundError(f"data set folder {root} does not exist")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise AttnGuideError(
            f"image_size must be a positive int (the side S of S x S), got {image_size!r}"
        )
    if mode not in MODES:
        raise AttnGuideError(f"mode must be one of {list(MODES)}, got {mode!r}")


def _data_mode(samples: list[Sample], sources: list[str], mode: str, folder: bool,
               split: str) -> tuple[bool, str]:
    """(multilabel, the reason in words) of a split's labels under ``mode``."""
    not_single = [(s, src) for s, src in zip(samples, sources, strict=True)
                  if s.labels_known and len(s.labels) != 1]  # unknown labels tell nothing
    if mode == "single" and not_single:
        count = len(not_single)
        raise AttnGuideError(
            f"mode='single' needs exactly one label per image, but {count} image(s) have none or "
            f"several (first: {not_single[0][1]}); use mode='multi' or 'auto'"
        )
    if mode != "auto":
        return mode == "multi", f"data mode {mode} was asked for"
    if not folder:
        return True, "VOC is multi-label"
    if not not_single:
        return False, f"every image of split {split!r} has exactly one label"
    sample, source = not_single[0]
    what = "no label" if not sample.labels else f"{len(sample.labels)} labels"
    return True, (f"{len(not_single)} of {len(samples)} images of split {split!r} have not "
                  f"exactly one label (first: {source}, {what})")


def select_pixel_labelled(
    samples: list[Sample], pixel_labels: int | str | None, seed: int
) -> set[int]:
    """Indices of the samples whose masks may supervise attention (see `open_dataset`)."""
    with_mask = [i for i, sample in enumerate(samples) if sample.mask_path is not None]
    if pixel_labels is None or (isinstance(pixel_labels, str) and pixel_labels.strip().lower() == "all"):
        return set(with_mask)
    count = _pixel_label_count(pixel_labels, len(samples))
    if count > len(with_mask):
        raise AttnGuideError(
            f"pixel_labels={pixel_labels!r} asks for {count} pixel-labelled images, but only "
            f"{len(with_mask)} of the split's {len(samples)} images have a mask"
        )
    order = np.random.default_rng(seed).permutation(len(with_mask))
    return {with_mask[j] for j in order[:count]}


def _pixel_label_count(pixel_labels: int | str, num_samples: int) -> int:
    usage = "use None or 'all' (every mask), an int N >= 0, or a percentage string such as '10%'"
    if isinstance(pixel_labels, int) and not isinstance(pixel_labels, bool):
        if pixel_labels < 0:
            raise AttnGuideError(f"pixel_labels={pixel_labels} is negative; {usage}")
        return pixel_labels
    if isinstance(pixel_labels, str) and pixel_labels.strip().endswith("%"):
        try:
            percent = float(pixel_labels.strip()[:-1])
        except ValueError:
            percent = math.nan
        if 0 <= percent <= 100:
            return math.floor(percent / 100 * num_samples + 0.5)
        if percent > 100:
            raise AttnGuideError(f"pixel_labels={pixel_labels!r} is more than 100%; give a "
                                 "percentage of at most 100%, or 'all'")
        if percent < 0:
            raise AttnGuideError(f"pixel_labels={pixel_labels!r} is negative; {usage}")
    raise AttnGuideError(f"pixel_labels={pixel_labels!r} is not understood; {usage}")
