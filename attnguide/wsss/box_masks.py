"""Boxes to pixel masks with a dense CRF, in the manner of "Simple Does It" (Khoreva et al.,
CVPR 2017), who filled boxes with GrabCut before training a segmenter on them.

A box says where an object is, not which of its pixels are the object. Inside each box the
central part (``inner`` of its width and height) is taken as the box's class, the rest of
the box is left open, and everything outside every box is background; a dense CRF on the
image (:func:`attnguide.wsss.crf.crf_from_labels`) then decides the open pixels by colour
and position. A pixel ends up background or the class of a box that holds it, never
another class. The assumption is the paper's: the centre of a box lies on its object (an
object with a hole in the middle, a ring, loses that hole's pixels to the object).

Pure numpy; nothing here reads files (``attnguide data box-masks`` does that, in
:mod:`attnguide.tasks.annotation_masks`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from attnguide.constants import IGNORE
from attnguide.core.annotations import box_raster
from attnguide.data.io import read_rgb
from attnguide.errors import AttnGuideError
from attnguide.io.labels import save_label_png
from attnguide.wsss.crf import CRFParams, crf_from_labels

__all__ = ["box_seeds", "box_mask", "box_mask_job", "check_classes", "seeded_crf"]


def box_seeds(boxes: Sequence[Sequence[float]], size: tuple[int, int], inner: float = 0.7,
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seed label map, the allowed labels of each pixel and its box's label, from
    ``(class, x0, y0, x1, y1)`` boxes.

    Args:
        boxes: 0-based classes and corners in pixels (the folder data set's ``boxes``).
        size: ``(H, W)`` of the image.
        inner: side of each box's central part taken as its class, as a share of the box's.

    Returns:
        ``seeds`` uint8 (H, W): 0 outside every box, ``class + 1`` in a box's central part,
        255 in the rest of a box (smaller boxes are drawn over larger ones);
        ``allowed`` bool (H, W, C + 1) with ``C`` the largest class + 1: background
        everywhere, a class inside its boxes;
        ``owner`` uint8 (H, W): ``class + 1`` of the smallest box that holds the pixel, 0
        outside every box.
    """
    if not 0.0 < inner <= 1.0:
        raise AttnGuideError(f"inner must lie in (0, 1], got {inner}")
    height, width = size
    n_labels = 1 + max((int(b[0]) + 1 for b in boxes), default=0)
    seeds = np.zeros((height, width), np.uint8)
    owner = np.zeros((height, width), np.uint8)
    allowed = np.zeros((height, width, n_labels), bool)
    allowed[..., 0] = True
    by_area = sorted(boxes, key=lambda b: (b[3] - b[1]) * (b[4] - b[2]), reverse=True)
    for cls, x0, y0, x1, y1 in by_area:
        region = box_raster((x0, y0, x1, y1), size, None).numpy()
        seeds[region] = IGNORE
        owner[region] = int(cls) + 1
        allowed[region, int(cls) + 1] = True
        cx, cy, hw, hh = (x0 + x1) / 2, (y0 + y1) / 2, inner * (x1 - x0) / 2, inner * (y1 - y0) / 2
        seeds[box_raster((cx - hw, cy - hh, cx + hw, cy + hh), size, None).numpy()] = int(cls) + 1
    return seeds, allowed, owner


def box_mask(image: np.ndarray, boxes: Sequence[Sequence[float]], num_classes: int,
             inner: float = 0.7, params: CRFParams | None = None) -> np.ndarray:
    """A label map (VOC convention: 0 background, ``class + 1``) of an image from its boxes.

    Args:
        image: uint8 (H, W, 3) RGB.
        boxes: ``(class, x0, y0, x1, y1)`` with 0-based classes below ``num_classes``.
        num_classes: the data set's classes (background excluded).
        inner: see :func:`box_seeds`.
        params: CRF settings; IRN's (``gt_prob`` 0.7) when None.

    Returns:
        uint8 (H, W); all background when there is no box.

    Example:
        >>> img = np.zeros((8, 8, 3), np.uint8); img[2:6, 2:6] = 255   # a white square
        >>> box_mask(img, [(0, 1, 1, 7, 7)], num_classes=1)[3].tolist()   # its box is larger
        [0, 0, 1, 1, 1, 1, 0, 0]
    """
    height, width = image.shape[:2]
    check_classes(boxes, num_classes, "box")
    if not boxes:
        return np.zeros((height, width), np.uint8)
    seeds, allowed, owner = box_seeds(boxes, (height, width), inner)
    # a label the pixel's boxes do not allow: the class of the smallest box that holds it
    return seeded_crf(image, seeds, allowed, num_classes, params, fallback=owner)


def check_classes(annotations: Sequence[Sequence[float]], num_classes: int, word: str) -> None:
    """Refuse ``(class, ...)`` annotations whose 0-based class is not below ``num_classes``."""
    if any(not 0 <= int(a[0]) < num_classes for a in annotations):
        raise AttnGuideError(f"{word} classes must lie in 0..{num_classes - 1}, got "
                             f"{sorted({int(a[0]) for a in annotations})}")


def seeded_crf(image: np.ndarray, seeds: np.ndarray, allowed: np.ndarray, num_classes: int,
               params: CRFParams | None, fallback: np.ndarray | int) -> np.ndarray:
    """The dense CRF's labels from ``seeds`` (255 open), where a pixel's ``allowed`` (H, W, L)
    excludes the CRF's label replaced by ``fallback`` (a label map or one label)."""
    height, width = seeds.shape
    labels = crf_from_labels(image, seeds, num_classes + 1, params or CRFParams())
    padded = np.zeros((height, width, num_classes + 1), bool)
    padded[..., :allowed.shape[-1]] = allowed
    ok = np.take_along_axis(padded, labels[..., None].astype(np.int64), axis=-1)[..., 0]
    return np.where(ok, labels, fallback).astype(np.uint8)


def box_mask_job(image_path: str, boxes: Sequence[Sequence[float]], num_classes: int, inner: float,
                 params: CRFParams, out_path: str) -> np.ndarray:
    """:func:`box_mask` of an image file, written atomically to ``out_path`` as a VOC-palette
    PNG (a module-level function for :class:`~attnguide.wsss.crf.CRFPool` workers)."""
    label = box_mask(read_rgb(image_path), boxes, num_classes, inner, params)
    save_label_png(out_path, label)
    return label
