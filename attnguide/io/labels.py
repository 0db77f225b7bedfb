"""Label maps on disk: VOC palette PNGs, written atomically.

A label map is a ``uint8`` array of shape ``(H, W)``: 0 is background, ``k``
the k-th foreground class counting from 1, 255 "ignore" (VOC convention).
On disk it is a palette ("P") PNG whose pixel values are the class indices
and whose palette is the VOC colour map, so that the file is both exact data
and a viewable picture. Greyscale ("L") PNGs with class indices are read too.

Example:
    >>> import numpy as np, tempfile, os
    >>> label = np.array([[0, 1], [15, 255]], dtype=np.uint8)
    >>> path = os.path.join(tempfile.mkdtemp(), "x.png")
    >>> save_label_png(path, label)
    >>> bool((load_label_png(path) == label).all())
    True
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from attnguide.errors import AttnGuideError

__all__ = ["voc_palette", "save_label_png", "load_label_png", "save_overlay"]


def voc_palette() -> np.ndarray:
    """The 256-entry VOC colour map, shape ``(256, 3)``, ``uint8``.

    Entry ``i`` spreads the bits of ``i`` over the three channels, most
    significant first: bit ``3j`` of ``i`` goes to bit ``7 - j`` of red,
    bit ``3j + 1`` to green, bit ``3j + 2`` to blue (``j = 0..7``). Hence
    1 → (128, 0, 0), 2 → (0, 128, 0), 255 → (224, 224, 192).
    """
    palette = np.zeros((256, 3), dtype=np.uint8)
    for index in range(256):
        value, red, green, blue = index, 0, 0, 0
        for shift in range(7, -1, -1):
            red |= (value & 1) << shift
            green |= ((value >> 1) & 1) << shift
            blue |= ((value >> 2) & 1) << shift
            value >>= 3
        palette[index] = (red, green, blue)
    return palette


def _as_label_map(label: np.ndarray, what: str) -> np.ndarray:
    """Check that ``label`` is a 2-D integer map with values in 0..255; return it as uint8."""
    label = np.asarray(label)
    if label.ndim != 2:
        raise AttnGuideError(
            f"{what} must be a 2-D (H, W) label map, got shape {label.shape}; "
            "take the argmax over classes first"
        )
    if label.dtype != np.uint8:
        if not np.issubdtype(label.dtype, np.integer):
            raise AttnGuideError(
                f"{what} must hold integer class indices, got dtype {label.dtype}; "
                "convert probabilities with argmax"
            )
        if label.size and (label.min() < 0 or label.max() > 255):
            raise AttnGuideError(
                f"{what} has values outside 0..255 (min {label.min()}, max {label.max()}); "
                "label maps hold class indices and 255 for ignore"
            )
        label = label.astype(np.uint8)
    return label


def _save_atomically(path: str | os.PathLike, image: Image.Image, format: str) -> None:
    """Write ``image`` to a temporary file next to ``path``, then ``os.replace`` it there.

    A reader never sees a half-written file, and an interrupted run leaves
    no truncated PNG behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # open(..., "xb") rather than mkstemp: the file gets the umask's permissions, not 0600
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
    try:
        with open(tmp, "xb") as stream:
            image.save(stream, format=format)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_label_png(path: str | os.PathLike, label: np.ndarray) -> None:
    """Write ``label`` ``(H, W)`` as a palette PNG with the VOC colours, atomically.

    Args:
        path: destination file; missing parent folders are created.
        label: integer class indices in 0..255 (``uint8`` preferred).
    """
    label = _as_label_map(label, f"label for {os.fspath(path)!r}")
    image = Image.fromarray(label)  # "L"; putpalette turns it into "P" keeping the indices
    image.putpalette(voc_palette().tobytes())
    _save_atomically(path, image, "PNG")


def load_label_png(path: str | os.PathLike) -> np.ndarray:
    """Read a label map written by :func:`save_label_png` (or any "P"/"L" PNG).

    Returns:
        ``uint8`` array ``(H, W)`` of class indices (palette indices for "P").

    Raises:
        FileNotFoundError: ``path`` does not exist.
        AttnGuideError: the file is not a PNG, or is a colour (RGB/RGBA/...)
            image rather than a map of class indices.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label map {str(path)!r} does not exist")
    try:
        with Image.open(path) as image:
            image_format, mode = image.format, image.mode
            if image_format == "PNG" and mode in ("P", "L"):
                return np.array(image, dtype=np.uint8)
    except UnidentifiedImageError as err:
        raise AttnGuideError(f"{str(path)!r} is not an image; expected a label-map PNG") from err
    if image_format != "PNG":
        raise AttnGuideError(
            f"{str(path)!r} is a {image_format} file, not a label map: label maps must be "
            "lossless PNGs (JPEG compression changes class indices)"
        )
    raise AttnGuideError(
        f"{str(path)!r} is not a label map: its mode is {mode!r}, but label maps are palette "
        "('P') or greyscale ('L') PNGs whose pixel values are class indices. A colour "
        "rendering cannot be read back as classes; save the map with save_label_png."
    )


def save_overlay(
    path: str | os.PathLike, image: np.ndarray, label: np.ndarray, alpha: float = 0.5
) -> None:
    """Blend the VOC colours of ``label`` over ``image`` for visual checks.

    ``out = (1 - alpha) * image + alpha * palette[label]`` where ``label != 0``;
    background pixels keep the image. The format follows the suffix of ``path``.

    Args:
        path: destination (``.png`` or ``.jpg``), written atomically.
        image: ``uint8`` ``(H, W, 3)`` RGB image.
        label: ``(H, W)`` label map of the same size.
        alpha: weight of the label colour, in [0, 1].
    """
    image = np.asarray(image)
    label = _as_label_map(label, "overlay label")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise AttnGuideError(
            f"overlay image must be uint8 (H, W, 3) RGB, got {image.dtype} {image.shape}"
        )
    if image.shape[:2] != label.shape:
        raise AttnGuideError(
            f"overlay image is {image.shape[:2]} but the label map is {label.shape}; "
            "resize the label map (nearest) to the image first"
        )
    if not 0.0 <= alpha <= 1.0:
        raise AttnGuideError(f"overlay alpha must be in [0, 1], got {alpha}")
    colours = voc_palette()[label].astype(np.float32)  # (H, W, 3)
    blend = (1.0 - alpha) * image.astype(np.float32) + alpha * colours
    out = np.where((label != 0)[..., None], blend, image).round().astype(np.uint8)
    image_format = Image.registered_extensions().get(Path(path).suffix.lower(), "PNG")
    _save_atomically(path, Image.fromarray(out), image_format)
