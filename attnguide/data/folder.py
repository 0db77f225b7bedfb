"""Folder data sets: ``classes.txt`` plus one CSV per split.

Layout (paths in the CSVs are relative to the folder)::

    root/
      classes.txt      one class name a line, background excluded
      train.csv        columns image,labels,mask (mask optional, may be empty)
      val.csv
      test.csv         optional; any NAME.csv is a split called NAME

``labels`` holds space-separated class names, or ``-`` (:data:`NO_OBJECT`) for an image
that shows none of the classes (an empty cell is refused: it is usually a mistake);
``mask`` a label-map PNG in the
VOC convention (0 background, k for the k-th class of classes.txt counting
from 1, 255 ignore). Extra columns are allowed and ignored.

Optional annotation columns (empty cells: nothing; coordinates in pixels of the stored
image, continuous: the pixel in column x covers x <= u < x + 1):

``boxes``     ``class:x0,y0,x1,y1`` entries joined by ``;``, e.g. ``dog:10,12,40,50;cat:0,0,8,9``
              (x0 < x1, y0 < y1, inside the image; the class among the row's labels)
``points``    ``class:x,y`` entries joined by ``;``, e.g. ``dog:25,31;dog:60,8``
``avoid``     regions where no class may look: ``x0,y0,x1,y1`` boxes joined by ``;``, or
              a PNG path whose non-zero pixels are the region
``scribble``  a sparse label-map PNG (mask values, 255 where nobody drew)
"""

from __future__ import annotations

import csv
from pathlib import Path

from attnguide.data.sample import Sample
from attnguide.errors import AttnGuideError

CLASSES_FILE = "classes.txt"
REQUIRED_COLUMNS = ("image", "labels")
ANNOTATION_COLUMNS = ("boxes", "points", "avoid", "scribble")
"""Optional columns with annotations other than the mask (see the module doc)."""
MAX_CLASSES = 254  # values 1..254 in a uint8 mask; 255 is "ignore"
NO_OBJECT = "-"  # the labels cell of an image that shows none of the classes


def is_folder_dataset(root: Path) -> bool:
    """True when `root` holds a ``classes.txt``."""
    return (root / CLASSES_FILE).is_file()


def read_class_names(root: Path) -> list[str]:
    """Read ``classes.txt``: one non-empty name a line, unique, no spaces, no background."""
    path = root / CLASSES_FILE
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    names = [name for name in names if name]
    if not names:
        raise AttnGuideError(f"{path} lists no class; write one class name a line")
    if names[0].lower() in ("background", "__background__", "_background_"):
        raise AttnGuideError(
            f"{path} starts with {names[0]!r}: leave background out of classes.txt "
            "(mask value 0 is background, value k is the k-th listed class)"
        )
    spaced = [name for name in names if len(name.split()) != 1]
    if spaced:
        raise AttnGuideError(
            f"{path}: class names {spaced} contain spaces, but CSV labels are space-separated; "
            "use '_' instead"
        )
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise AttnGuideError(f"{path} lists {duplicates} more than once; keep each class once")
    if len(names) > MAX_CLASSES:
        raise AttnGuideError(
            f"{path} lists {len(names)} classes; at most {MAX_CLASSES} fit in a mask"
        )
    return names


def read_folder_split(root: Path, split: str, require_labels: bool = True,
                      ) -> tuple[list[str], list[Sample], list[str]]:
    """Parse ``classes.txt`` and ``{split}.csv`` and check that every listed file exists;
    an empty labels cell is an error when ``require_labels``, else a row of unknown labels.

    Returns:
        class_names, samples, sources (``"train.csv line 3"`` for each sample).
    """
    class_names = read_class_names(root)
    csv_path = root / f"{split}.csv"
    if not csv_path.is_file():
        available = sorted(p.stem for p in root.glob("*.csv"))
        raise FileNotFoundError(
            f"split {split!r} needs {csv_path}, which does not exist; "
            f"splits found in {root}: {available or 'none'}"
        )
    index_of = {name: k for k, name in enumerate(class_names)}
    samples, sources = [], []
    with csv_path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        _check_columns(reader.fieldnames, csv_path)
        for row in reader:
            source = f"{csv_path.name} line {reader.line_num}"
            samples.append(_parse_row(row, root, index_of, source, require_labels))
            sources.append(source)
    _check_unique_names(samples, sources, csv_path)
    return class_names, samples, sources


def _check_columns(fieldnames: list[str] | None, csv_path: Path) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in (fieldnames or [])]
    if missing:
        raise AttnGuideError(
            f"{csv_path} lacks column(s) {missing} (header: {fieldnames}); "
            "the first line must be 'image,labels,mask'"
        )


def _parse_row(
    row: dict[str, str | None], root: Path, index_of: dict[str, int], source: str,
    require_labels: bool = True,
) -> Sample:
    image = (row.get("image") or "").strip()
    if not image:
        raise AttnGuideError(f"{source}: the 'image' cell is empty; give an image path")
    names = (row.get("labels") or "").split()
    known = bool(names)
    if not names and require_labels:
        raise AttnGuideError(
            f"{source}: the 'labels' cell is empty; list the image's classes (space-separated), "
            f"or write {NO_OBJECT!r} if the image shows none of them"
        )
    if names == [NO_OBJECT] and NO_OBJECT not in index_of:
        names = []
    unknown = [name for name in names if name not in index_of]
    if unknown:
        raise AttnGuideError(
            f"{source}: unknown class name(s) {unknown}; known classes (classes.txt): {list(index_of)}"
        )
    image_path = root / image
    if not image_path.is_file():
        raise FileNotFoundError(f"{source}: image {image_path} does not exist")
    mask = (row.get("mask") or "").strip()
    mask_path = root / mask if mask else None
    if mask_path is not None and not mask_path.is_file():
        raise FileNotFoundError(
            f"{source}: mask {mask_path} does not exist (leave the cell empty if none)"
        )
    labels = tuple(sorted({index_of[name] for name in names}))
    boxes = tuple((c, *xy) for c, xy in _entries(row.get("boxes"), 4, "boxes", index_of, source))
    points = tuple((c, *xy) for c, xy in _entries(row.get("points"), 2, "points", index_of, source))
    if known:
        listed = [name for name in index_of if index_of[name] in labels] or "no class"
        for kind, rows in (("boxes", boxes), ("points", points)):
            extra = sorted({r[0] for r in rows} - set(labels))
            if extra:
                names_extra = [n for n in index_of if index_of[n] in extra]
                raise AttnGuideError(
                    f"{source}: the {kind} name {names_extra}, but the row's labels are "
                    f"{listed}; add those classes to the labels or fix the {kind}")
    avoid_text = (row.get("avoid") or "").strip()
    avoid_path, avoid = None, ()
    if avoid_text.lower().endswith(".png"):
        avoid_path = _existing(root / avoid_text, source, "avoid region")
    elif avoid_text:
        avoid = tuple(xy for _, xy in _entries(avoid_text, 4, "avoid", None, source))
    scribble = (row.get("scribble") or "").strip()
    scribble_path = _existing(root / scribble, source, "scribble") if scribble else None
    return Sample(
        name=Path(image).with_suffix("").as_posix(),
        image_path=image_path,
        labels=labels,
        mask_path=mask_path,
        labels_known=known,
        boxes=boxes,
        points=points,
        avoid=avoid,
        avoid_path=avoid_path,
        scribble_path=scribble_path,
    )


def _existing(path: Path, source: str, what: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{source}: {what} {path} does not exist (leave the cell "
                                "empty if none)")
    return path


_SYNTAX = {"boxes": "class:x0,y0,x1,y1;class:x0,y0,x1,y1 (e.g. dog:10,12,40,50)",
           "points": "class:x,y;class:x,y (e.g. dog:25,31)",
           "avoid": "x0,y0,x1,y1;x0,y0,x1,y1 (e.g. 0,0,20,12) or a PNG path"}


def _entries(cell: str | None, count: int, column: str, index_of: dict[str, int] | None,
             source: str) -> list[tuple[int, tuple[float, ...]]]:
    """``(class index, coordinates)`` of each ``;``-separated entry of an annotation cell
    (``index_of`` None: entries without a class, index -1)."""
    out = []
    for entry in (cell or "").split(";"):
        entry = entry.strip()
        if not entry:
            continue
        name, coords = None, entry
        if index_of is not None:
            name, sep, coords = entry.partition(":")
            name = name.strip()
            if not sep:
                raise AttnGuideError(f"{source}: {column} entry {entry!r} has no class; write "
                                     f"{_SYNTAX[column]}")
            if name not in index_of:
                raise AttnGuideError(f"{source}: {column} entry {entry!r} names class {name!r}, "
                                     f"which is not in classes.txt ({list(index_of)})")
        try:
            values = tuple(float(v) for v in coords.split(","))
        except ValueError:
            values = ()
        if len(values) != count or not all(map(_finite, values)):
            raise AttnGuideError(f"{source}: {column} entry {entry!r} is not understood; write "
                                 f"{_SYNTAX[column]}")
        if count == 4 and (values[2] <= values[0] or values[3] <= values[1]):
            raise AttnGuideError(f"{source}: {column} box {entry!r} has x1 <= x0 or y1 <= y0; "
                                 "give x0,y0,x1,y1 with x0 < x1 and y0 < y1 (top-left, then "
                                 "bottom-right corner)")
        out.append((index_of[name] if index_of is not None else -1, values))
    return out


def _finite(v: float) -> bool:
    return v == v and abs(v) != float("inf")


def _check_unique_names(samples: list[Sample], sources: list[str], csv_path: Path) -> None:
    first_seen: dict[str, str] = {}
    for sample, source in zip(samples, sources, strict=True):
        if sample.name in first_seen:
            raise AttnGuideError(
                f"{source}: image {sample.name!r} is already listed at {first_seen[sample.name]}; "
                f"list each image once in {csv_path.name}"
            )
        first_seen[sample.name] = source
