"""`Sample`: one row of a split, as listed on disk (nothing decoded)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Sample:
    """One image of a split.

    Attributes:
        name: identifier, unique within the split (VOC: the image id; folder
            data set: the image path relative to the root, without suffix).
        image_path: the RGB image file.
        labels: sorted 0-based indices of the classes present (background excluded).
        mask_path: the label-map PNG (VOC convention), or None when the image has none.
        labels_known: False for a row whose labels cell was left empty where labels are
            optional (``open_dataset(..., require_labels=False)``): its ``labels`` are
            unknown, not "none" (that is ``-``).
    """

    name: str
    image_path: Path
    labels: tuple[int, ...]
    mask_path: Path | None
    labels_known: bool = True
