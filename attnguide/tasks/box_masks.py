"""``attnguide data box-masks DATA``: a folder data set's boxes become pixel masks.

For each image of ``split`` that has boxes and no mask (``replace_masks``: every image
with boxes), :func:`attnguide.wsss.box_masks.box_mask` fills its boxes by a dense CRF
(the "Simple Does It" recipe, with a CRF where the paper used GrabCut). Then the mask
terms and their defaults apply to box-annotated images: ``--guidance auto`` with masks
(GAIN_ext and the background swap, which cuts the object out by the mask) instead of
``energy+box_swap``, whose swap keeps the background inside each box.

Files, next to the data set's own (nothing of it is changed)::

    DATA/box_masks/SPLIT/<name>.png   the masks (VOC palette), one per image with boxes
    DATA/box_masks/SPLIT/settings.json the options they were made with
    DATA/SPLIT_box_masks.csv          the split's CSV, every column kept, the mask cell
                                      of each image with a box mask pointing to it

so ``attnguide train --data DATA --train-split SPLIT_box_masks --pixel-labels 100%``
trains on them. With ``replace_masks`` the data set's own masks score the box masks
(mIoU, printed and in settings.json). Each mask is written atomically; a second call with
the same options reuses the masks it finds, other options need ``overwrite``.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from attnguide.constants import BACKGROUND
from attnguide.data import open_dataset
from attnguide.data.folder import is_folder_dataset
from attnguide.errors import AttnGuideError
from attnguide.io.atomic import atomic_write, clean_stale
from attnguide.io.labels import load_label_png
from attnguide.tasks.common import label_path, make_console, progress_bar, write_json
from attnguide.wsss.box_masks import box_mask_job
from attnguide.wsss.crf import CRFPool, parse_crf_params, require_crf
from attnguide.wsss.evaluate import ConfusionMatrix

FOLDER = "box_masks"
SETTINGS_FILE = "settings.json"


@dataclass
class BoxMaskResult:
    """What :func:`make_box_masks` did: the new split's name and CSV, counts, and the mIoU of
    the box masks against the data set's own masks (``replace_masks`` only, else None)."""

    split: str
    csv: Path
    written: int = 0
    reused: int = 0
    kept: int = 0  # images that keep their own mask
    without_boxes: int = 0
    miou: float | None = None


def make_box_masks(data: str | Path, split: str = "train", *, inner: float = 0.7,
                   crf_params: str = "irn", replace_masks: bool = False, workers: int = 0,
                   overwrite: bool = False, quiet: bool = False, console=None) -> BoxMaskResult:
    """Write the masks and ``DATA/SPLIT_box_masks.csv`` (see the module doc)."""
    root = Path(data)
    if not is_folder_dataset(root):
        raise AttnGuideError(f"{root} is not a folder data set (no classes.txt); box-masks reads the "
                             "boxes column of its CSVs (VOC: list its images and XML boxes in a CSV first)")
    if not 0.0 < inner <= 1.0:
        raise AttnGuideError(f"--inner must lie in (0, 1], got {inner}")
    if workers < 0:
        raise AttnGuideError(f"--workers must be >= 0, got {workers}")
    require_crf("box-masks")
    params = parse_crf_params(crf_params)
    ds = open_dataset(root, split, train=False, require_labels=False)
    if not any(s.boxes for s in ds.samples):
        raise AttnGuideError(f"no image of {root / (split + '.csv')} has a box; add the column boxes "
                             "(class:x0,y0,x1,y1;...)")
    folder = root / FOLDER / split
    settings = {"split": split, "inner": inner, "crf_params": asdict(params), "replace_masks": replace_masks}
    _prepare(folder, settings, overwrite)
    console = console or make_console()
    out_split = f"{split}_box_masks"
    result = BoxMaskResult(split=out_split, csv=root / f"{out_split}.csv")
    names = [BACKGROUND, *ds.class_names]
    scores = ConfusionMatrix(names)
    masks: dict[str, Path] = {}  # sample name -> its box mask
    jobs, truths = [], []
    for i, sample in enumerate(ds.samples):
        if not sample.boxes:
            result.without_boxes += 1
            continue
        if sample.mask_path is not None and not replace_masks:
            result.kept += 1
            continue
        path = label_path(folder, sample.name)
        masks[sample.name] = path
        truth = ds.load_raw(i)[1] if sample.mask_path is not None else None
        if path.is_file():
            result.reused += 1
            if truth is not None:
                scores.update(load_label_png(path), truth)
            continue
        jobs.append((str(sample.image_path), sample.boxes, len(ds.class_names), inner, params, str(path)))
        truths.append(truth)
    chunk = max(16, 8 * workers)
    with CRFPool(workers) as pool, progress_bar(len(jobs), "box masks", console, quiet) as advance:
        for first in range(0, len(jobs), chunk):
            labels = pool.map(box_mask_job, jobs[first:first + chunk])
            for label, truth in zip(labels, truths[first:first + chunk]):
                if truth is not None:
                    scores.update(label, truth)
            result.written += len(labels)
            advance(len(labels))
    if replace_masks and masks:
        result.miou = scores.metrics().miou
    _write_csv(root, split, result.csv, masks)
    write_json(folder / SETTINGS_FILE, {**settings, "miou_against_masks": result.miou})
    return result


def _prepare(folder: Path, settings: dict, overwrite: bool) -> None:
    """Keep ``folder``'s masks when they were made with ``settings``; else clear it (with
    ``overwrite``) or refuse, naming the options that differ."""
    stored_file = folder / SETTINGS_FILE
    if folder.exists() and any(folder.iterdir()):
        stored = json.loads(stored_file.read_text()) if stored_file.is_file() else {}
        stored.pop("miou_against_masks", None)
        if stored != settings:
            if not overwrite:
                changed = sorted(k for k in settings if stored.get(k) != settings[k]) or ["unknown"]
                raise AttnGuideError(f"{folder} holds box masks made with other options ({', '.join(changed)}); "
                                     "pass --overwrite to make them again")
            shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    clean_stale(folder)  # temporary files of a killed run
    write_json(stored_file, settings)  # first, so a killed run's masks are reused by the next call


def _write_csv(root: Path, split: str, out: Path, masks: dict[str, Path]) -> None:
    """``split``'s CSV with the mask cell of each image in ``masks`` pointing to its box mask."""
    with (root / f"{split}.csv").open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        rows, columns = list(reader), list(reader.fieldnames or [])
    if "mask" not in columns:
        columns.insert(2, "mask")
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        name = Path(row["image"].strip()).with_suffix("").as_posix()
        if name in masks:
            row["mask"] = masks[name].relative_to(root).as_posix()
        writer.writerow(row)
    atomic_write(out, text.getvalue().encode("utf-8"))
