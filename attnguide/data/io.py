"""Reading RGB images and checking label maps, with errors that name the file; the
folders of the generated data sets (scenes, composites): reused when their parameters
match, written whole or not at all.

Label-map PNGs themselves are read and written by :mod:`attnguide.io.labels`
(``load_label_png``, ``save_label_png``, the VOC palette); ``attnguide.data``
re-exports them as ``read_label_map``, ``write_label_png`` and ``VOC_PALETTE``.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from attnguide.constants import IGNORE
from attnguide.errors import AttnGuideError

MAX_PIXELS_ENV = "ATTNGUIDE_MAX_IMAGE_PIXELS"
"""Environment variable that raises (or lowers) the largest image read, in pixels
(default: Pillow's limit, about 89 million pixels)."""
_PIL_DEFAULT_MAX_PIXELS = Image.MAX_IMAGE_PIXELS


def _where(path: Path, source: str | None) -> str:
    return f"{path}" + (f" (listed at {source})" if source else "")


def max_image_pixels() -> int | None:
    """The pixel limit of `read_rgb`: ``$ATTNGUIDE_MAX_IMAGE_PIXELS`` or Pillow's default."""
    text = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not text:
        return _PIL_DEFAULT_MAX_PIXELS
    try:
        value = int(float(text))
    except ValueError:
        raise AttnGuideError(
            f"{MAX_PIXELS_ENV}={text!r} is not a number; give the largest image size in pixels, "
            "e.g. 200000000"
        ) from None
    return value if value > 0 else None


def read_rgb(path: Path, source: str | None = None) -> np.ndarray:
    """Decode an image file to (H, W, 3) uint8 RGB.

    16-bit and 32-bit greyscale images (Pillow modes ``I;16``, ``I``, ``F``) are rescaled
    to 8 bits: ``I;16`` by 255 / 65535; ``I`` and ``F`` read as 8-bit when their values lie
    in [0, 255]; otherwise ``I`` in [0, 65535] reads as 16-bit and ``F`` in [0, 1] as
    fractions (times 255); other ranges are refused, naming the file.
    Images above the pixel limit (`max_image_pixels`) are refused before decoding.

    Args:
        path: the image file.
        source: where the file was listed (e.g. ``"train.csv line 4"``), for the message.

    Raises:
        FileNotFoundError: the file is missing.
        AttnGuideError: the file cannot be decoded as an image, is too large or has a
            value range that does not map to 8 bits.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file {_where(path, source)} does not exist")
    limit = max_image_pixels()
    try:
        with _no_limit():  # attnguide's limit below, with a message that says how to raise it
            image = Image.open(path)
        with image:
            pixels = image.width * image.height
            if limit is not None and pixels > limit:
                raise AttnGuideError(
                    f"image {_where(path, source)} is too large ({image.width}x{image.height} = "
                    f"{pixels} pixels): the limit is {limit} pixels; resize the image, or raise "
                    f"the limit with the environment variable {MAX_PIXELS_ENV}=N (pixels)"
                )
            return _to_rgb(image, path, source)
    except AttnGuideError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise AttnGuideError(
            f"cannot decode image {_where(path, source)}: {err}. "
            "Replace the file with a valid JPEG/PNG or remove its row."
        ) from err


def read_image_size(path: Path, source: str | None = None) -> tuple[int, int]:
    """(width, height) from an image file's header, without decoding its pixels; the same
    errors as `read_rgb` for a file that is not an image or is above the pixel limit."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file {_where(path, source)} does not exist")
    limit = max_image_pixels()
    try:
        with _no_limit():
            image = Image.open(path)
        with image:
            width, height = image.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise AttnGuideError(
            f"cannot decode image {_where(path, source)}: {err}. "
            "Replace the file with a valid JPEG/PNG or remove its row."
        ) from err
    if limit is not None and width * height > limit:
        raise AttnGuideError(
            f"image {_where(path, source)} is too large ({width}x{height} = {width * height} "
            f"pixels): the limit is {limit} pixels; resize the image, or raise the limit with "
            f"the environment variable {MAX_PIXELS_ENV}=N (pixels)"
        )
    return width, height


class _no_limit:
    """Pillow's own pixel limit off while active (`read_rgb` applies attnguide's)."""

    def __enter__(self) -> None:
        self.before = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None

    def __exit__(self, *exc) -> None:
        Image.MAX_IMAGE_PIXELS = self.before


def _to_rgb(image: Image.Image, path: Path, source: str | None) -> np.ndarray:
    """(H, W, 3) uint8 of an open image; high-bit-depth greyscale rescaled to 8 bits."""
    mode = image.mode
    if not (mode.startswith("I") or mode == "F"):
        return np.array(image.convert("RGB"))  # a writable copy
    values = np.asarray(image, dtype=np.float64)  # (H, W)
    if values.ndim != 2:
        values = values.reshape(image.height, image.width, -1)[..., 0]
    low = float(values.min()) if values.size else 0.0
    high = float(values.max()) if values.size else 0.0
    if mode.startswith("I;16"):
        scale = 255.0 / 65535.0
    elif not np.isfinite(values).all():
        scale = None
    elif low >= 0 and high <= 255 and (mode != "F" or high > 1):
        scale = 1.0
    elif low >= 0 and mode == "F" and high <= 1:
        scale = 255.0
    elif low >= 0 and mode.startswith("I") and high <= 65535:
        scale = 255.0 / 65535.0
    else:
        scale = None
    if scale is None:
        raise AttnGuideError(
            f"image {_where(path, source)} is a {mode!r} image with values in [{low:g}, {high:g}], "
            "which do not map to 8 bits; save it as an 8-bit RGB or greyscale PNG/JPEG"
        )
    grey = np.clip(np.rint(values * scale), 0, 255).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


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


def read_params(folder: Path, params_file: str) -> dict | None:
    """The parameters a generator recorded in ``folder/params_file``, or None."""
    try:
        return json.loads((folder / params_file).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def reuse_generated(out: Path, params: dict, *, params_file: str, maker: str, kind: str,
                    overwrite: bool) -> bool:
    """True when ``out`` already holds the data set ``params`` describe (so nothing is
    written); False when it may be (re)written; raise when it holds something else: a file,
    files without ``params_file``, or a data set of other parameters without ``overwrite``.
    ``maker`` and ``kind`` name the generator and its folders in the messages
    (``"make_scenes"``, ``"scenes"``)."""
    if not out.exists():
        return False
    if not out.is_dir():
        raise AttnGuideError(f"{maker}: {out} is a file; give a folder path")
    stored = read_params(out, params_file)
    if stored == params:
        return True
    if stored is None and any(out.iterdir()):
        raise AttnGuideError(
            f"{maker}: {out} holds files but no {params_file}, so it is not a {kind} folder; "
            "choose a new or empty folder (it is never deleted, even with overwrite=True)")
    if stored is not None and not overwrite:
        changed = [k if isinstance(v, dict) else f"{k} {stored.get(k)!r} -> {v!r}"
                   for k, v in params.items() if stored.get(k) != v]
        raise AttnGuideError(
            f"{maker}: {out} holds a {kind} data set made with other settings (differing: "
            f"{'; '.join(changed)}); pass overwrite=True (--overwrite) to regenerate, or use "
            "another folder")
    return False


def write_folder(out: Path, write: Callable[[Path], None]) -> Path:
    """``write(folder)`` into a temporary sibling of ``out``, then put it in ``out``'s place
    (replacing what `reuse_generated` allowed to be replaced): an interrupted run never
    leaves a half-written data set under ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        write(partial)
        if out.exists():  # an empty folder, or a data set to overwrite (checked before)
            shutil.rmtree(out)
        partial.rename(out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return out
