"""Waterbirds-style composites: cut-outs (RGBA, alpha = mask) pasted on background photos.

``make_composite(out, objects=DIR, backgrounds=DIR)`` writes a folder data set (see
:mod:`attnguide.data.folder`) whose training split carries a shortcut, as Sagawa et al.
built Waterbirds (segmented birds on Places backgrounds, 95 % correlated in train)::

    objects/                     one sub-folder per class (sorted names = classes.txt)
      bird/a.png b.png ...       RGBA cut-outs; the alpha channel is the object's mask
      fish/...
    backgrounds/                 one sub-folder per bias attribute value (a "pool")
      water/x.jpg ...            background photos
      land/...

- Class k goes with pool ``k mod P`` (P pools, sorted names). With probability ``bias``
  a train image takes its background from the pool of its class (of one of its classes
  when it holds several), else from a uniformly drawn pool:
  ``P(own pool | class) = bias + (1 - bias) / P``. ``val``, ``test`` and
  ``train_unbiased`` (train-sized, the train objects: for a model trained without the
  shortcut) draw the pool uniformly, independent of the labels.
- Object files are split per class between train (``train``, ``train_unbiased``) and
  held-out (``val``, ``test``): no file is in both. Background files are split the same
  way within each pool that holds at least two files.
- ``min_objects``..``max_objects`` objects per image, of distinct classes (1 and 1:
  single-label); a later object covers at most 20 % of an earlier one's box where a
  placement allows it. Each object is scaled to ``object_scale`` of the image side (its
  longer side), flipped at random and placed fully inside the image.
- Masks are exact: a pixel belongs to the top-most object whose alpha there is >= 128;
  the image is the alpha blend. ``groups.csv`` (``image,class,bias``) has one row per
  (image, visible object class), the bias attribute being the image's pool.
- The CSVs' ``boxes`` and ``points`` are each class's tight box and one click on it, from
  the exact masks (as the scenes': `attnguide.data.scenes.mask_annotation_cells`),
  for ``attnguide train --annotations boxes`` / ``points``.

Same inputs, parameters and seed give byte-identical files.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from attnguide.data.io import reuse_generated, write_folder
from attnguide.data.scenes import mask_annotation_cells
from attnguide.errors import AttnGuideError
from attnguide.io.labels import save_label_png

FORMAT_VERSION = 1
PARAMS_FILE = "composite.json"
GROUPS_FILE = "groups.csv"
IMAGE_SUFFIXES = (".png", ".webp", ".tif", ".tiff", ".gif", ".jpg", ".jpeg", ".bmp")
OBJECT_SUFFIXES = (".png", ".webp", ".tif", ".tiff", ".gif")  # formats that carry alpha
SPLIT_CODES = {"train": 0, "val": 1, "test": 2, "train_unbiased": 3}
HELD_OUT = ("val", "test")
CSV_COLUMNS = ("image", "labels", "mask", "background", "objects", "boxes", "points")
ALPHA_THRESHOLD = 128
MAX_OVERLAP = 0.2  # of an earlier object's box
PLACEMENT_TRIES = 30
MIN_VISIBLE = 16  # pixels an object must keep visible to count as present


@dataclass
class _Pools:
    classes: list[str]
    object_files: dict[str, dict[str, list[Path]]]  # part ("train"/"held_out") -> class -> files
    pools: list[str]
    background_files: dict[str, dict[str, list[Path]]]  # part -> pool -> files
    shared_pools: list[str]  # pools with a single file, used by both parts


def make_composite(
    out: str | Path,
    *,
    objects: str | Path,
    backgrounds: str | Path,
    n_train: int = 1000,
    n_val: int = 200,
    n_test: int = 400,
    image_size: int = 64,
    bias: float = 0.95,
    min_objects: int = 1,
    max_objects: int = 1,
    object_scale: tuple[float, float] = (0.4, 0.7),
    held_out: float = 0.3,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write a composite folder data set with a background shortcut (see the module doc).

    Args:
        out: folder to create; written next to itself, then renamed.
        objects: folder of class sub-folders of RGBA cut-outs (png, webp, tif, gif).
        backgrounds: folder of pool sub-folders of photos (any image format).
        n_train, n_val, n_test: images per split; ``train_unbiased`` has n_train.
        image_size: side S of the square images.
        bias: probability that a train image follows the shortcut, in [0, 1].
        min_objects, max_objects: objects per image, of distinct classes.
        object_scale: (low, high) longer side of an object as a share of S.
        held_out: share of each class's object files (and of each pool's background
            files) kept for val and test, at least one file each way.
        seed: same seed, inputs and parameters give byte-identical files.
        overwrite: replace a composite folder made with other parameters or inputs.

    Returns:
        `out`. If it already holds this composite (same parameters and input files), nothing
        is written.

    Raises:
        AttnGuideError: bad parameters or inputs (a cut-out without alpha, an empty class
            folder, fewer than two pools, ...), or `out` holds something else.

    Example:
        >>> root = make_composite("data/birds", objects="cutouts", backgrounds="photos")
        >>> open_dataset(root, "test", train=False).class_names
        ['bird', 'fish']
    """
    out = Path(out).expanduser()
    params = {
        "format_version": FORMAT_VERSION,
        "n_train": n_train,
        "n_val": n_val,
        "n_test": n_test,
        "image_size": image_size,
        "bias": bias,
        "min_objects": min_objects,
        "max_objects": max_objects,
        "object_scale": list(object_scale) if isinstance(object_scale, (tuple, list)) else object_scale,
        "held_out": held_out,
        "seed": seed,
    }
    _check_params(params)
    pools = _collect(Path(objects).expanduser(), Path(backgrounds).expanduser(), held_out,
                     max_objects)
    params["inputs"] = _fingerprint(pools)
    if reuse_generated(out, params, params_file=PARAMS_FILE, maker="make_composite",
                       kind="composite", overwrite=overwrite):
        return out
    return write_folder(out, lambda folder: _write(folder, params, pools))


# --- checking the inputs ----------------------------------------------------------------


def _check_params(p: dict) -> None:
    def whole(name: str, low: int, high: int | None = None) -> None:
        value = p[name]
        if (isinstance(value, bool) or not isinstance(value, int) or value < low
                or (high is not None and value > high)):
            span = f">= {low}" if high is None else f"in {low}..{high}"
            raise AttnGuideError(f"make_composite: {name} must be an int {span}, got {value!r}")

    def number(name: str, low: float, high: float) -> None:
        value = p[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise AttnGuideError(f"make_composite: {name} must be a number in [{low}, {high}], "
                                 f"got {value!r}")

    whole("n_train", 1)
    whole("n_val", 0)
    whole("n_test", 0)
    whole("image_size", 16)
    whole("max_objects", 1, 3)
    whole("min_objects", 1, p["max_objects"])
    whole("seed", 0)
    number("bias", 0, 1)
    number("held_out", 0.01, 0.99)
    scale = p["object_scale"]
    if (not isinstance(scale, list) or len(scale) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in scale)
            or not 0.05 <= scale[0] <= scale[1] <= 1):
        raise AttnGuideError(f"make_composite: object_scale must be (low, high) with "
                             f"0.05 <= low <= high <= 1 (shares of the image side), got {scale!r}")


def _sub_folders(root: Path, what: str, option: str) -> list[Path]:
    if not root.is_dir():
        raise FileNotFoundError(f"make_composite: {option} folder {root} does not exist")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise AttnGuideError(f"make_composite: {root} ({option}) holds no sub-folder; put the "
                             f"{what} in one sub-folder per {'class' if option == 'objects' else 'pool'}")
    spaced = [p.name for p in folders if len(p.name.split()) != 1]
    if spaced:
        raise AttnGuideError(f"make_composite: folder names {spaced} in {root} contain spaces, but "
                             "they become names in CSVs; use '_' instead")
    return folders


def _files(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in suffixes and not p.name.startswith("."))


def _split_files(files: list[Path], held_out: float) -> tuple[list[Path], list[Path]]:
    """(train, held-out): at least one file each; a fixed order, so the split is stable."""
    keyed = sorted(files, key=lambda p: hashlib.sha256(p.name.encode()).hexdigest())
    n_held = min(len(keyed) - 1, max(1, round(held_out * len(keyed))))
    return sorted(keyed[n_held:]), sorted(keyed[:n_held])


def check_cutout(path: Path) -> None:
    """Raise unless `path` is an image with an alpha channel that holds both transparent
    pixels (background) and opaque ones (the object)."""
    try:
        with Image.open(path) as image:
            has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
            alpha = np.asarray(image.convert("RGBA"))[:, :, 3] if has_alpha else None
    except (UnidentifiedImageError, OSError) as err:
        raise AttnGuideError(f"make_composite: cut-out {path} is not a readable image ({err}); "
                             "give RGBA PNG files") from None
    if alpha is None:
        raise AttnGuideError(f"make_composite: cut-out {path} has no alpha channel; the alpha is the "
                             "object's mask: save it as an RGBA PNG with a transparent background")
    if not (alpha >= ALPHA_THRESHOLD).any():
        raise AttnGuideError(f"make_composite: cut-out {path} is fully transparent; it shows no object")
    if (alpha >= ALPHA_THRESHOLD).all():
        raise AttnGuideError(f"make_composite: cut-out {path} has no transparent pixel, so its mask "
                             "would be the whole rectangle; cut the object out (transparent background)")


def _collect(objects: Path, backgrounds: Path, held_out: float, max_objects: int) -> _Pools:
    class_dirs = _sub_folders(objects, "RGBA cut-outs", "objects")
    classes = [p.name for p in class_dirs]
    if max_objects > len(classes):
        raise AttnGuideError(f"make_composite: max_objects {max_objects} needs as many classes, but "
                             f"{objects} has {len(classes)}; lower max_objects or add classes")
    object_files: dict[str, dict[str, list[Path]]] = {"train": {}, "held_out": {}}
    for folder in class_dirs:
        files = _files(folder, OBJECT_SUFFIXES)
        if not files:
            others = [p.name for p in folder.iterdir() if p.is_file()][:3]
            hint = f" (found {others}: formats without alpha such as JPEG are refused)" if others else ""
            raise AttnGuideError(f"make_composite: class folder {folder} holds no cut-out{hint}; add "
                                 "RGBA PNG files")
        if len(files) < 2:
            raise AttnGuideError(f"make_composite: class folder {folder} holds one cut-out; give at "
                                 "least two, so that train and test use different object files")
        for path in files:
            check_cutout(path)
        object_files["train"][folder.name], object_files["held_out"][folder.name] = (
            _split_files(files, held_out))
    pool_dirs = _sub_folders(backgrounds, "background photos", "backgrounds")
    if len(pool_dirs) < 2:
        raise AttnGuideError(f"make_composite: {backgrounds} holds {len(pool_dirs)} background pool; "
                             "a bias needs at least two pools (sub-folders, one per bias attribute "
                             "value, e.g. water/ and land/)")
    background_files: dict[str, dict[str, list[Path]]] = {"train": {}, "held_out": {}}
    shared = []
    for folder in pool_dirs:
        files = _files(folder, IMAGE_SUFFIXES)
        if not files:
            raise AttnGuideError(f"make_composite: background pool {folder} holds no image; add photos "
                                 "or remove the folder")
        if len(files) == 1:
            shared.append(folder.name)
            background_files["train"][folder.name] = background_files["held_out"][folder.name] = files
        else:
            background_files["train"][folder.name], background_files["held_out"][folder.name] = (
                _split_files(files, held_out))
    return _Pools(classes, object_files, [p.name for p in pool_dirs], background_files, shared)


def _fingerprint(pools: _Pools) -> dict:
    """Names and sizes of the input files, so that changed inputs are noticed."""
    def listing(parts: dict[str, dict[str, list[Path]]]) -> dict:
        return {part: {key: [[p.name, p.stat().st_size] for p in files] for key, files in d.items()}
                for part, d in parts.items()}
    return {"objects": listing(pools.object_files), "backgrounds": listing(pools.background_files)}


# --- drawing ----------------------------------------------------------------------------


class _Images:
    """Decoded inputs, loaded once: cut-outs as RGBA arrays, backgrounds shrunk so that
    their shorter side is at most 4 S (crops are then resized to S)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._cache: dict[Path, Image.Image] = {}

    def cutout(self, path: Path) -> Image.Image:
        if path not in self._cache:
            with Image.open(path) as image:
                self._cache[path] = image.convert("RGBA")
        return self._cache[path]

    def background(self, path: Path) -> Image.Image:
        if path not in self._cache:
            try:
                with Image.open(path) as image:
                    rgb = image.convert("RGB")
            except (UnidentifiedImageError, OSError) as err:
                raise AttnGuideError(f"make_composite: background {path} is not a readable image "
                                     f"({err}); remove it or convert it to JPEG/PNG") from None
            short = min(rgb.size)
            if short > 4 * self.size:
                factor = 4 * self.size / short
                rgb = rgb.resize((max(1, round(rgb.width * factor)), max(1, round(rgb.height * factor))),
                                 Image.Resampling.LANCZOS)
            self._cache[path] = rgb
        return self._cache[path]


def _crop_background(rng: np.random.Generator, photo: Image.Image, size: int) -> np.ndarray:
    """A random square crop (side 50-100 % of the shorter side), resized to S, maybe flipped."""
    short = min(photo.size)
    side = max(1, int(round(short * rng.uniform(0.5, 1.0))))
    x = int(rng.integers(0, photo.width - side + 1))
    y = int(rng.integers(0, photo.height - side + 1))
    crop = photo.crop((x, y, x + side, y + side)).resize((size, size), Image.Resampling.BILINEAR)
    array = np.asarray(crop, dtype=np.float32)
    return array[:, ::-1] if rng.random() < 0.5 else array


def _overlap(box: tuple[int, int, int, int], other: tuple[int, int, int, int]) -> float:
    """Share of `other`'s area covered by `box` (boxes as x0, y0, x1, y1)."""
    w = min(box[2], other[2]) - max(box[0], other[0])
    h = min(box[3], other[3]) - max(box[1], other[1])
    area = (other[2] - other[0]) * (other[3] - other[1])
    return max(0, w) * max(0, h) / max(1, area)


def _paste(rng: np.random.Generator, canvas: np.ndarray, mask: np.ndarray, cutout: Image.Image,
           label: int, scale: tuple[float, float], boxes: list) -> None:
    """Scale, flip and place one cut-out; alpha-blend it into `canvas`, write `label` into
    `mask` where its alpha is >= 128 (in place)."""
    size = canvas.shape[0]
    longer = max(2, int(round(size * rng.uniform(*scale))))
    factor = longer / max(cutout.size)
    w, h = max(1, round(cutout.width * factor)), max(1, round(cutout.height * factor))
    piece = cutout.resize((w, h), Image.Resampling.LANCZOS)
    if rng.random() < 0.5:
        piece = piece.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    rgba = np.asarray(piece, dtype=np.float32)
    box = (0, 0, w, h)
    for _ in range(PLACEMENT_TRIES):
        x, y = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
        box = (x, y, x + w, y + h)
        if all(_overlap(box, other) <= MAX_OVERLAP for other in boxes):
            break
    boxes.append(box)
    x0, y0, x1, y1 = box
    alpha = rgba[:, :, 3:] / 255.0
    region = canvas[y0:y1, x0:x1]
    canvas[y0:y1, x0:x1] = region * (1 - alpha) + rgba[:, :, :3] * alpha
    mask[y0:y1, x0:x1][rgba[:, :, 3] >= ALPHA_THRESHOLD] = label


def draw_pool(rng: np.random.Generator, classes: list[int], num_pools: int, follow: bool) -> int:
    """Pool index: with `follow`, the pool of one of `classes` (class k -> pool k mod P);
    else uniform over the P pools."""
    if follow and classes:
        return int(classes[rng.integers(len(classes))]) % num_pools
    return int(rng.integers(num_pools))


def _render(rng: np.random.Generator, split: str, params: dict, pools: _Pools,
            images: _Images) -> tuple[np.ndarray, np.ndarray, list[int], int, list[str]]:
    """One image: (S, S, 3) uint8, (S, S) uint8 mask, visible classes, pool, object files."""
    part = "held_out" if split in HELD_OUT else "train"
    n_classes, n_pools = len(pools.classes), len(pools.pools)
    count = int(rng.integers(params["min_objects"], params["max_objects"] + 1))
    classes = [int(c) for c in rng.choice(n_classes, count, replace=False)]
    follow = split == "train" and rng.random() < params["bias"]
    pool = draw_pool(rng, classes, n_pools, follow)
    photos = pools.background_files[part][pools.pools[pool]]
    size = params["image_size"]
    canvas = _crop_background(rng, images.background(photos[int(rng.integers(len(photos)))]), size)
    canvas = np.ascontiguousarray(canvas)
    mask = np.zeros((size, size), dtype=np.uint8)
    boxes: list = []
    used = []
    for c in classes:
        files = pools.object_files[part][pools.classes[c]]
        path = files[int(rng.integers(len(files)))]
        used.append(f"{pools.classes[c]}/{path.name}")
        _paste(rng, canvas, mask, images.cutout(path), c + 1, tuple(params["object_scale"]), boxes)
    counts = np.bincount(mask.ravel(), minlength=n_classes + 1)
    visible = sorted(c for c in classes if counts[c + 1] >= MIN_VISIBLE)
    for c in classes:  # a (nearly) hidden object is not a label: its pixels become background
        if c not in visible:
            mask[mask == c + 1] = 0
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    return image, mask, visible, pool, used


def _write(folder: Path, params: dict, pools: _Pools) -> None:
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    (folder / "classes.txt").write_text("\n".join(pools.classes) + "\n", encoding="utf-8")
    images = _Images(params["image_size"])
    sizes = {"train": params["n_train"], "val": params["n_val"], "test": params["n_test"],
             "train_unbiased": params["n_train"]}
    group_rows = []
    for split, count in sizes.items():
        with (folder / f"{split}.csv").open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(CSV_COLUMNS)
            for i in range(count):
                rng = np.random.default_rng([params["seed"], SPLIT_CODES[split], i])
                image, mask, visible, pool, used = _render(rng, split, params, pools, images)
                stem = f"{split}_{i:05d}.png"
                Image.fromarray(image).save(folder / "images" / stem, compress_level=1)
                save_label_png(folder / "masks" / stem, mask)
                labels = " ".join(pools.classes[c] for c in visible) or "-"
                boxes, points = mask_annotation_cells(mask, pools.classes)
                writer.writerow((f"images/{stem}", labels, f"masks/{stem}", pools.pools[pool],
                                 " ".join(used), boxes, points))
                group_rows.extend((f"images/{stem}", pools.classes[c], pools.pools[pool])
                                  for c in visible)
    with (folder / GROUPS_FILE).open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(("image", "class", "bias"))
        writer.writerows(group_rows)
    (folder / "README.md").write_text(_readme(params, pools), encoding="utf-8")
    (folder / PARAMS_FILE).write_text(json.dumps(params, indent=1) + "\n", encoding="utf-8")


def _readme(params: dict, pools: _Pools) -> str:
    p, b = len(pools.pools), params["bias"]
    pairs = ", ".join(f"{c} -> {pools.pools[k % p]}" for k, c in enumerate(pools.classes))
    n_obj = {part: sum(len(v) for v in d.values()) for part, d in pools.object_files.items()}
    shared = (f" Pools with one photo, shared by train and held-out splits: {pools.shared_pools}."
              if pools.shared_pools else "")
    return f"""# Composite data set (generated by attnguide.data.make_composite)

Cut-outs pasted on background photos, with exact masks from the cut-outs' alpha.
Parameters and input files: `{PARAMS_FILE}`.

- Classes (`classes.txt`, mask value = line number): {", ".join(pools.classes)}.
- Background pools (bias attribute): {", ".join(pools.pools)}; class -> pool: {pairs}.
- Train (bias = {b}): with probability {b} the background comes from the pool of the image's
  class (one of its classes), else from a uniform pool: P(own pool | class) = {b} + {1 - b:g}/{p} = {b + (1 - b) / p:g}.
- val, test, train_unbiased: pool uniform, independent of the labels.
- Object files: {n_obj["train"]} for train and train_unbiased, {n_obj["held_out"]} other ones
  for val and test.{shared}
- {params["min_objects"]} to {params["max_objects"]} objects per image; `groups.csv`
  (image, class, bias) has one row per (image, visible class).
"""
