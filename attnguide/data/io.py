"""Reading RGB images and checking label maps, with errors that name the file.

Label-map PNGs themselves are read and written by :mod:`attnguide.io.labels`
(``load_label_png``, ``save_label_png``, the VOC palette); ``attnguide.data``
re-exports them as ``read_label_map``, ``write_label_png`` and ``VOC_PALETTE``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from attnguide.constants import IGNORE
from attnguide.errors import AttnGuideError


def _where(path: Path, source: str | None) -> str:
    return f"{path}" + (f" (listed at {source})" if source else "")


def read_rgb(path: Path, source: str | None = None) -> np.ndarray:
    """Decode an image file to (H, W, 3) uint8 RGB.

    Args:
        path: the image file.
        source: where the file was listed (e.g. ``"train.csv line 4"``), for the message.

    Raises:
        FileNotFoundError: the file is missing.
        AttnGuideError: the file cannot be decoded as an image.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file {_where(path, source)} does not exist")
    try:
        with Image.open(path) as image:
            return np.array(image.convert("RGB"))  # a writable copy
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise AttnGuideError(
            f"cannot decode image {_where(path, source)}: {err}. "
            "Replace the file with a valid JPEG/PNG or remove its row."
        ) from err


def check_label_values(mask: np.ndarray, num_classes: int, path: Path, source: str | None) -> None:
    """Raise if an (H, W) label map holds a value other than 0..num_classes or 255."""
    present = np.flatnonzero(np.bincount(mask.ravel(), minlength=256))
    bad = [int(v) for v in present if num_classes < v < IGNORE]
    if bad:
        raise AttnGuideError(
            f"mask {_where(path, source)} holds label values {bad[:10]} but the data set has "
            f"{num_classes} classes (valid values: 0 background, 1..{num_classes}, 255 ignore)"
        )


def labels_in_mask(mask: np.ndarray) -> tuple[int, ...]:
    """Class indices (0-based, background excluded) present in an (H, W) label map."""
    present = np.flatnonzero(np.bincount(mask.ravel(), minlength=256))
    return tuple(int(v) - 1 for v in present if 0 < v < IGNORE)
