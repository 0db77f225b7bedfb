"""``attnguide data box-masks DATA`` and ``data point-masks DATA``: a folder data set's boxes
or clicks become pixel masks.

For each image of ``split`` that has boxes (clicks) and no mask (``replace_masks``: every
image with them), :func:`attnguide.wsss.box_masks.box_mask` fills its boxes by a dense CRF
(the "Simple Does It" recipe, with a CRF where the paper used GrabCut), or
:func:`attnguide.wsss.point_masks.point_mask` grows its clicks by one. Then the mask terms
and their defaults apply to those images: ``--guidance auto`` with masks (GAIN_ext and the
background swap, which cuts the object out by the mask) instead of ``energy+box_swap``
(whose swap keeps the background inside each box) or ``self+point``.

Files, next to the data set's own (nothing of it is changed)::

    DATA/box_masks/SPLIT/<name>.png   the masks (VOC palette), one per image with boxes
    DATA/box_masks/SPLIT/settings.json the options they were made with
    DATA/SPLIT_box_masks.csv          the split's CSV, every column kept, the mask cell
                                      of each image with a box mask pointing to it

(``point_masks`` for clicks), so ``attnguide train --data DATA --train-split SPLIT_box_masks
--pixel-labels 100%`` trains on them. With ``replace_masks`` the data set's own masks score
the masks made (mIoU, printed and in settings.json). Each mask is written atomically; a
second call with the same options reuses the masks it finds, other options need ``overwrite``.
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
from attnguide.wsss.point_masks import point_mask_job

SETTINGS_FILE = "settings.json"
KINDS = {"boxes": ("box_masks", "box", "class:x0,y0,x1,y1;..."), "points": ("point_masks", "click", "class:x,y;...")}
"""annotation column -> (the masks' folder and split suffix, its word, the column's syntax)"""


@dataclass
class MaskFillResult:
    """What :func:`make_box_masks` / :func:`make_point_masks` did: the new split's name and
    CSV, counts, and the mIoU of the masks made against the data set's own masks
    (``replace_masks`` only, else None)."""

    split: str
    csv: Path
    written: int = 0
    reused: int = 0
    kept: int = 0  # images that keep their own mask
    without: int = 0  # images without the annotation
    miou: float | None = None


def make_box_masks(data: str | Path, split: str = "train", *, inner: float = 0.7,
                   crf_params: str = "irn", replace_masks: bool = False, workers: int = 0,
                   overwrite: bool = False, quiet: bool = False, console=None) -> MaskFillResult:
    """Fill the boxes of ``split``: ``DATA/box_masks/SPLIT/`` and ``DATA/SPLIT_box_masks.csv``
    (see the module doc); ``inner``: :func:`attnguide.wsss.box_masks.box_seeds`'."""
    if not 0.0 < inner <= 1.0:
        raise AttnGuideError(f"--inner must lie in (0, 1], got {inner}")
    return _fill("boxes", box_mask_job, {"inner": inner}, data, split, crf_params=crf_params,
                 replace_masks=replace_masks, workers=workers, overwrite=overwrite, quiet=quiet, console=console)


def make_point_masks(data: str | Path, split: str = "train", *, radius: float = 0.1, reach: float = 0.5,
                     crf_params: str = "irn", replace_masks: bool = False, workers: int = 0,
                     overwrite: bool = False, quiet: bool = False, console=None) -> MaskFillResult:
    """Grow the clicks of ``split``: ``DATA/point_masks/SPLIT/`` and
    ``DATA/SPLIT_point_masks.csv`` (see the module doc); ``radius`` and ``reach``:
    :func:`attnguide.wsss.point_masks.point_seeds`' (shares of the image's shorter side)."""
    if not 0.0 < radius < reach <= 2.0:
        raise AttnGuideError(f"--radius and --reach must satisfy 0 < radius < reach <= 2 (shares of the "
                             f"image's shorter side), got {radius} and {reach}")
    return _fill("points", point_mask_job, {"radius": radius, "reach": reach}, data, split,
                 crf_params=crf_params, replace_masks=replace_masks, workers=workers, overwrite=overwrite,
                 quiet=quiet, console=console)


def _fill(kind: str, job, options: dict, data: str | Path, split: str, *,
          crf_params: str, replace_masks: bool, workers: int, overwrite: bool, quiet: bool,
          console) -> MaskFillResult:
    """One CRF ``job`` per image of ``split`` with ``kind`` annotations (``boxes``/``points``);
    ``options``: the kind's settings, in the order ``job`` takes them after the class count."""
    folder_name, word, syntax = KINDS[kind]
    command = folder_name.replace("_", "-")
    root = Path(data)
    if not is_folder_dataset(root):
        voc = " (VOC: list its images and XML boxes in a CSV first)" if kind == "boxes" else ""
        raise AttnGuideError(f"{root} is not a folder data set (no classes.txt); {command} reads the "
                             f"{kind} column of its CSVs{voc}")
    if workers < 0:
        raise AttnGuideError(f"--workers must be >= 0, got {workers}")
    require_crf(command)
    params = parse_crf_params(crf_params)
    ds = open_dataset(root, split, train=False, require_labels=False)
    if not any(getattr(s, kind) for s in ds.samples):
        raise AttnGuideError(f"no image of {root / (split + '.csv')} has a {word}; add the column {kind} "
                             f"({syntax})")
    folder = root / folder_name / split
    settings = {"split": split, **options, "crf_params": asdict(params), "replace_masks": replace_masks}
    _prepare(folder, settings, overwrite)
    console = console or make_console()
    out_split = f"{split}_{folder_name}"
    result = MaskFillResult(split=out_split, csv=root / f"{out_split}.csv")
    names = [BACKGROUND, *ds.class_names]
    scores = ConfusionMatrix(names)
    masks: dict[str, Path] = {}  # sample name -> its mask made here
    jobs, truths = [], []
    for i, sample in enumerate(ds.samples):
        annotations = getattr(sample, kind)
        if not annotations:
            result.without += 1
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
        jobs.append((str(sample.image_path), annotations, len(ds.class_names), *options.values(), params,
                     str(path)))
        truths.append(truth)
    chunk = max(16, 8 * workers)
    with CRFPool(workers) as pool, progress_bar(len(jobs), f"{word} masks", console, quiet) as advance:
        for first in range(0, len(jobs), chunk):
            labels = pool.map(job, jobs[first:first + chunk])
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
                raise AttnGuideError(f"{folder} holds masks made with other options ({', '.join(changed)}); "
                                     "pass --overwrite to make them again")
            shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    clean_stale(folder)  # temporary files of a killed run
    write_json(stored_file, settings)  # first, so a killed run's masks are reused by the next call


def _write_csv(root: Path, split: str, out: Path, masks: dict[str, Path]) -> None:
    """``split``'s CSV with the mask cell of each image in ``masks`` pointing to its new mask."""
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
