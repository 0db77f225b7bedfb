"""Built-in biased scenes: a folder data set where a shortcut predicts the labels in train only.

The GAIN paper shows boats out of water to a classifier trained on boats in
water. `make_scenes` builds that experiment at small scale: coloured shapes
(class 0 is "boat") on textured backgrounds, with exact masks, and in the
train split one or two shortcuts:

- ``bias="background"``: the "water" texture goes with class 0;
- ``bias="cue"``: a small coloured square in the top-left corner names a class
  present in the image (a Decoy-MNIST-style cue);
- ``bias="both"`` or ``"none"``.

With probability ``bias_strength`` a train image follows the shortcut, else
its texture (and cue) are drawn uniformly. ``val``, ``test`` and
``train_unbiased`` (a train-sized split for an oracle model) draw them
uniformly, independent of the labels. Cues appear in every split of a cue
data set; shapes never cover the cue corner, so masks never contain it.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image

from attnguide.data.io import reuse_generated, write_folder
from attnguide.data.scene_drawing import CUE_REGION, CUE_SIZE, SHAPES, TEXTURES, render_scene
from attnguide.errors import AttnGuideError
from attnguide.io.labels import save_label_png

BIASES = ("background", "cue", "both", "none")
FORMAT_VERSION = 1
"""Bumped whenever the same parameters would draw different images."""
PARAMS_FILE = "scenes.json"
SPLIT_CODES = {"train": 0, "val": 1, "test": 2, "train_unbiased": 3}
"""Part of each image's seed, so that splits never share images."""
CSV_COLUMNS = ("image", "labels", "mask", "background", "cue", "boxes", "points")
"""``boxes`` and ``points`` come from the true masks (`mask_boxes`, `mask_points`): the tight
box of each class's visible pixels and one click on them, for box and point supervision."""


def make_scenes(
    out: str | Path,
    *,
    n_train: int = 2000,
    n_val: int = 300,
    n_test: int = 500,
    image_size: int = 96,
    num_classes: int = 5,
    min_objects: int = 1,
    max_objects: int = 3,
    bias: str = "background",
    bias_strength: float = 0.9,
    colours: str = "class",
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write a biased scenes folder data set (open it with `open_dataset`).

    Args:
        out: folder to create. Written atomically (built next to it, then renamed).
        n_train, n_val, n_test: images per split; ``train_unbiased`` has n_train.
        image_size: side S of the square images.
        num_classes: how many of `SHAPES` to use (class 0 is always "boat").
        min_objects, max_objects: shapes per image, each of a distinct class;
            ``min_objects == max_objects == 1`` gives a single-label data set.
        bias: "background", "cue", "both" or "none" (see the module docstring).
        bias_strength: probability that a train image follows the shortcut:
            P(water | boat) = s + (1 - s) / T and P(water | no boat) = (1 - s) / T
            with T = 5 textures; the cue names a present class with probability
            s + (1 - s) * (present classes) / C.
        colours: "class" (each class its own colour, jittered) or "shared" (any
            class's colour, so only the shape tells the class and the shortcut
            is easier to learn than the object).
        seed: same seed and parameters give byte-identical files.
        overwrite: replace an existing scenes folder made with other parameters.

    Returns:
        `out`. If it already holds scenes with the same parameters, nothing is written.

    Raises:
        AttnGuideError: bad parameters, or `out` holds something else (other
            files, or scenes with other parameters and overwrite=False).

    Example:
        >>> root = make_scenes("data/scenes", n_train=200, n_val=50, n_test=50)
        >>> open_dataset(root, "test", train=False).class_names
        ['boat', 'disc', 'square', 'triangle', 'cross']
    """
    out = Path(out).expanduser()
    params = {
        "format_version": FORMAT_VERSION,
        "n_train": n_train,
        "n_val": n_val,
        "n_test": n_test,
        "image_size": image_size,
        "num_classes": num_classes,
        "min_objects": min_objects,
        "max_objects": max_objects,
        "bias": bias,
        "bias_strength": bias_strength,
        "seed": seed,
    }
    if colours != "class":  # recorded only when set, so older scenes folders stay valid
        params["colours"] = colours
    _check_params(params)
    if reuse_generated(out, params, params_file=PARAMS_FILE, maker="make_scenes", kind="scenes",
                       overwrite=overwrite):
        return out
    return write_folder(out, lambda folder: _write_scenes(folder, params))


# --- how the shortcuts are drawn --------------------------------------------------------


def choose_texture(rng: np.random.Generator, classes: list[int], follow_bias: bool) -> int:
    """Texture index: with `follow_bias`, water (0) iff class 0 is present; else uniform."""
    if not follow_bias:
        return int(rng.integers(len(TEXTURES)))
    return 0 if 0 in classes else int(rng.integers(1, len(TEXTURES)))


def choose_cue(
    rng: np.random.Generator, classes: list[int], follow_bias: bool, num_classes: int
) -> int:
    """Class named by the cue: with `follow_bias`, one of `classes`; else uniform over all."""
    if follow_bias and classes:
        return int(classes[rng.integers(len(classes))])
    return int(rng.integers(num_classes))


def draw_scene_labels(
    rng: np.random.Generator, params: dict, biased: bool
) -> tuple[list[int], int, int | None]:
    """Classes (drawing order), texture and cue of one image.

    `biased` marks the train split: there each shortcut of ``params["bias"]``
    is followed with probability ``params["bias_strength"]``.
    """
    count = int(rng.integers(params["min_objects"], params["max_objects"] + 1))
    classes = [int(c) for c in rng.choice(params["num_classes"], count, replace=False)]
    bias, strength = params["bias"], params["bias_strength"]
    follow = biased and bias in ("background", "both") and rng.random() < strength
    texture = choose_texture(rng, classes, follow)
    cue = None
    if bias in ("cue", "both"):
        follow = biased and rng.random() < strength
        cue = choose_cue(rng, classes, follow, params["num_classes"])
    return classes, texture, cue


# --- writing ----------------------------------------------------------------------------


def _check_params(p: dict) -> None:
    def whole(name: str, low: int, high: int | None = None) -> None:
        value = p[name]
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or value < low
            or (high is not None and value > high)
        ):
            span = f">= {low}" if high is None else f"in {low}..{high}"
            raise AttnGuideError(f"make_scenes: {name} must be an int {span}, got {value!r}")

    whole("n_train", 1)
    whole("n_val", 0)
    whole("n_test", 0)
    whole("image_size", 4 * CUE_REGION)
    whole("num_classes", 1, len(SHAPES))
    whole("max_objects", 1, p["num_classes"])
    whole("min_objects", 0, p["max_objects"])
    whole("seed", 0)
    if p.get("colours", "class") not in ("class", "shared"):
        raise AttnGuideError(f"make_scenes: colours must be 'class' or 'shared', got {p['colours']!r}")
    if p["bias"] not in BIASES:
        raise AttnGuideError(f"make_scenes: bias must be one of {list(BIASES)}, got {p['bias']!r}")
    strength = p["bias_strength"]
    if (
        isinstance(strength, bool)
        or not isinstance(strength, (int, float))
        or not 0 <= strength <= 1
    ):
        raise AttnGuideError(
            f"make_scenes: bias_strength must be a number in [0, 1], got {strength!r}"
        )


def _write_scenes(folder: Path, params: dict) -> None:
    """Write every split, classes.txt, README.md and, last, scenes.json into `folder`."""
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    names = list(SHAPES[: params["num_classes"]])
    (folder / "classes.txt").write_text("\n".join(names) + "\n", encoding="utf-8")
    sizes = {"train": params["n_train"], "val": params["n_val"], "test": params["n_test"]}
    sizes["train_unbiased"] = params["n_train"]
    for split, count in sizes.items():
        _write_split(folder, split, count, params, names)
    (folder / "README.md").write_text(_readme(params, names), encoding="utf-8")
    (folder / PARAMS_FILE).write_text(json.dumps(params, indent=2) + "\n", encoding="utf-8")


def _write_split(folder: Path, split: str, count: int, params: dict, names: list[str]) -> None:
    """Render `count` scenes of `split` to images/, masks/ and ``{split}.csv``."""
    size = params["image_size"]
    with (folder / f"{split}.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for i in range(count):
            rng = np.random.default_rng([params["seed"], SPLIT_CODES[split], i])
            classes, texture, cue = draw_scene_labels(rng, params, biased=split == "train")
            image, mask = render_scene(rng, classes, texture, cue, size,
                                       params.get("colours") == "shared")
            stem = f"{split}_{i:05d}.png"
            Image.fromarray(image).save(folder / "images" / stem, compress_level=1)
            save_label_png(folder / "masks" / stem, mask)
            labels = " ".join(names[c] for c in sorted(classes))
            cue_name = "" if cue is None else names[cue]
            boxes, points = mask_annotation_cells(mask, names)
            writer.writerow(
                (f"images/{stem}", labels, f"masks/{stem}", TEXTURES[texture], cue_name, boxes,
                 points)
            )


def mask_boxes(mask: np.ndarray) -> list[tuple[int, int, int, int, int]]:
    """``(class, x0, y0, x1, y1)``: the tight box of each class's pixels in an (H, W) label map
    (VOC convention), x1 and y1 one past the last column and row."""
    out = []
    for value in np.unique(mask):
        if 0 < value < 255:
            ys, xs = np.nonzero(mask == value)
            out.append((int(value) - 1, int(xs.min()), int(ys.min()), int(xs.max()) + 1,
                        int(ys.max()) + 1))
    return out


def mask_points(mask: np.ndarray) -> list[tuple[int, int, int]]:
    """``(class, x, y)``: one click per class of an (H, W) label map, on the class's pixel
    nearest to its centroid (so it lies on the object, concave shapes too)."""
    out = []
    for value in np.unique(mask):
        if 0 < value < 255:
            ys, xs = np.nonzero(mask == value)
            k = int(np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2))
            out.append((int(value) - 1, int(xs[k]), int(ys[k])))
    return out


def mask_annotation_cells(mask: np.ndarray, names: list[str]) -> tuple[str, str]:
    """The CSV ``boxes`` and ``points`` cells of a label map: `mask_boxes` and `mask_points`
    in the folder data set's syntax (``name:x0,y0,x1,y1;...`` and ``name:x,y;...``)."""
    boxes = ";".join(f"{names[c]}:{x0},{y0},{x1},{y1}" for c, x0, y0, x1, y1 in mask_boxes(mask))
    points = ";".join(f"{names[c]}:{x},{y}" for c, x, y in mask_points(mask))
    return boxes, points


def _readme(params: dict, names: list[str]) -> str:
    s, t = params["bias_strength"], len(TEXTURES)
    rows = "\n".join(f"| {k} | {v} |" for k, v in params.items())
    return f"""# Biased scenes (generated by attnguide.data.make_scenes)

Coloured shapes on textured backgrounds, with exact segmentation masks.
Regenerate with `make_scenes(out, **params)` using the parameters below
(also in `{PARAMS_FILE}`); the same parameters give byte-identical files.

| parameter | value |
|---|---|
{rows}

## Content
- Classes (`classes.txt`, mask value = line number): {", ".join(names)}.
- Backgrounds: {", ".join(TEXTURES)}. Class 0 ("{names[0]}") is tied to "{TEXTURES[0]}".
- Each image holds {params["min_objects"]} to {params["max_objects"]} shapes of distinct classes;
  later shapes may cover at most 20% of an earlier shape's box; masks show what is visible.
- Splits: train.csv ({params["n_train"]}, biased), val.csv ({params["n_val"]}), test.csv
  ({params["n_test"]}) and train_unbiased.csv ({params["n_train"]}, train-sized, no bias:
  for an oracle model). Files in images/ and masks/ (palette PNG, VOC convention:
  0 background, k = k-th class, no 255).

## Bias (train split only; bias = "{params["bias"]}", strength s = {s})
- background: with probability s a train image is on "{TEXTURES[0]}" iff it holds
  "{names[0]}", else its texture is uniform over the {t}: P(water | {names[0]}) = s + (1 - s)/{t},
  P(water | no {names[0]}) = (1 - s)/{t}.
- cue: a {CUE_SIZE} px square at the top-left corner whose colour names a class; with
  probability s it names a class present in the image, else a uniform class. Shapes
  never enter the top-left {CUE_REGION} px, so masks never contain the cue.
- val, test, train_unbiased: texture and cue uniform, independent of the labels.

CSV columns: {", ".join(CSV_COLUMNS)} (`background` and `cue` record the shortcut drawn;
`boxes` and `points` are the tight box of each class's mask and one click on it, for
`attnguide train --annotations boxes` / `points`).
"""
