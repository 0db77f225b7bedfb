"""Label maps on disk: the VOC palette and the one label-PNG reader and writer.

A label map is a ``uint8`` array of shape ``(H, W)``: 0 is background, ``k``
the k-th foreground class counting from 1, 255 "ignore" (VOC convention).
:func:`save_label_png` writes it as a palette ("P") PNG whose pixel values are
the class indices and whose palette is the VOC colour map, so that the file is
both exact data and a viewable picture; ``palette=False`` writes a greyscale
("L") PNG instead (SBD's ``SegmentationClassAug`` style).

:func:`load_label_png` reads what VOC-style folders hold: palette or greyscale
PNGs (16/32-bit greyscale too, when the values fit 0..255) and RGB(A) PNGs
painted in the VOC palette, each colour mapped back to its index (some tools
save VOC masks that way). Any other colour, any other mode and any other
format (JPEG changes class indices) is refused with the file's name.

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
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from attnguide.errors import AttnGuideError
from attnguide.io.atomic import atomic_write

__all__ = ["VOC_PALETTE", "voc_palette", "save_label_png", "load_label_png", "save_overlay"]

_SHOW = 5  # how many unknown colours an error message lists


def _make_voc_palette() -> np.ndarray:
    """Entry ``i`` spreads the bits of ``i`` over the three channels, most significant first:
    bit ``3j`` of ``i`` goes to bit ``7 - j`` of red, ``3j + 1`` to green, ``3j + 2`` to blue."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    for index in range(256):
        value, red, green, blue = index, 0, 0, 0
        for shift in range(7, -1, -1):
            red |= (value & 1) << shift
            green |= ((value >> 1) & 1) << shift
            blue |= ((value >> 2) & 1) << shift
            value >>= 3
        palette[index] = (red, green, blue)
    palette.flags.writeable = False
    return palette


VOC_PALETTE: np.ndarray = _make_voc_palette()
"""(256, 3) uint8, read-only: colour of label i (1 -> (128, 0, 0), 255 -> (224, 224, 192))."""

_CODES = (VOC_PALETTE.astype(np.int32) << np.array([16, 8, 0])).sum(1)  # (256,) 0xRRGGBB, distinct
_ORDER = np.argsort(_CODES)  # label of the k-th smallest colour code
_SORTED_CODES = _CODES[_ORDER]


def voc_palette() -> np.ndarray:
    """A writable copy of :data:`VOC_PALETTE`, shape ``(256, 3)``, ``uint8``."""
    return VOC_PALETTE.copy()


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


def _save_image(path: str | os.PathLike, image: Image.Image, image_format: str,
                **options: object) -> None:
    """Write ``image`` atomically (no half-written PNG is ever seen); not fsynced."""
    atomic_write(path, lambda f: image.save(f, format=image_format, **options), durable=False)


def save_label_png(path: str | os.PathLike, label: np.ndarray, palette: bool = True) -> None:
    """Write ``label`` ``(H, W)`` as a PNG of class indices, atomically.

    Args:
        path: destination file; missing parent folders are created.
        label: integer class indices in 0..255 (``uint8`` preferred).
        palette: a palette PNG with the VOC colours (True) or a plain greyscale one.
    """
    label = _as_label_map(label, f"label for {os.fspath(path)!r}")
    image = Image.fromarray(np.ascontiguousarray(label))  # "L"
    if palette:
        image.putpalette(VOC_PALETTE.tobytes())  # turns the "L" image into "P", indices kept
    _save_image(path, image, "PNG", compress_level=1)  # label maps compress well at any level


def _where(path: Path, source: str | None) -> str:
    return repr(str(path)) + (f" (listed at {source})" if source else "")


def load_label_png(path: str | os.PathLike, source: str | None = None) -> np.ndarray:
    """Read a label-map PNG (see the module docstring for what is accepted).

    Args:
        path: the PNG.
        source: where the file was listed (e.g. ``"train.csv line 4"``), for the messages.

    Returns:
        ``uint8`` array ``(H, W)`` of class indices.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        AttnGuideError: the file is not a PNG, or not a label map (another mode,
            values outside 0..255, or colours outside the VOC palette).
    """
    path = Path(path)
    where = _where(path, source)
    if not path.is_file():
        raise FileNotFoundError(f"label map {where} does not exist")
    try:
        with Image.open(path) as image:
            image_format, mode = image.format, image.mode
            pixels = np.array(image) if image_format == "PNG" else None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise AttnGuideError(f"{where} is not an image ({err}); expected a label-map PNG") from err
    if image_format != "PNG":
        raise AttnGuideError(
            f"{where} is a {image_format} file, not a label map: label maps must be "
            "lossless PNGs (JPEG compression changes class indices)"
        )
    if mode in ("P", "L"):
        return pixels.astype(np.uint8, copy=False)
    if mode.startswith("I"):  # "I", "I;16", ...: 16/32-bit greyscale
        if pixels.size and (pixels.min() < 0 or pixels.max() > 255):
            raise AttnGuideError(
                f"label map {where} has values outside 0..255 (min {pixels.min()}, max "
                f"{pixels.max()}); a label map holds 0, 1..C and 255"
            )
        return pixels.astype(np.uint8)
    if mode in ("RGB", "RGBA"):
        return _colours_to_labels(pixels[..., :3], where, mode)
    raise AttnGuideError(
        f"{where} is not a label map: its mode is {mode!r}, but label maps are palette "
        "('P') or greyscale ('L') PNGs whose pixel values are class indices, or RGB PNGs "
        "painted in the VOC palette; save the map with save_label_png."
    )


def _colours_to_labels(rgb: np.ndarray, where: str, mode: str) -> np.ndarray:
    """Map an ``(H, W, 3)`` VOC-coloured image back to indices, or say which colours are not."""
    codes = (rgb.astype(np.int32) << np.array([16, 8, 0])).sum(-1)  # (H, W) 0xRRGGBB
    colours, inverse = np.unique(codes, return_inverse=True)
    slots = np.searchsorted(_SORTED_CODES, colours).clip(max=255)
    unknown = colours[_SORTED_CODES[slots] != colours]
    if unknown.size:
        shown = ", ".join(f"({c >> 16}, {(c >> 8) & 255}, {c & 255})" for c in unknown[:_SHOW])
        raise AttnGuideError(
            f"{where} is an {mode} image whose colours {shown}"
            f"{' ...' if unknown.size > _SHOW else ''} are not VOC palette colours, so it is "
            f"not a label map (its mode is {mode!r}). Save label maps as palette or "
            "single-channel PNGs with values 0, 1..C, 255 (save_label_png)."
        )
    return _ORDER[slots].astype(np.uint8)[inverse.reshape(codes.shape)]


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
    colours = VOC_PALETTE[label].astype(np.float32)  # (H, W, 3)
    blend = (1.0 - alpha) * image.astype(np.float32) + alpha * colours
    out = np.where((label != 0)[..., None], blend, image).round().astype(np.uint8)
    image_format = Image.registered_extensions().get(Path(path).suffix.lower(), "PNG")
    _save_image(path, Image.fromarray(out), image_format)
