"""``attnguide pseudo-label``: a trained classifier's CAMs -> pseudo-label PNGs.

For each image of a split:

1. classes: the image's ground-truth classes; an image listed without any
   class gets the classes the classifier predicts with probability >=
   ``class_threshold`` (its top-1 class for a single-label model); ``classes``
   ``"gt"`` / ``"predicted"`` forces one source for every image.
2. CAMs at the image's own resolution: :func:`attnguide.wsss.pseudo.multiscale_cams_batch`
   over ``guide.attention(batch, classes, resize=False, normalize=False)``: one
   attention() call per scale for up to ``batch_size`` images of the same size,
   their mirror images in the same batch; the raw
   maps are summed over scales and flips, then divided by each class's max
   (PSA / IRN fusion).
3. background score by ``bg`` (``threshold:T``: constant T, IRN's 0.15;
   ``power:P``: ``(1 - max_c CAM_c)^P``, PSA's 4 or 32), label = argmax over
   ``[bg, CAM_1, ..., CAM_K]`` (class c -> value c + 1).
   With ``boxes`` (``auto``: when the classifier was trained on boxes, e.g. ``--guidance
   self+energy``) an image's boxes bound its classes first
   (:func:`attnguide.wsss.pseudo.restrict_to_boxes`, the rule of box-supervised WSSS): a
   class's CAM counts only inside its own boxes, so a pixel outside every box is
   background.
4. optionally a dense CRF on the same scores ``[bg, CAM_1..K]`` (PSA's
   ``crf_inference``; parameters ``crf_params``, default PSA's), run in a pool
   of worker processes.

Files (names are the data set's sample names, so ``attnguide evaluate`` and
``attnguide segment --labels`` find them)::

    OUT/<name>.png          pseudo label, VOC palette (0 bg, c + 1 class c)
    OUT/crf/<name>.png      CRF-refined pseudo label (with crf)
    OUT/cams/<name>.npz     with save_cams: ``cams`` float16 (K, H, W) fused CAMs
                            in [0, 1] and ``classes`` int64 (K,) their class indices
    OUT/metrics.json        when the split has masks: mIoU without ("miou",
                            "per_class", ...) and with CRF ("crf": {...})

Every file is written atomically; ``resume`` skips an image whose files all
exist (its labels are read back, so the metrics still cover the whole split) and
first removes the temporary files a killed writer left (``.NAME...tmp``, see
:func:`attnguide.io.atomic.clean_stale`).

Under ``torchrun --nproc_per_node N -m attnguide pseudo-label ...`` each process
labels every N-th image from its rank (a disjoint slice; each image's files do
not depend on which process made them, so they are byte-identical to one
process's); the confusion matrices and counts are summed and rank 0 alone
writes ``metrics.json`` and prints the table. ``resume`` works per file, with
any number of processes.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attnguide.constants import BACKGROUND
from attnguide.core.annotations import Annotations
from attnguide.core.guidance import guidance_kinds
from attnguide.data import open_dataset
from attnguide.data.folder import is_folder_dataset
from attnguide.engine.distributed import (
    DistInfo,
    all_reduce_max,
    all_reduce_sum,
    resolve_device,
    setup_distributed,
    shard,
)
from attnguide.engine.options import Options
from attnguide.errors import AttnGuideError
from attnguide.io.atomic import atomic_write, clean_stale
from attnguide.io.labels import load_label_png, save_label_png
from attnguide.models.trained import load_model
from attnguide.tasks.common import (
    check_class_lists,
    label_path,
    make_console,
    metrics_table,
    parse_scales,
    progress_bar,
    to_input,
    write_json,
)
from attnguide.wsss.crf import CRFPool, parse_crf_params, require_crf
from attnguide.wsss.crf_jobs import refine_scores
from attnguide.wsss.evaluate import ConfusionMatrix
from attnguide.wsss.pseudo import (
    background_rule,
    cams_to_labels,
    multiscale_cams_batch,
    restrict_to_boxes,
)

CLASS_SOURCES = ("auto", "gt", "predicted")
BOX_USES = ("auto", "on", "off")
BATCH_PIXELS = 16 * 64 * 64
"""Most image pixels whose CAMs go through the model together (before scaling): batching paid
for 64 px images (the demo's: the CAM time halved at 16 a batch) and cost 15 % for 192x256
images on a 2-thread CPU (benchmarks/RESULTS.md, pseudo-label throughput), so large images
go one at a time."""


def images_per_batch(size: tuple[int, int], batch_size: int) -> int:
    """How many images of ``size`` (H, W) :func:`pseudo_label` labels together."""
    return max(1, min(batch_size, BATCH_PIXELS // max(1, size[0] * size[1])))


@dataclass
class PseudoLabelConfig(Options):
    """Options of ``attnguide pseudo-label`` (field comments are the CLI help)."""

    COMMAND = "pseudo-label"  # (class attributes, not options: see engine.options.Options)
    POSITIONAL = ("run",)

    run: str = ""  # classifier run folder (best.pt, else last.pt) or checkpoint file
    data: str = ""  # data set folder (the classifier's data set: same classes)
    split: str = "train"  # split to label (WSSS practice: train)
    out: str = "pseudo"  # output folder: <name>.png, crf/<name>.png, cams/, metrics.json
    scales: tuple[float, ...] = (1.0, 0.5, 1.5, 2.0)  # image scales whose CAMs are fused (IRN, PSA)
    flip: bool = True  # also fuse the CAMs of the mirrored image (same batch as its scale)
    bg: str = "threshold:0.15"  # background score: threshold:T (IRN 0.15) or power:P (PSA 4, 32)
    classes: str = "auto"  # CAM classes: auto (GT, predicted when an image lists none), gt, predicted
    class_threshold: float = 0.5  # probability above which a predicted class gets a CAM
    boxes: str = "auto"  # keep each class's CAM inside its boxes (box-supervised WSSS; outside every box is background): auto (when the run was trained on boxes), on, off
    cam: str | None = None  # CAM method override (default: the run's, e.g. gradcam)
    layer: str | None = None  # attention layer override (default: the run's)
    crf: bool = False  # also write dense-CRF refined labels to OUT/crf/
    crf_params: str = "psa"  # CRF preset irn, psa or deeplab, then overrides: "psa,bilateral_sxy=40"
    save_cams: bool = False  # also write the fused CAMs as OUT/cams/<name>.npz
    workers: int = 0  # CRF worker processes (0 or 1: in this process)
    batch_size: int = 1  # images of one size whose CAMs are computed together, at most (fewer when large: 16 x 64 x 64 pixels a batch); 16 halves the time for small images, but the maps then depend on their batch in the last bits, so files are byte-identical across --resume and torchrun shards only with 1
    resume: bool = False  # skip images whose output files exist
    device: str = "auto"  # auto (cuda if available), cpu, cuda, cuda:1, ...
    quiet: bool = False  # no progress bar, no table

    def validate(self) -> PseudoLabelConfig:
        if not self.run:
            raise AttnGuideError("pass the classifier run folder or checkpoint (RUN)")
        if not self.data:
            raise AttnGuideError("pass the data set with --data PATH")
        self.scales = parse_scales(self.scales)
        if self.classes not in CLASS_SOURCES:
            raise AttnGuideError(f"--classes must be one of {', '.join(CLASS_SOURCES)}, got {self.classes!r}")
        if self.boxes not in BOX_USES:
            raise AttnGuideError(f"--boxes must be one of {', '.join(BOX_USES)}, got {self.boxes!r}")
        if not 0.0 <= self.class_threshold <= 1.0:
            raise AttnGuideError(f"--class-threshold must lie in [0, 1], got {self.class_threshold}")
        if self.workers < 0:
            raise AttnGuideError(f"--workers must be >= 0, got {self.workers}")
        if self.batch_size < 1:
            raise AttnGuideError(f"--batch-size must be >= 1, got {self.batch_size}")

        background_rule(self.bg)
        if self.crf:
            parse_crf_params(self.crf_params)
            require_crf("--crf")
        return self


@dataclass
class PseudoLabelResult:
    """What :func:`pseudo_label` did.

    Attributes:
        out: the output folder.
        images: images in the split.
        written: images labelled now.
        skipped: images found done (``resume``).
        seconds: wall time of the labelling loop (under torchrun: the slowest process's).
        cam_seconds: time in CAM extraction.
        crf_seconds: time waiting for CRFs.
        metrics: :class:`~attnguide.wsss.evaluate.SegMetrics` over the images with masks
            (None without masks).
        crf_metrics: the same for the CRF-refined labels (None without masks or CRF).
        processes: the processes that shared the split (torchrun's WORLD_SIZE); the counts
            and metrics cover all of them.
        config: the options and settings of the run (``pseudo_label.json``).
        images_per_s: ``written / seconds``.
    """

    out: Path
    images: int = 0
    written: int = 0
    skipped: int = 0
    seconds: float = 0.0
    cam_seconds: float = 0.0
    crf_seconds: float = 0.0
    metrics: Any = None
    crf_metrics: Any = None
    processes: int = 1
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def images_per_s(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else float("nan")

    def to_json(self) -> dict[str, Any]:
        """metrics.json: the no-CRF metrics at the top level, the CRF ones under "crf"."""
        out: dict[str, Any] = dict(self.metrics.to_json()) if self.metrics is not None else {}
        out["crf"] = self.crf_metrics.to_json() if self.crf_metrics is not None else None
        out.update({
            "images": self.images,
            "written": self.written,
            "skipped": self.skipped,
            "seconds": self.seconds,
            "images_per_s": self.images_per_s,
            "processes": self.processes,
            "config": self.config,
        })
        return out


def _save_npz(path: Path, cams: np.ndarray, classes: np.ndarray) -> None:
    atomic_write(path, lambda f: np.savez_compressed(f, cams=cams.astype(np.float16),
                                                     classes=classes.astype(np.int64)), durable=False)


class _Labeller:
    """The per-image work: classes, CAMs, label map; holds the model."""

    def __init__(self, cfg: PseudoLabelConfig, trained, device: torch.device) -> None:
        overrides = {k: v for k, v in (("cam", cfg.cam), ("layer", cfg.layer)) if v}
        self.guide = trained.guide(**overrides)
        self.trained = trained
        self.cfg = cfg
        self.device = device
        self.mean, self.std = trained.mean, trained.std

    def cam_fn(self, batch: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        # raw maps (N, K, h', w') at the layer's resolution, float32
        try:
            return self.guide.attention(batch, classes, resize=False, normalize=False).float()
        except AttnGuideError as err:
            h, w = batch.shape[-2:]
            raise AttnGuideError(
                f"CAMs at input size {h}x{w} (one of --scales {','.join(map(str, self.cfg.scales))} "
                f"times the image) failed: {err}. Drop the small scales with --scales, or use an "
                "earlier --layer") from None

    def classes_of(self, labels: tuple[int, ...], x: torch.Tensor) -> torch.Tensor:
        source = self.cfg.classes
        if source == "gt" or (source == "auto" and labels):
            return torch.tensor(sorted(labels), dtype=torch.int64)
        size = self.trained.image_size
        small = torch.nn.functional.interpolate(x[None], size=(size, size), mode="bilinear",
                                                align_corners=False, antialias=True)
        probs = self.trained.predict(small)[0].cpu()  # (C,)
        if not self.trained.multilabel:
            return probs.argmax().reshape(1)
        return torch.nonzero(probs >= self.cfg.class_threshold).reshape(-1)

    def __call__(self, items):
        """``items``: ``(image, labels, boxes)`` of several images -> for each one its classes
        (K,), fused CAMs (K, H, W) in [0, 1], scores (K + 1, H, W) and label (H, W). The CAMs
        of images of one size are computed together, ``batch_size`` at a time. ``boxes``: the
        image's ``(class, x0, y0, x1, y1)`` boxes to keep the CAMs inside."""
        xs = [to_input(image, self.mean, self.std, self.device) for image, _, _ in items]  # (3, H, W)
        classes = [self.classes_of(labels, x) for x, (_, labels, _) in zip(xs, items)]
        cams: list[torch.Tensor | None] = [None] * len(items)
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, x in enumerate(xs):
            by_size.setdefault(tuple(x.shape[-2:]), []).append(i)
        for group in by_size.values():
            group.sort(key=lambda i: len(classes[i]))  # a batch runs one backward per class of its longest list
            per = images_per_batch(xs[group[0]].shape[-2:], self.cfg.batch_size)
            for first in range(0, len(group), per):
                part = group[first:first + per]
                fused = multiscale_cams_batch(self.cam_fn, torch.stack([xs[i] for i in part]),
                                              [classes[i].to(self.device) for i in part],
                                              self.cfg.scales, self.cfg.flip)
                for i, c in zip(part, fused):
                    cams[i] = c.cpu()  # (K, H, W)
        rule = background_rule(self.cfg.bg)
        out = []
        for (_, _, boxes), cls, cam in zip(items, classes, cams):
            if len(boxes) and len(cls):
                inside, _ = Annotations([{"boxes": boxes}]).box_targets(
                    self.trained.num_classes, size=tuple(cam.shape[-2:]))
                cam = restrict_to_boxes(cam, inside[0, cls])
            scores = torch.cat([rule(cam)[None], cam])  # (K + 1, H, W)
            out.append((cls, cam, scores, cams_to_labels(cam, cls, rule)))
        return out


def pseudo_label(cfg: PseudoLabelConfig, console=None) -> PseudoLabelResult:
    """Write pseudo labels for a split (see the module doc); return counts, timing, mIoU.

    Under torchrun every process labels its slice of the split and gets the merged
    result (counts and metrics of the whole split); rank 0 writes ``metrics.json``.

    Example:
        >>> res = pseudo_label(PseudoLabelConfig(run="runs/ext", data="data/scenes",   # doctest: +SKIP
        ...                                      out="pseudo", crf=True, workers=2))
        >>> res.metrics.miou, res.crf_metrics.miou, res.images_per_s
    """
    cfg.validate()
    device = resolve_device(cfg.device)
    info = setup_distributed(device)
    try:
        return _pseudo_label(cfg, console, device, info)
    finally:
        info.close()


def _pseudo_label(cfg: PseudoLabelConfig, console, device: torch.device, info: DistInfo) -> PseudoLabelResult:
    quiet = cfg.quiet or not info.is_main
    console = console or make_console()
    trained = load_model(cfg.run, device=device)  # refuses a segmenter run, naming it
    ds, use_boxes = _open_split(cfg, trained)
    check_class_lists(trained.class_names, ds.class_names, f"classifier {trained.checkpoint}",
                      f"data set {ds.root} (classes.txt)")
    crf_params = parse_crf_params(cfg.crf_params) if cfg.crf else None
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    names = [BACKGROUND, *ds.class_names]
    plain, refined = ConfusionMatrix(names), ConfusionMatrix(names)
    has_gt = False
    labeller = _Labeller(cfg, trained, device)
    result = PseudoLabelResult(out=out, images=len(ds), processes=info.world_size, config={
        **asdict(cfg), "scales": list(cfg.scales), "checkpoint": str(Path(trained.checkpoint).resolve()),
        "layer": labeller.guide.layer_name, "crf_params": asdict(crf_params) if crf_params else None,
        "within_boxes": use_boxes})

    def outputs(name: str) -> list[Path]:
        files = [label_path(out, name)]
        if cfg.crf:
            files.append(label_path(out / "crf", name))
        if cfg.save_cams:
            files.append(label_path(out / "cams", name, ".npz"))
        return files

    # every rank checks (the same answer everywhere), rank 0 records the settings
    _check_settings(out, result.config, cfg.resume, write=info.is_main)
    if info.is_main:
        clean_stale(out)  # temporary files of a killed run (never a running writer's)
    mine = shard(len(ds), info)  # this process's images
    chunk = max(8, 4 * cfg.workers, cfg.batch_size)  # images labelled (and CRF'd in the pool) together
    start = time.perf_counter()
    with CRFPool(cfg.workers if cfg.crf else 0) as pool, \
            progress_bar(len(mine), "pseudo-label", console, quiet) as advance:
        for first in range(0, len(mine), chunk):
            todo = []  # (sample, files, image, gt) of the chunk's images not done yet
            for i in mine[first:first + chunk]:
                sample = ds.samples[i]
                files = outputs(sample.name)
                image, gt = ds.load_raw(i)
                has_gt = has_gt or gt is not None
                if cfg.resume and all(f.is_file() for f in files):
                    result.skipped += 1
                    if gt is not None:
                        plain.update(_check_size(load_label_png(files[0]), gt, files[0]), gt)
                        if cfg.crf:
                            refined.update(_check_size(load_label_png(files[1]), gt, files[1]), gt)
                    advance()
                    continue
                todo.append((sample, files, image, gt))
            if not todo:
                continue
            t0 = time.perf_counter()
            labelled = labeller([(image, sample.labels, sample.boxes if use_boxes else ())
                                 for sample, _, image, _ in todo])
            result.cam_seconds += time.perf_counter() - t0
            jobs, gts = [], []
            for (_, files, image, gt), (classes, cams, scores, label) in zip(todo, labelled):
                save_label_png(files[0], label)
                if cfg.save_cams:
                    _save_npz(files[-1], cams.numpy(), classes.numpy())
                if gt is not None:
                    plain.update(label, gt)
                if cfg.crf:
                    values = np.concatenate([[0], classes.numpy() + 1]).astype(np.uint8)
                    jobs.append((image, scores.numpy().astype(np.float32), values, crf_params,
                                 str(files[1])))
                    gts.append(gt)
                result.written += 1
            if jobs:
                t0 = time.perf_counter()
                labels = pool.map(refine_scores, jobs)
                result.crf_seconds += time.perf_counter() - t0
                for label, gt in zip(labels, gts):
                    if gt is not None:
                        refined.update(label, gt)
            advance(len(todo), ips=f"{result.written / (time.perf_counter() - start):.1f}")
    result.seconds = time.perf_counter() - start
    has_gt = _merge(result, plain, refined, has_gt, info)
    if has_gt:
        result.metrics = plain.metrics()
        result.crf_metrics = refined.metrics() if cfg.crf else None
        if info.is_main:
            write_json(out / "metrics.json", result.to_json())
        if not quiet:
            columns = {"pseudo label": result.metrics}
            if result.crf_metrics is not None:
                columns["+ CRF"] = result.crf_metrics
            console.print(metrics_table(columns, title=f"pseudo labels of {ds.split!r} vs ground truth"))
    info.barrier()  # metrics.json is there when any process returns
    return result


def _open_split(cfg: PseudoLabelConfig, trained):
    """The split to label, and whether its boxes bound the CAMs (``--boxes``)."""
    trained_on_boxes = "boxes" in guidance_kinds(trained.config.get("guidance") or "none")
    want = cfg.boxes == "on" or (cfg.boxes == "auto" and trained_on_boxes)
    options = {"image_size": trained.image_size, "train": False, "require_labels": False}
    ds = open_dataset(cfg.data, cfg.split, **options)
    if want and not any(s.boxes for s in ds.samples) and not is_folder_dataset(ds.root):
        try:  # VOC reads Annotations/*.xml only when boxes are asked for
            ds = open_dataset(cfg.data, cfg.split, annotations="masks,boxes", **options)
        except (AttnGuideError, FileNotFoundError):
            pass
    has_boxes = any(s.boxes for s in ds.samples)
    if cfg.boxes == "on" and not has_boxes:
        raise AttnGuideError(
            f"--boxes on: no image of split {cfg.split!r} of {cfg.data} has a box; add the CSV "
            "column boxes (class:x0,y0,x1,y1;...), or VOC's Annotations/*.xml, or use --boxes off")
    return ds, want and has_boxes


def _merge(result: PseudoLabelResult, plain: ConfusionMatrix, refined: ConfusionMatrix, has_gt: bool,
           info: DistInfo) -> bool:
    """Sum the processes' confusion matrices and counts (max of the times); -> any ground truth."""
    if not info.enabled:
        return has_gt
    n = len(plain.class_names)
    sums = torch.cat([torch.from_numpy(plain.confusion).flatten(),
                      torch.from_numpy(refined.confusion).flatten(),
                      torch.tensor([result.written, result.skipped, int(has_gt)], dtype=torch.int64)])
    sums = all_reduce_sum(sums, info)
    plain.confusion = sums[:n * n].reshape(n, n).numpy().copy()
    refined.confusion = sums[n * n:2 * n * n].reshape(n, n).numpy().copy()
    result.written, result.skipped = int(sums[-3]), int(sums[-2])
    times = all_reduce_max(torch.tensor([result.seconds, result.cam_seconds, result.crf_seconds],
                                        dtype=torch.float64), info)
    result.seconds, result.cam_seconds, result.crf_seconds = (float(t) for t in times)
    return bool(sums[-1])


# options that change the files; a resumed run must use the same ones
_LABEL_SETTINGS = ("checkpoint", "split", "scales", "flip", "bg", "classes", "class_threshold", "cam",
                   "layer", "crf_params")
SETTINGS_FILE = "pseudo_label.json"


def _check_settings(out: Path, config: dict[str, Any], resume: bool, write: bool = True) -> None:
    """Refuse to resume into a folder labelled with other settings; record this run's
    (``write``: rank 0 only under torchrun)."""
    import json

    path = out / SETTINGS_FILE
    if resume and path.is_file():
        try:
            before = json.loads(path.read_text())
        except ValueError:
            before = {}
        changed = [k for k in _LABEL_SETTINGS if k in before and before[k] != config.get(k)
                   and not (k == "crf_params" and (before[k] is None or config.get(k) is None))]
        if changed:
            shown = "; ".join(f"{k} {before[k]!r} -> {config.get(k)!r}" for k in changed[:4])
            raise AttnGuideError(
                f"{out} holds pseudo labels made with other settings ({shown}); --resume needs the same "
                "options, or write to another --out")
        if before.get("crf_params") and not config.get("crf_params"):
            config["crf_params"] = before["crf_params"]
    if write:
        write_json(path, config)


def _check_size(label: np.ndarray, gt: np.ndarray, path: Path) -> np.ndarray:
    if label.shape != gt.shape:
        raise AttnGuideError(
            f"{path} is {label.shape} but its ground truth is {gt.shape}: the folder holds labels "
            "of another data set; use another --out or run without --resume")
    return label
