"""`open_dataset`: one entry point for folder data sets and VOC 2012, one item format.

Each item is a dict (default collation stacks it)::

    image        (3, S, S) float32, ImageNet-normalised
    labels       (C,) float32 multi-hot (also for single-label data)
    mask         (S, S) int64, 0 background, k = k-th class from 1, 255 ignore
                 (all 255 when the image has no mask; the real mask otherwise,
                 also outside the pixel-labelled subset, for evaluation)
    pixel_label  () bool, True iff the mask may supervise attention
                 (the image has a mask, masks are among ``ds.annotation_kinds`` and
                 the image is in ``ds.pixel_labelled``)
    index        int, position in ``ds.samples``
    annotations  dict, only when ``ds.annotation_kinds`` holds more than masks: the
                 image's other annotations after the same geometry as the image
                 (``boxes`` (N, 5), ``points`` (N, 3), ``scribble`` (S, S), ``avoid``
                 (S, S) bool; see `attnguide.core.annotations`), empty outside
                 ``ds.pixel_labelled``. Batch such items with `collate` (it makes an
                 `Annotations` of them); the training loader does.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from attnguide.core.annotations import KINDS, Annotations
from attnguide.core.guidance import parse_annotation_kinds
from attnguide.data.folder import CLASSES_FILE, is_folder_dataset, read_folder_split
from attnguide.data.io import check_label_values, labels_in_mask, read_image_size, read_rgb
from attnguide.data.sample import Sample
from attnguide.data.transforms import apply_sample, joint_transform
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
    ``pixel_labelled`` (indices whose annotations may be used as supervision: the union
    of ``mask_labelled``, whose masks and scribbles may, and ``box_labelled``, whose boxes,
    clicks and avoid regions may), ``annotation_kinds`` (the kinds used) and
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
        annotation_kinds: frozenset[str] = frozenset({"mask"}),
        pixel_labels: int | str | None = None,
        seed: int = 0,
        annotated: int | str | None = "same",
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
        self.annotation_kinds = frozenset(annotation_kinds)
        self.pixel_labels, self.seed, self.annotated = pixel_labels, seed, annotated
        self.transform = joint_transform(image_size, train)
        self.mask_labelled = self.box_labelled = set(pixel_labelled)

    def _draw(self) -> None:
        """``pixel_labelled`` and its two parts: ``mask_labelled`` (whose masks and scribbles
        supervise) and ``box_labelled`` (whose boxes, clicks and avoid regions do): one draw
        among the images with any chosen kind (``annotated="same"``), or two."""
        kinds = self.annotation_kinds
        if self.annotated == "same":
            both = select_pixel_labelled(self.samples, self.pixel_labels, self.seed, kinds)
            self.mask_labelled = self.box_labelled = both
        else:
            self.mask_labelled = select_pixel_labelled(
                self.samples, self.pixel_labels, self.seed, kinds & {"mask", "scribble"})
            self.box_labelled = select_pixel_labelled(
                self.samples, self.annotated, self.seed, kinds - {"mask", "scribble"})
        self.pixel_labelled = self.mask_labelled | self.box_labelled

    def available_kinds(self) -> frozenset[str]:
        """The annotation kinds some image of the split has (whether used or not)."""
        return frozenset().union(*(s.kinds for s in self.samples))

    def use_annotations(self, kinds) -> ImageLabelDataset:
        """Keep only these annotation kinds for supervision (``--annotations`` after the
        guidance is known) and draw ``pixel_labelled`` again among the images that have
        one of them (same ``pixel_labels`` and seed). Returns self."""
        self.annotation_kinds = frozenset(kinds) & self.annotation_kinds
        self._draw()
        return self

    def __len__(self) -> int:
        return len(self.samples)

    def __repr__(self) -> str:
        kind = "multi-label" if self.multilabel else "single-label"
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, "
            f"{len(self)} images, {self.num_classes} classes, {kind}, "
            f"{len(self.pixel_labelled)} pixel-labelled, image_size={self.image_size})"
        )

    @property
    def has_annotations(self) -> bool:
        """Whether items carry an ``annotations`` dict (kinds other than masks are used)."""
        return bool(self.annotation_kinds - {"mask"})

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int | dict]:
        image, mask = self._load(index)
        chosen = index in self.mask_labelled
        raw = self._load_annotations(index, image.shape[1], image.shape[0]) if (
            self.has_annotations and (index in self.box_labelled or index in self.mask_labelled)) else {}
        if index not in self.box_labelled:  # its masks / scribbles only
            raw = {k: v for k, v in raw.items() if k == "scribble"}
        if not chosen:
            raw.pop("scribble", None)
        image_t, mask_t, extra = apply_sample(self.transform, image, mask, raw)  # (3, S, S), (S, S)
        labels = torch.zeros(self.num_classes, dtype=torch.float32)
        labels[list(self.samples[index].labels)] = 1.0
        has_pixels = mask is not None and chosen and "mask" in self.annotation_kinds
        item = {
            "image": image_t,
            "labels": labels,
            "mask": mask_t,
            "pixel_label": torch.tensor(has_pixels),
            "index": index,
        }
        if self.has_annotations:
            item["annotations"] = extra
        return item

    def _load_annotations(self, index: int, width: int, height: int) -> dict[str, np.ndarray]:
        """The chosen annotation kinds of sample ``index`` but the mask, checked against its
        (width, height), in pixels of the stored image."""
        sample, source = self.samples[index], self.sources[index]
        _check_annotations(sample, width, height, source, self.class_names)
        kinds, out = self.annotation_kinds, {}
        if "boxes" in kinds and sample.boxes:
            out["boxes"] = np.asarray(sample.boxes, dtype=np.float32)
        if "points" in kinds and sample.points:
            out["points"] = np.asarray(sample.points, dtype=np.float32)
        if "scribble" in kinds and sample.scribble_path is not None:
            out["scribble"] = _read_map(sample.scribble_path, width, height, source, "scribble")
            check_label_values(out["scribble"], len(self.class_names), sample.scribble_path, source)
        if "avoid" in kinds and (sample.avoid or sample.avoid_path is not None):
            region = np.zeros((height, width), dtype=bool)
            if sample.avoid_path is not None:
                region |= _read_map(sample.avoid_path, width, height, source, "avoid region") > 0
            if sample.avoid:
                region |= Annotations([{"avoid": list(sample.avoid)}]).avoid_masks(
                    (height, width))[0][0].numpy()
            out["avoid"] = region
        return out

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
            _check_annotations(sample, width, height, source, self.class_names)


def collate(items: list[dict]) -> dict:
    """`default_collate` for items of `ImageLabelDataset`, with their ``annotations`` dicts
    (variable numbers of boxes and clicks) gathered into one
    `attnguide.core.annotations.Annotations`: pass it as a DataLoader's ``collate_fn``."""
    if not items or not isinstance(items[0], dict) or "annotations" not in items[0]:
        return default_collate(items)
    rest = [{k: v for k, v in item.items() if k != "annotations"} for item in items]
    batch = default_collate(rest)
    batch["annotations"] = Annotations([item["annotations"] or None for item in items])
    return batch


def _read_map(path: Path, width: int, height: int, source: str, what: str) -> np.ndarray:
    values = load_label_png(path, source)
    if values.shape != (height, width):
        raise AttnGuideError(f"{what} {path} is {values.shape[1]}x{values.shape[0]} (WxH) but its "
                             f"image is {width}x{height} ({source}); give it the image's size")
    return values


def _check_annotations(sample: Sample, width: int, height: int, source: str,
                       class_names: list[str]) -> None:
    """Boxes, clicks and avoid boxes of a sample against its image's (width, height)."""
    for kind, rows in (("boxes", [b[1:] for b in sample.boxes]), ("avoid", list(sample.avoid))):
        for x0, y0, x1, y1 in rows:
            if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
                raise AttnGuideError(
                    f"{source}: {kind} box {x0:g},{y0:g},{x1:g},{y1:g} lies outside the image "
                    f"{sample.image_path.name} ({width}x{height}); clip it to 0 <= x <= {width}, "
                    f"0 <= y <= {height}")
    for c, x, y in sample.points:
        if not (0 <= x < width and 0 <= y < height):
            raise AttnGuideError(
                f"{source}: point {class_names[c]}:{x:g},{y:g} lies outside the image "
                f"{sample.image_path.name} ({width}x{height}); clicks need 0 <= x < {width}, "
                f"0 <= y < {height}")


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
    annotations: str | frozenset[str] | None = "masks",
    annotated: int | str | None = "same",
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
        annotations: which annotation kinds may supervise attention: ``"masks"`` (the
            default: masks only, items as before), ``"auto"`` (every kind the split has:
            the folder data set's ``boxes``, ``points``, ``avoid``, ``scribble`` columns),
            or a ','-joined list / set of masks, scribbles, boxes, points, avoid. VOC reads
            the boxes of ``Annotations/*.xml`` only when boxes are named. `pixel_labels`
            then draws among the images that have one of the kinds.
        annotated: ``"same"`` (default): `pixel_labels` chooses the images of every kind; or
            a draw of its own (None / ``"all"``, N, ``"10%"``) for boxes, clicks and avoid
            regions, and `pixel_labels` for masks and scribbles only (200 masks beside
            every image's boxes: ``pixel_labels=200, annotated="all"``).

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
        class_names, samples, sources = read_voc_split(
            root, split, boxes=annotations != "auto" and "boxes" in _kinds(annotations))
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
    have = frozenset().union(*(s.kinds for s in samples))
    kinds = have if annotations == "auto" else _kinds(annotations)
    missing = sorted(kinds - have - {"mask"}, key=KINDS.index)
    if missing:
        raise AttnGuideError(
            f"annotations {', '.join(missing)} were asked for, but no image of split {split!r} "
            f"of {root} has one (the split has: {', '.join(sorted(have)) or 'none'}); add the "
            "CSV column(s) boxes / points / avoid / scribble, or drop them from the annotations")
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
        pixel_labelled=set(),  # drawn below (ds._draw)
        annotation_kinds=kinds,
        pixel_labels=pixel_labels,
        seed=seed,
        annotated=annotated,
    )
    ds._draw()
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


def _kinds(annotations) -> frozenset[str]:
    if isinstance(annotations, str):
        return parse_annotation_kinds(annotations) or frozenset(KINDS)
    return frozenset(annotations)


def select_pixel_labelled(
    samples: list[Sample], pixel_labels: int | str | None, seed: int,
    kinds: frozenset[str] = frozenset({"mask"}),
) -> set[int]:
    """Indices of the samples whose annotations of ``kinds`` (default: masks) may supervise
    attention (see `open_dataset`)."""
    with_mask = [i for i, sample in enumerate(samples) if sample.kinds & set(kinds)]
    if pixel_labels is None or (isinstance(pixel_labels, str) and pixel_labels.strip().lower() == "all"):
        return set(with_mask)
    count = _pixel_label_count(pixel_labels, len(samples))
    if count > len(with_mask):
        raise AttnGuideError(
            f"pixel_labels={pixel_labels!r} asks for {count} labelled images, but only "
            f"{len(with_mask)} of the split's {len(samples)} images have a "
            f"{' or '.join(sorted(kinds))} annotation"
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
