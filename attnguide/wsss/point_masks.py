"""Clicks to pixel masks with a dense CRF: the counterpart of :mod:`attnguide.wsss.box_masks`
for a click per object (the annotation of "What's the Point", Bearman et al., ECCV 2016).

A click says which object is where, not how far it reaches. Around each click a disc
(``radius`` of the image's shorter side) is taken as the click's class, every pixel farther
than ``reach`` of the shorter side from all clicks as background, and a dense CRF on the
image (:func:`attnguide.wsss.crf.crf_from_labels`) decides the pixels in between by colour
and position. A pixel ends up background or the class of a click within its reach, never
another class. ``reach`` is the assumption: no object extends farther than that from its
click (the defaults, 0.1 and 0.5, were chosen on the composite real pictures' training
split against their true masks: benchmarks/RESULTS.md, "Boxes, clicks or masks").

Pure numpy; nothing here reads files (``attnguide data point-masks`` does that, in
:mod:`attnguide.tasks.annotation_masks`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from attnguide.constants import IGNORE
from attnguide.data.io import read_rgb
from attnguide.errors import AttnGuideError
from attnguide.io.labels import save_label_png
from attnguide.wsss.box_masks import check_classes, seeded_crf
from attnguide.wsss.crf import CRFParams

__all__ = ["point_mask", "point_mask_job", "point_seeds"]


def point_seeds(points: Sequence[Sequence[float]], size: tuple[int, int], radius: float = 0.1,
                reach: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Seed label map and the allowed labels of each pixel from ``(class, x, y)`` clicks.

    Args:
        points: 0-based classes and click positions in pixels (the folder data set's ``points``).
        size: ``(H, W)`` of the image.
        radius: radius of the disc seeded as the click's class, a share of ``min(H, W)``.
        reach: how far an object may extend from its click, a share of ``min(H, W)``;
            beyond it from every click a pixel is seeded background.

    Returns:
        ``seeds`` uint8 (H, W): ``class + 1`` in a click's disc (the nearest click's where
        discs overlap), 0 beyond every click's reach, 255 in between;
        ``allowed`` bool (H, W, C + 1) with ``C`` the largest class + 1: background
        everywhere, a class within the reach of one of its clicks.
    """
    if not 0.0 < radius < reach:
        raise AttnGuideError(f"the click radius must lie in (0, reach={reach}), got {radius}")
    height, width = size
    side = min(height, width)
    n_labels = 1 + max((int(p[0]) + 1 for p in points), default=0)
    seeds = np.zeros((height, width), np.uint8)
    allowed = np.zeros((height, width, n_labels), bool)
    allowed[..., 0] = True
    if not points:
        return seeds, allowed
    ys, xs = np.mgrid[:height, :width]
    centres = ys + 0.5, xs + 0.5  # pixel centres, as box_raster takes them
    dist = np.stack([np.hypot(centres[1] - x, centres[0] - y) for _, x, y in points])  # (P, H, W)
    classes = np.array([int(p[0]) + 1 for p in points])
    for k, cls in enumerate(classes):
        allowed[dist[k] <= reach * side, cls] = True
    nearest = dist.argmin(axis=0)
    near = dist.min(axis=0)
    seeds[near <= reach * side] = IGNORE
    disc = near <= radius * side
    seeds[disc] = classes[nearest[disc]]
    return seeds, allowed


def point_mask(image: np.ndarray, points: Sequence[Sequence[float]], num_classes: int,
               radius: float = 0.1, reach: float = 0.5, params: CRFParams | None = None) -> np.ndarray:
    """A label map (VOC convention: 0 background, ``class + 1``) of an image from its clicks.

    Args:
        image: uint8 (H, W, 3) RGB.
        points: ``(class, x, y)`` with 0-based classes below ``num_classes``.
        num_classes: the data set's classes (background excluded).
        radius, reach: see :func:`point_seeds`.
        params: CRF settings; IRN's (``gt_prob`` 0.7) when None.

    Returns:
        uint8 (H, W); all background when there is no click.

    Example:
        >>> img = np.full((16, 16, 3), 128, np.uint8); img[4:12, 4:12] = 255   # a white square
        >>> point_mask(img, [(0, 8, 8)], num_classes=1, radius=0.1, reach=0.4)[8].tolist()
        [0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0]
    """
    height, width = image.shape[:2]
    check_classes(points, num_classes, "click")
    if not points:
        return np.zeros((height, width), np.uint8)
    seeds, allowed = point_seeds(points, (height, width), radius, reach)
    return seeded_crf(image, seeds, allowed, num_classes, params, fallback=0)  # beyond reach: background


def point_mask_job(image_path: str, points: Sequence[Sequence[float]], num_classes: int, radius: float,
                   reach: float, params: CRFParams, out_path: str) -> np.ndarray:
    """:func:`point_mask` of an image file, written atomically to ``out_path`` as a VOC-palette
    PNG (a module-level function for :class:`~attnguide.wsss.crf.CRFPool` workers)."""
    label = point_mask(read_rgb(image_path), points, num_classes, radius, reach, params)
    save_label_png(out_path, label)
    return label
