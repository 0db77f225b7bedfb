"""Reading RGB images and VOC-convention label maps, with errors that name the file.

A label map is an (H, W) array of class indices: 0 background, k the k-th
class counting from 1, 255 "ignore". On disk it is a single-channel PNG
("L"/"I" mode) or a palette PNG ("P" mode, whose indices are the labels, as in
VOC's SegmentationClass). RGB PNGs are accepted when every colour is a VOC
palette colour (some tools save VOC masks that way); anything else is rejected.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from attnguide.constants import IGNORE as IGNORE_INDEX
from attnguide.errors import AttnGuideError

"""Mask value for pixels that count neither as background nor as a class."""


def _voc_palette() -> np.ndarray:
    """The PASCAL VOC colour map: entry i spreads the bits of i over R, G, B."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    for index in range(256):
        value, r, g, b = index, 0, 0, 0
        for bit in range(8):
            r |= ((value >> 0) & 1) << (7 - bit)
            g |= ((value >> 1) & 1) << (7 - bit)
            b |= ((value >> 2) & 1) << (7 - bit)
            value >>= 3
        palette[index] = (r, g, b)
    palette.flags.writeable = False
    return palette


VOC_PALETTE: np.ndarray = _voc_palette()
"""(256, 3) uint8, read-only: colour of label i in VOC palette PNGs (255 -> (224, 224, 192))."""


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


def read_label_map(path: Path, source: str | None = None) -> np.ndarray:
    """Decode a label-map PNG to (H, W) uint8 class indices (VOC convention).

    Raises:
        FileNotFoundError: the file is missing.
        AttnGuideError: the file cannot be decoded or is not a label map.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mask file {_where(path, source)} does not exist")
    try:
        with Image.open(path) as image:
            mode = image.mode
            pixels = np.array(image)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise AttnGuideError(f"cannot decode mask {_where(path, source)}: {err}") from err
    if mode in ("P", "L"):
        return pixels.astype(np.uint8, copy=False)
    if mode in ("I", "I;16") and pixels.size and (pixels.min() < 0 or pixels.max() > 255):
        raise AttnGuideError(
            f"mask {_where(path, source)} has values outside 0..255 "
            f"(min {pixels.min()}, max {pixels.max()}); a label map holds 0, 1..C and 255"
        )
    if mode in ("I", "I;16"):
        return pixels.astype(np.uint8)
    if mode in ("RGB", "RGBA"):
        return _rgb_to_labels(pixels[..., :3], path, source)
    raise AttnGuideError(
        f"mask {_where(path, source)} has PIL mode {mode!r}; expected a label map: "
        "a single-channel ('L') or palette ('P') PNG with values 0, 1..C, 255"
    )


def _rgb_to_labels(rgb: np.ndarray, path: Path, source: str | None) -> np.ndarray:
    """Map an (H, W, 3) VOC-coloured mask back to indices, or explain why not."""
    codes = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    palette_codes = (
        (VOC_PALETTE[:, 0].astype(np.int32) << 16)
        | (VOC_PALETTE[:, 1].astype(np.int32) << 8)
        | VOC_PALETTE[:, 2]
    )
    lookup = {int(code): index for index, code in enumerate(palette_codes)}
    colours, inverse = np.unique(codes, return_inverse=True)
    unknown = [int(c) for c in colours if int(c) not in lookup]
    if unknown:
        shown = ", ".join(f"({c >> 16}, {(c >> 8) & 255}, {c & 255})" for c in unknown[:5])
        raise AttnGuideError(
            f"mask {_where(path, source)} is an RGB image whose colours {shown}"
            f"{' ...' if len(unknown) > 5 else ''} are not VOC palette colours, so it is not "
            "a label map. Save masks as single-channel or palette PNGs with values 0, 1..C, 255."
        )
    indices = np.array([lookup[int(c)] for c in colours], dtype=np.uint8)
    return indices[inverse.reshape(codes.shape)]


def check_label_values(mask: np.ndarray, num_classes: int, path: Path, source: str | None) -> None:
    """Raise if an (H, W) label map holds a value other than 0..num_classes or 255."""
    present = np.flatnonzero(np.bincount(mask.ravel(), minlength=256))
    bad = [int(v) for v in present if num_classes < v < IGNORE_INDEX]
    if bad:
        raise AttnGuideError(
            f"mask {_where(path, source)} holds label values {bad[:10]} but the data set has "
            f"{num_classes} classes (valid values: 0 background, 1..{num_classes}, 255 ignore)"
        )


def labels_in_mask(mask: np.ndarray) -> tuple[int, ...]:
    """Class indices (0-based, background excluded) present in an (H, W) label map."""
    present = np.flatnonzero(np.bincount(mask.ravel(), minlength=256))
    return tuple(int(v) - 1 for v in present if 0 < v < IGNORE_INDEX)


def write_label_png(path: Path, mask: np.ndarray, palette: bool = True) -> None:
    """Write an (H, W) uint8 label map as a palette PNG (VOC colours) or a plain 'L' PNG."""
    image = Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8))  # mode "L"
    if palette:
        image.putpalette(VOC_PALETTE.tobytes())  # turns the "L" image into "P", indices kept
    image.save(path, compress_level=1)
