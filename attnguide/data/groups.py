"""(class, bias attribute) groups of a data set split, for worst-group accuracy.

Where the groups come from, first found:

1. ``groups.csv`` in the data set folder (written by :func:`attnguide.data.make_composite`,
   or by hand): columns ``image,class,bias``, one row per (image, class) pair; ``image`` as
   in the split CSVs. Images of the split without a row are left out of the groups.
2. The built-in scenes (``scenes.json``): the split CSV's ``background`` column (the
   texture; for ``bias="cue"`` the ``cue`` column: the class the corner square names), one
   pair per labelled class of each image.

A pair's bias values are indexed in sorted order of their names over the whole file (the
same index in every split). Single-label data have one pair per image.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from attnguide.data.folder import read_class_names
from attnguide.errors import AttnGuideError

GROUPS_FILE = "groups.csv"
GROUP_COLUMNS = ("image", "class", "bias")
SCENES_PARAMS = "scenes.json"


@dataclass
class Groups:
    """The (image, class, bias) pairs of one split.

    Attributes:
        bias_names: the bias attribute values (index = position).
        index: (P,) int64 position of each pair's image in the split's samples.
        classes: (P,) int64 class index of each pair.
        bias: (P,) int64 bias index of each pair.
        source: where the groups were read (for messages and reports).
    """

    bias_names: list[str]
    index: Tensor
    classes: Tensor
    bias: Tensor
    source: str

    def __len__(self) -> int:
        return len(self.index)


def read_groups(root: str | Path, split: str, image_paths: list[str] | None = None) -> Groups | None:
    """The groups of ``split`` of the folder data set ``root``, or None when it has none.

    Args:
        root: a folder data set.
        split: the split's CSV stem.
        image_paths: the ``image`` cell of each sample of the split, in order (default: read
            from ``{split}.csv``).

    Raises:
        AttnGuideError: ``groups.csv`` lacks a column, names an unknown class, or pairs an
            image with a class it is not labelled with.
    """
    root = Path(root)
    if not (root / "classes.txt").is_file():
        return None
    class_names = read_class_names(root)
    rows = _split_rows(root, split)
    if image_paths is None:
        image_paths = [row["image"] for row in rows]
    if (root / GROUPS_FILE).is_file():
        return _from_groups_file(root / GROUPS_FILE, class_names, image_paths, rows)
    if (root / SCENES_PARAMS).is_file():
        return _from_scenes(root, class_names, image_paths, rows)
    return None


def _split_rows(root: Path, split: str) -> list[dict[str, str]]:
    path = root / f"{split}.csv"
    if not path.is_file():
        raise FileNotFoundError(f"split {split!r} needs {path}, which does not exist")
    with path.open(newline="", encoding="utf-8") as handle:
        return [{k: (v or "").strip() for k, v in row.items() if k is not None}
                for row in csv.DictReader(handle)]


def _labels_of(rows: list[dict[str, str]]) -> dict[str, set[str]]:
    return {row.get("image", ""): set((row.get("labels") or "").split()) for row in rows}


def _from_groups_file(path: Path, class_names: list[str], image_paths: list[str],
                      rows: list[dict[str, str]]) -> Groups:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in GROUP_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise AttnGuideError(f"{path} lacks column(s) {missing} (header: {reader.fieldnames}); "
                                 "the first line must be 'image,class,bias'")
        entries = [((row["image"] or "").strip(), (row["class"] or "").strip(),
                    (row["bias"] or "").strip(), reader.line_num) for row in reader]
    bias_names = sorted({bias for _, _, bias, _ in entries if bias})
    position = {image: i for i, image in enumerate(image_paths)}
    class_index = {name: k for k, name in enumerate(class_names)}
    labels = _labels_of(rows)
    pairs = []
    for image, name, bias, line in entries:
        if image not in position:
            continue  # another split's image
        if name not in class_index:
            raise AttnGuideError(f"{path} line {line}: unknown class {name!r}; known classes "
                                 f"(classes.txt): {class_names}")
        if not bias:
            raise AttnGuideError(f"{path} line {line}: the 'bias' cell is empty; give the image's "
                                 "bias attribute (e.g. its background pool)")
        if labels.get(image) and name not in labels[image]:
            raise AttnGuideError(f"{path} line {line}: {image} is paired with class {name!r}, but its "
                                 f"labels are {sorted(labels[image])}; fix groups.csv or the split CSV")
        pairs.append((position[image], class_index[name], bias_names.index(bias)))
    return _groups(bias_names, pairs, str(path))


def _from_scenes(root: Path, class_names: list[str], image_paths: list[str],
                 rows: list[dict[str, str]]) -> Groups | None:
    try:
        params = json.loads((root / SCENES_PARAMS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    column = "cue" if params.get("bias") == "cue" else "background"
    by_image = {row.get("image", ""): row for row in rows}
    values = sorted({row.get(column, "") for row in rows} - {""})
    if not values:
        return None
    class_index = {name: k for k, name in enumerate(class_names)}
    pairs = []
    for i, image in enumerate(image_paths):
        row = by_image.get(image)
        if row is None or not row.get(column):
            continue
        for name in (row.get("labels") or "").split():
            if name in class_index:
                pairs.append((i, class_index[name], values.index(row[column])))
    return _groups(values, pairs, f"{root / SCENES_PARAMS} ({column} column)")


def _groups(bias_names: list[str], pairs: list[tuple[int, int, int]], source: str) -> Groups:
    table = torch.tensor(pairs, dtype=torch.int64).view(-1, 3)
    return Groups(bias_names, table[:, 0].clone(), table[:, 1].clone(), table[:, 2].clone(), source)


def dataset_groups(dataset) -> Groups | None:
    """:func:`read_groups` for an :class:`~attnguide.data.ImageLabelDataset` (None for VOC
    and for folder data sets without group information)."""
    root = Path(dataset.root)
    images = []
    for sample in dataset.samples:
        try:
            images.append(Path(sample.image_path).relative_to(root).as_posix())
        except ValueError:
            return None
    return read_groups(root, dataset.split, images)
