"""`make_tiny_voc`: a few-image PASCAL VOC 2012 folder (with SBD) for tests and smoke runs.

Everything a real VOC folder has, at toy scale: JPEGs of slightly different
sizes, palette-PNG masks with a 255 border around each object, XML
annotations (an image's second object, when it has one, is marked
``difficult``), split lists and, with
``sbd=True``, SBD-style index masks in ``SegmentationClassAug`` plus
``train_aug.txt`` (train images and SBD-only images, never val images).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from attnguide.constants import IGNORE
from attnguide.data.voc import VOC_CLASSES
from attnguide.errors import AttnGuideError
from attnguide.io.labels import VOC_PALETTE, save_label_png

BORDER = 2
"""Width of the 255 ("ignore") outline drawn around objects in VOC masks."""


def make_tiny_voc(
    root: str | Path,
    n_train: int = 6,
    n_val: int = 4,
    image_size: tuple[int, int] = (64, 80),
    seed: int = 0,
    sbd: bool = True,
) -> Path:
    """Write ``root/VOCdevkit/VOC2012`` with `n_train` + `n_val` segmentation images.

    Args:
        root: parent folder (created if needed).
        n_train, n_val: images in ``train.txt`` and ``val.txt``.
        image_size: (height, width) around which each image's size varies by +-4 px.
        seed: same seed gives the same folder.
        sbd: also write SBD-style ``SegmentationClassAug`` masks ("L" PNGs,
            without 255 borders for SBD-only images) for all images plus
            `n_train` SBD-only images, and ``ImageSets/Segmentation/train_aug.txt``.

    Returns:
        The ``VOC2012`` folder.
    """
    if min(image_size) < 32:
        raise AttnGuideError(
            f"make_tiny_voc: image_size must be at least (32, 32), got {image_size}"
        )
    voc = Path(root).expanduser() / "VOCdevkit" / "VOC2012"
    for folder in ("JPEGImages", "SegmentationClass", "Annotations", "ImageSets/Segmentation"):
        (voc / folder).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    splits = {
        "train": [f"2007_{i:06d}" for i in range(n_train)],
        "val": [f"2007_{100000 + i:06d}" for i in range(n_val)],
    }
    sbd_only = [f"2008_{i:06d}" for i in range(n_train)] if sbd else []
    if sbd:
        (voc / "SegmentationClassAug").mkdir(exist_ok=True)
        splits["train_aug"] = splits["train"] + sbd_only
    for image_id in splits["train"] + splits["val"] + sbd_only:
        _write_image(voc, image_id, rng, image_size, voc_mask=image_id not in sbd_only, sbd=sbd)
    splits["trainval"] = splits["train"] + splits["val"]
    for split, ids in splits.items():
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text(
            "".join(f"{i}\n" for i in ids)
        )
    return voc


def _write_image(
    voc: Path,
    image_id: str,
    rng: np.random.Generator,
    image_size: tuple[int, int],
    voc_mask: bool,
    sbd: bool,
) -> None:
    """Draw one image with 1-2 non-overlapping objects; write its JPEG, masks and XML."""
    height, width = (int(s + rng.integers(-4, 5)) for s in image_size)
    image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8) // 2 + 64)
    mask = Image.new("L", (width, height), 0)
    image_draw, mask_draw = ImageDraw.Draw(image), ImageDraw.Draw(mask)
    objects = []
    count = int(rng.integers(1, 3))
    for slot, cls in enumerate(rng.choice(len(VOC_CLASSES), count, replace=False)):
        box = _box_in_slot(rng, slot, count, height, width)
        colour = tuple(int(v) for v in VOC_PALETTE[int(cls) + 1])
        ellipse = bool(rng.integers(2))
        for draw, fill in ((image_draw, colour), (mask_draw, int(cls) + 1)):
            (draw.ellipse if ellipse else draw.rectangle)(box, fill=fill)
        objects.append((VOC_CLASSES[int(cls)], box, slot == 1))
    image.save(voc / "JPEGImages" / f"{image_id}.jpg", quality=95)
    labels = np.asarray(mask)
    bordered = _with_border(labels)
    if voc_mask:
        save_label_png(voc / "SegmentationClass" / f"{image_id}.png", bordered)
    if sbd:
        aug = bordered if voc_mask else labels
        save_label_png(voc / "SegmentationClassAug" / f"{image_id}.png", aug, palette=False)
    _write_annotation(voc / "Annotations" / f"{image_id}.xml", image_id, (height, width), objects)


def _box_in_slot(
    rng: np.random.Generator, slot: int, count: int, height: int, width: int
) -> tuple[int, ...]:
    """A box inside column `slot` of `count` equal columns, away from the edges."""
    left, right = width * slot // count + 3, width * (slot + 1) // count - 3
    x0 = int(rng.integers(left, left + (right - left) // 3))
    y0 = int(rng.integers(3, height // 3))
    x1 = int(rng.integers(x0 + (right - x0) // 2, right))
    y1 = int(rng.integers(y0 + height // 3, height - 3))
    return (x0, y0, x1, y1)


def _with_border(labels: np.ndarray) -> np.ndarray:
    """Copy of an (H, W) label map with `IGNORE` on pixels within BORDER of a label change."""
    padded = np.pad(labels, BORDER, mode="edge")
    height, width = labels.shape
    edge = np.zeros(labels.shape, dtype=bool)
    for dy in range(-BORDER, BORDER + 1):
        for dx in range(-BORDER, BORDER + 1):
            shifted = padded[BORDER + dy : BORDER + dy + height, BORDER + dx : BORDER + dx + width]
            edge |= shifted != labels
    return np.where(edge, IGNORE, labels).astype(np.uint8)


def _write_annotation(
    path: Path,
    image_id: str,
    size: tuple[int, int],
    objects: list[tuple[str, tuple[int, ...], bool]],
) -> None:
    annotation = ET.Element("annotation")
    ET.SubElement(annotation, "folder").text = "VOC2012"
    ET.SubElement(annotation, "filename").text = f"{image_id}.jpg"
    size_node = ET.SubElement(annotation, "size")
    for tag, value in (("width", size[1]), ("height", size[0]), ("depth", 3)):
        ET.SubElement(size_node, tag).text = str(value)
    ET.SubElement(annotation, "segmented").text = "1"
    for name, (x0, y0, x1, y1), difficult in objects:
        node = ET.SubElement(annotation, "object")
        ET.SubElement(node, "name").text = name
        ET.SubElement(node, "pose").text = "Unspecified"
        ET.SubElement(node, "truncated").text = "0"
        ET.SubElement(node, "difficult").text = str(int(difficult))
        box = ET.SubElement(node, "bndbox")
        for tag, value in (("xmin", x0 + 1), ("ymin", y0 + 1), ("xmax", x1 + 1), ("ymax", y1 + 1)):
            ET.SubElement(box, tag).text = str(value)
    ET.ElementTree(annotation).write(path)
