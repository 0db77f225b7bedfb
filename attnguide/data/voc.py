"""PASCAL VOC 2012 segmentation folders, with the SBD "train_aug" extension.

Expected layout (the ``VOC2012`` folder itself, its ``VOCdevkit`` parent, or
any folder holding ``VOC2012/`` is accepted)::

    VOC2012/
      JPEGImages/{id}.jpg
      SegmentationClass/{id}.png       palette PNGs (indices are labels)
      SegmentationClassAug/{id}.png    optional, SBD masks as index PNGs
      Annotations/{id}.xml
      ImageSets/Segmentation/{train,val}.txt (+ train_aug.txt with SBD)

A mask comes from SegmentationClass when it has the image, else from
SegmentationClassAug. Image-level labels come from the mask (values other than
0 and 255, minus 1) when there is one, else from the XML object names
(difficult objects included: they are present in the image).

With ``boxes=True`` (``open_dataset(..., annotations="boxes")``, ``attnguide train
--annotations boxes``) each image's ``<object><bndbox>`` entries become its boxes
(VOC's 1-based inclusive corners ``xmin..xmax`` become ``(xmin - 1, ymin - 1, xmax,
ymax)``); boxes of a class that the image's mask does not show are left out (the labels
come from the mask).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from attnguide.data.io import check_label_values, labels_in_mask
from attnguide.data.sample import Sample
from attnguide.errors import AttnGuideError
from attnguide.io.labels import load_label_png

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip
"""The 20 VOC classes in the standard order: class k has mask value k + 1."""

SPLIT_FOLDERS = ("ImageSets/Segmentation", "ImageSets/SegmentationAug", "SegmentationClassAug")
"""Where a split list ``{split}.txt`` is looked for, in this order."""


def is_voc_root(path: Path) -> bool:
    """True when `path` holds ``JPEGImages/`` and ``ImageSets/Segmentation/``."""
    return (path / "JPEGImages").is_dir() and (path / "ImageSets" / "Segmentation").is_dir()


def find_voc_root(path: Path) -> Path | None:
    """The VOC2012 folder at `path`, under ``path/VOC2012`` or ``path/VOCdevkit/VOC2012``."""
    for candidate in (path, path / "VOC2012", path / "VOCdevkit" / "VOC2012"):
        if is_voc_root(candidate):
            return candidate
    return None


def read_voc_split(root: Path, split: str, boxes: bool = False,
                   ) -> tuple[list[str], list[Sample], list[str]]:
    """List a VOC split; labels come from masks (decoded here) or XML annotations;
    ``boxes``: each image's XML boxes too (an image without an XML file is an error).

    Returns:
        class_names (`VOC_CLASSES`), samples, sources (``"train.txt line 3"`` for each).
    """
    list_path = _split_list(root, split)
    samples, sources, seen = [], [], {}
    lines = list_path.read_text(encoding="utf-8").splitlines()
    for line_number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        source = f"{list_path.relative_to(root).as_posix()} line {line_number}"
        image_id = Path(line.split()[0]).stem  # plain ids or "/JPEGImages/id.jpg /Seg.../id.png"
        if image_id in seen:
            raise AttnGuideError(
                f"{source}: image {image_id!r} is already listed at {seen[image_id]}"
            )
        seen[image_id] = source
        samples.append(_read_sample(root, image_id, source, boxes))
        sources.append(source)
    return list(VOC_CLASSES), samples, sources


def _split_list(root: Path, split: str) -> Path:
    for folder in SPLIT_FOLDERS:
        candidate = root / folder / f"{split}.txt"
        if candidate.is_file():
            return candidate
    searched = ", ".join(f"{folder}/{split}.txt" for folder in SPLIT_FOLDERS)
    if split == "train_aug":
        raise FileNotFoundError(
            f"split 'train_aug' needs the SBD list train_aug.txt in {root} ({searched} searched). "
            "Add SBD: put its masks in SegmentationClassAug/ and train_aug.txt in "
            "ImageSets/Segmentation/, or use split='train'."
        )
    available = sorted({p.stem for folder in SPLIT_FOLDERS for p in (root / folder).glob("*.txt")})
    raise FileNotFoundError(
        f"no list for split {split!r} in {root} (searched {searched}); "
        f"splits found: {available or 'none'}"
    )


def _read_sample(root: Path, image_id: str, source: str, boxes: bool = False) -> Sample:
    image_path = root / "JPEGImages" / f"{image_id}.jpg"
    if not image_path.is_file():
        raise FileNotFoundError(f"{source}: image {image_path} does not exist")
    mask_path = _find_mask(root, image_id)
    if mask_path is not None:
        mask = load_label_png(mask_path, source)
        check_label_values(mask, len(VOC_CLASSES), mask_path, source)
        labels = labels_in_mask(mask)
    else:
        labels = _labels_from_xml(root / "Annotations" / f"{image_id}.xml", source)
    found = ()
    if boxes:
        found = tuple(b for b in read_xml_boxes(root / "Annotations" / f"{image_id}.xml", source)
                      if b[0] in labels)
    return Sample(name=image_id, image_path=image_path, labels=labels, mask_path=mask_path,
                  boxes=found)


def read_xml_boxes(xml_path: Path, source: str) -> list[tuple[int, float, float, float, float]]:
    """``(class, x0, y0, x1, y1)`` of each ``<object>`` of a VOC annotation, in continuous
    pixel coordinates (``xmin - 1``, ``ymin - 1``, ``xmax``, ``ymax``)."""
    if not xml_path.is_file():
        raise FileNotFoundError(f"{source}: --annotations boxes needs {xml_path}, which does not "
                                "exist; add VOC's Annotations/ folder or train without boxes")
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as err:
        raise AttnGuideError(f"cannot parse annotation {xml_path} ({source}): {err}") from err
    out = []
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        if name not in VOC_CLASSES:
            raise AttnGuideError(f"annotation {xml_path} ({source}) names unknown class {name!r}; "
                                 f"VOC classes: {list(VOC_CLASSES)}")
        box = obj.find("bndbox")
        try:
            xmin, ymin, xmax, ymax = (float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
        except (AttributeError, TypeError, ValueError):
            raise AttnGuideError(f"annotation {xml_path} ({source}): an object {name!r} has no "
                                 "numeric bndbox xmin/ymin/xmax/ymax") from None
        if xmax < xmin or ymax < ymin:
            raise AttnGuideError(f"annotation {xml_path} ({source}): the {name!r} box "
                                 f"{xmin:g},{ymin:g},{xmax:g},{ymax:g} has xmax < xmin or ymax < ymin")
        out.append((VOC_CLASSES.index(name), xmin - 1, ymin - 1, xmax, ymax))
    return out


def _find_mask(root: Path, image_id: str) -> Path | None:
    for folder in ("SegmentationClass", "SegmentationClassAug"):
        candidate = root / folder / f"{image_id}.png"
        if candidate.is_file():
            return candidate
    return None


def _labels_from_xml(xml_path: Path, source: str) -> tuple[int, ...]:
    """Sorted class indices of the ``<object><name>`` entries of a VOC annotation."""
    if not xml_path.is_file():
        raise FileNotFoundError(
            f"{source}: image {xml_path.stem!r} has no mask (SegmentationClass/, "
            f"SegmentationClassAug/) and no annotation {xml_path}; labels cannot be found"
        )
    try:
        tree = ET.parse(xml_path)
    except ET.ParseError as err:
        raise AttnGuideError(f"cannot parse annotation {xml_path} ({source}): {err}") from err
    names = [(obj.findtext("name") or "").strip() for obj in tree.getroot().iter("object")]
    unknown = sorted({name for name in names if name not in VOC_CLASSES})
    if unknown:
        raise AttnGuideError(
            f"annotation {xml_path} ({source}) names unknown class(es) {unknown}; "
            f"VOC classes: {list(VOC_CLASSES)}"
        )
    return tuple(sorted({VOC_CLASSES.index(name) for name in names}))
