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
        boxes: ``(class, x0, y0, x1, y1)`` in pixels of the stored image (x0 < x1, y0 < y1).
        points: ``(class, x, y)`` clicks in pixels of the stored image.
        avoid: ``(x0, y0, x1, y1)`` regions where no class may look.
        avoid_path: a PNG whose non-zero pixels are regions where no class may look.
        scribble_path: a sparse label-map PNG (VOC convention, 255 where nobody drew).
    """

    name: str
    image_path: Path
    labels: tuple[int, ...]
    mask_path: Path | None
    labels_known: bool = True
    boxes: tuple[tuple[int, float, float, float, float], ...] = ()
    points: tuple[tuple[int, float, float], ...] = ()
    avoid: tuple[tuple[float, float, float, float], ...] = ()
    avoid_path: Path | None = None
    scribble_path: Path | None = None

    @property
    def kinds(self) -> frozenset[str]:
        """The annotation kinds this image has (`attnguide.core.annotations.KINDS`)."""
        have = {"mask": self.mask_path is not None, "scribble": self.scribble_path is not None,
                "boxes": bool(self.boxes), "points": bool(self.points),
                "avoid": bool(self.avoid) or self.avoid_path is not None}
        return frozenset(k for k, v in have.items() if v)
