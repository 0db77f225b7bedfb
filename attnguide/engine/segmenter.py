"""The segmenter's training loop (``attnguide segment``), on :class:`attnguide.engine.loop.Loop`.

One iteration of ``mode="pseudo"`` (the default)::

    images (B, 3, S, S), labels (B, S, S) in 0..C or 255 (ignored)
    loss = cross_entropy(model(images), labels, ignore_index=255)
    loss.backward(); optimizer.step(); scheduler.step()

``mode="sec"`` trains with SEC's losses (seed, expand, constrain;
:mod:`attnguide.wsss.sec`), as GAIN did with its attention as SEC's cues::

    cues (B, S, S): seed_cues of the image's saved CAMs (pseudo-label --save-cams),
        class c where its CAM > fg_fraction x its max, background where every
        CAM < bg_threshold x its max, 255 elsewhere; same geometry as the image
    logits (B, C + 1, h, w) at stride 8 (the segmenter's
        :meth:`~attnguide.models.segmenters.SegmenterSpec.stride8_logits`: DeepLab-LargeFOV's
        fc8; other archs: their full-size logits average-pooled by 8), cues resized to (h, w)
    loss = seeding_loss(logits, cues)
         + expansion_loss(logits, image labels, fg_decay, bg_decay)      # GWRP
         + constrain_weight * constrain_loss(logits, images)             # dense CRF

Optimisation (the defaults): AdamW, weight decay 1e-2, peak ``lr`` 1e-3 for the
decoder, ``encoder_lr_mult`` times it for the encoder (default 0.1 when ``weights``
loads a pretrained encoder, 1 from scratch) and ``head_lr_mult`` (1) times it for
the last classifier layer (the segmenter's
:meth:`~attnguide.models.segmenters.SegmenterSpec.param_groups`); a linear warm-up
over the first ``warmup_iterations`` (default 5% of the run), then a per-iteration
``poly`` ``(1 - t/T)^0.9``, ``cosine`` or ``step`` (x ``step_gamma`` every
``step_size`` iterations) schedule over ``T`` = ``iterations``, or ``epochs`` x
batches per epoch. ``class_weights="balanced"`` weighs the cross-entropy by each
class's pixel share ``** -0.5``; ``label_smoothing`` smooths it. DeepLab's recipe
(SGD, momentum 0.9, weight decay 5e-4, lr 1e-3, fc8 at 10x, no warm-up, step
schedule) is ``benchmarks/voc2012/configs/segment-largefov.yaml``.

After each epoch (and at the last iteration): mIoU on ``val_split`` at the
images' own size (``val_miou``; ``val_miou_crf`` after DeepLab-v1 dense-CRF
post-processing with ``crf_eval``), then the loop's metrics.jsonl, last.pt and
(when ``val_miou`` improved) best.pt; resume is the loop's, bit-exact on CPU.
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from attnguide.constants import BACKGROUND, IGNORE, IMAGENET_MEAN, IMAGENET_STD
from attnguide.core.hooks import eval_mode
from attnguide.data import open_dataset
from attnguide.data.io import read_rgb
from attnguide.data.segmentation import SegmentationSet, cams_folder, label_path, shown, to_input
from attnguide.engine.loader import EpochBatchSampler, make_loader
from attnguide.engine.loop import Loop, RunResult
from attnguide.engine.segment_config import SEC_PARTS, SegmentConfig, save_config
from attnguide.errors import AttnGuideError
from attnguide.io.checkpoints import SEGMENTER
from attnguide.models.segmenters import (
    SegmenterSpec,
    Stride8Logits,
    create_segmenter,
    main_output,
    segmenter_spec,
)
from attnguide.wsss.crf import CRFPool, parse_crf_params
from attnguide.wsss.crf_jobs import refine_scores
from attnguide.wsss.evaluate import ConfusionMatrix
from attnguide.wsss.pseudo import seed_cues
from attnguide.wsss.sec import constrain_loss, expansion_loss, seeding_loss

SegmentResult = RunResult
"""What :func:`attnguide.tasks.segmentation.segment` returns (the loop's one result type)."""


# ---------------------------------------------------------------------- data


class CueSet(SegmentationSet):
    """SEC's training items: images with localisation cues from saved CAMs.

    The cue map of an image is :func:`attnguide.wsss.pseudo.seed_cues` of its
    ``cams/<name>.npz`` (``cams (K, H, W)`` in [0, 1], ``classes (K,)``),
    computed at the image's size and then cropped, scaled and flipped with the
    image as the label map of :class:`SegmentationSet` is (255 = no cue, also
    in the padding). Items: ``image (3, S, S)``, ``label (S, S)`` int64 cues in
    0..C or 255, ``labels (C,)`` float32 multi-hot image-level labels of the
    data set (the expand loss), ``index``.
    """

    def __init__(self, ds, cams_dir: Path, crop_size: int, scales: tuple[float, float],
                 fg_fraction: float, bg_threshold: float) -> None:
        self.fg_fraction, self.bg_threshold = fg_fraction, bg_threshold
        super().__init__(ds, cams_dir, crop_size, scales)

    def label_file(self, index: int) -> Path:
        return label_path(self.labels_dir, self.ds.samples[index].name, ".npz")

    def _check_files(self) -> None:
        missing = self._missing()
        if missing:
            ds, folder = self.ds, self.labels_dir
            out = folder.parent if folder.name == "cams" else folder
            raise AttnGuideError(
                f"CAM folder {str(folder)!r} lacks {len(missing)} of the {len(ds)} CAM files (.npz) of "
                f"split {ds.split!r}: {shown(missing)}; run 'attnguide pseudo-label RUN --data {ds.root} "
                f"--split {ds.split} --out {out} --save-cams --resume'")

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Image ``uint8 (H, W, 3)`` and cue map ``uint8 (H, W)`` at the original size."""
        sample, path = self.ds.samples[index], self.paths[index]
        image = read_rgb(sample.image_path)
        try:
            with np.load(path) as npz:
                cams, classes = npz["cams"].astype(np.float32), npz["classes"].astype(np.int64)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
            raise AttnGuideError(f"cannot read CAM file {path} ({type(err).__name__}: {err}); it must hold "
                                 "'cams' (K, H, W) and 'classes' (K,) as pseudo-label --save-cams writes "
                                 "them: delete it and rerun pseudo-label with --resume") from None
        if cams.ndim != 3 or cams.shape[1:] != image.shape[:2] or classes.shape != (cams.shape[0],):
            raise AttnGuideError(
                f"CAM file {path} holds cams {cams.shape} and classes {classes.shape} but image "
                f"{sample.image_path} is {image.shape[1]}x{image.shape[0]}; expected cams (K, "
                f"{image.shape[0]}, {image.shape[1]}) and classes (K,): were they made for another data set?")
        if classes.size and (classes.min() < 0 or classes.max() >= self.num_classes):
            raise AttnGuideError(f"CAM file {path} names classes {classes.tolist()} but the data set has "
                                 f"{self.num_classes} (0..{self.num_classes - 1})")
        return image, seed_cues(cams, classes, self.fg_fraction, self.bg_threshold)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = super().__getitem__(index)
        labels = torch.zeros(self.num_classes, dtype=torch.float32)
        labels[list(self.ds.samples[index].labels)] = 1.0
        item["labels"] = labels
        return item


def to_uint8_images(images: torch.Tensor) -> torch.Tensor:
    """Normalised ``(B, 3, S, S)`` -> ``uint8 (B, S, S, 3)`` RGB (the constrain loss's CRF input)."""
    mean = images.new_tensor(IMAGENET_MEAN)[:, None, None]
    std = images.new_tensor(IMAGENET_STD)[:, None, None]
    rgb = ((images.detach().float() * std + mean) * 255).round().clamp(0, 255)
    return rgb.to(torch.uint8).permute(0, 2, 3, 1).cpu()



# ---------------------------------------------------------------------- schedule


def lr_factor(cfg: SegmentConfig, total: int):
    """The schedule's factor of the peak LR at iteration t (see the module doc): poly,
    cosine or step over ``total`` iterations, times a linear warm-up ``(t + 1) / W`` over
    the first ``W = cfg.warmup(total)`` iterations."""
    every = cfg.step_size or max(1, total // 4)
    warm = cfg.warmup(total)

    def factor(t: int) -> float:
        progress = min(t, total) / total
        if cfg.schedule == "poly":
            f = (1 - progress) ** cfg.poly_power
        elif cfg.schedule == "cosine":
            f = 0.5 * (1 + math.cos(math.pi * progress))
        else:
            f = cfg.step_gamma ** (t // every)
        if warm and t < warm:
            f *= (t + 1) / warm
        return f

    return factor


def param_groups(spec: SegmenterSpec, model: nn.Module, cfg: SegmentConfig) -> list[dict]:
    """The segmenter's optimizer groups: its spec's (body at ``lr``, last classifier layer at
    ``head_lr_mult * lr``) with the encoder (an smp model's ``encoder``, DeepLab-LargeFOV's
    VGG ``features``) split off at ``encoder_factor() * lr``."""
    groups = spec.param_groups(model, cfg.lr, cfg.head_lr_mult)
    encoder = getattr(model, "encoder", None) or getattr(model, "features", None)
    factor = cfg.encoder_factor()
    if not isinstance(encoder, nn.Module) or factor == 1.0:
        return groups
    ids = {id(p) for p in encoder.parameters()}
    body = groups[0]["params"]
    groups[0] = {"params": [p for p in body if id(p) not in ids], "lr": cfg.lr}
    groups.insert(0, {"params": [p for p in body if id(p) in ids], "lr": cfg.lr * factor})
    return [g for g in groups if g["params"]]


def build_optimizer(cfg: SegmentConfig, groups: list[dict]) -> torch.optim.Optimizer:
    """AdamW (the default) or SGD with ``momentum`` over ``groups``."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def balanced_class_weights(train_set: SegmentationSet, num_classes: int) -> torch.Tensor:
    """``(N,)`` cross-entropy weights ``share_c ** -0.5`` from the pixel shares of the training
    label maps (255 ignored; a class that never occurs gets weight 0), scaled so that the
    average weight over the training pixels is 1."""
    counts = np.zeros(num_classes, dtype=np.float64)
    for i in range(len(train_set)):
        _, label = train_set.load(i)
        valid = label[label != IGNORE]  # load() checked the values: 0..num_classes - 1
        counts += np.bincount(valid.ravel(), minlength=num_classes)[:num_classes]
    if counts.sum() == 0:
        raise AttnGuideError("--class-weights balanced found no labelled pixel in the training labels")
    share = counts / counts.sum()
    weights = np.where(share > 0, np.power(np.maximum(share, 1e-12), -0.5), 0.0)
    weights /= float((weights * share).sum())
    return torch.tensor(weights, dtype=torch.float32)



# ---------------------------------------------------------------------- trainer


class SegmentTrainer(Loop):
    """Builds everything from a :class:`SegmentConfig`; :meth:`fit` trains (see the module doc)."""

    config_name = "segment.yaml"

    def _build(self, cfg: SegmentConfig) -> None:
        # ---- data
        ds = open_dataset(cfg.data, cfg.train_split, train=False)
        self.class_names = [BACKGROUND, *ds.class_names]
        labels_dir = None if cfg.labels.lower() == "gt" else Path(cfg.labels)
        if labels_dir is not None and not labels_dir.is_dir():
            raise FileNotFoundError(f"label folder {str(labels_dir)!r} does not exist; pass the --out "
                                    "folder of 'attnguide pseudo-label', or --labels gt")
        if cfg.mode == "sec":
            self.train_set = CueSet(ds, cams_folder(labels_dir), cfg.crop_size, cfg.scales,
                                    cfg.fg_fraction, cfg.bg_threshold)
        else:
            self.train_set = SegmentationSet(ds, labels_dir, cfg.crop_size, cfg.scales)
        # the epoch's running sums: loss, images, then (sec) the three losses
        self.loss_parts = SEC_PARTS if cfg.mode == "sec" else ()
        self.val_ds = None
        if cfg.val_split:
            self.val_ds = open_dataset(cfg.data, cfg.val_split, train=False)
            if self.val_ds.class_names != ds.class_names:
                raise AttnGuideError(f"splits {cfg.train_split!r} and {cfg.val_split!r} have different classes")
            if not any(s.mask_path is not None for s in self.val_ds.samples):
                self.reporter.warn(f"split {cfg.val_split!r} has no masks: no val mIoU")
                self.val_ds = None
        if cfg.batch_size % self.dist.world_size:
            raise AttnGuideError(f"--batch-size {cfg.batch_size} (the global batch) must be divisible "
                                 f"by the {self.dist.world_size} processes")
        self.local_batch = cfg.batch_size // self.dist.world_size
        if self.local_batch > len(self.train_set):
            raise AttnGuideError(f"--batch-size {cfg.batch_size} is larger than the "
                                 f"{len(self.train_set)} training images")
        self.sampler = EpochBatchSampler(len(self.train_set), self.local_batch, cfg.seed,
                                         self.dist.rank, self.dist.world_size)
        self.loader = make_loader(self.train_set, self.sampler, cfg.seed, cfg.workers,
                                  pin_memory=self.device.type == "cuda")
        self.steps_per_epoch = self.sampler.batches_per_epoch()
        if cfg.iterations is not None:
            self.total_steps = cfg.iterations
        else:
            self.total_steps = (cfg.epochs or 10) * self.steps_per_epoch
        self.epochs = math.ceil(self.total_steps / self.steps_per_epoch)

        # ---- resume: check before building the model
        self.spec = segmenter_spec(cfg.arch)
        self.encoder = self.spec.encoder(cfg.encoder)
        state = self.read_resume(SEGMENTER)
        if state is not None:
            self._check_compatible(state)
            self.resume_state = state

        # ---- model
        self.model = create_segmenter(cfg.arch, self.encoder, len(self.class_names),
                                      None if self.resume_state else cfg.weights, cfg.decoder_widths)
        multiple = self.spec.input_multiple(self.model)
        if cfg.crop_size % multiple:
            good = math.ceil(cfg.crop_size / multiple) * multiple
            raise AttnGuideError(
                f"--crop-size {cfg.crop_size} is not a multiple of {multiple}, the output stride of "
                f"{cfg.arch} with encoder {self.encoder}; use --crop-size {good}")
        self.model.to(self.device)
        # what the training step calls: the segmenter, or its stride-8 logits for SEC's losses
        module = Stride8Logits(self.model, self.spec) if cfg.mode == "sec" else self.model
        self.module: nn.Module = self.wrap_ddp(module)
        self.crf_pool: CRFPool | None = None  # the constrain loss's CRFs (--mode sec), started on first use
        self.optimizer = build_optimizer(cfg, param_groups(self.spec, self.model, cfg))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_factor(cfg, self.total_steps))
        self.scaler = self.make_scaler()
        self.sums = torch.zeros(2 + len(self.loss_parts), dtype=torch.float64, device=self.device)
        self.best_metric = "val_miou"
        self.class_weights = None
        if cfg.mode == "pseudo" and cfg.class_weights == "balanced":
            self.class_weights = balanced_class_weights(self.train_set, len(self.class_names)).to(self.device)

    def _check_compatible(self, state: dict[str, Any]) -> None:
        cfg = self.cfg
        where = str(self.resume_path)
        if list(state["class_names"]) != self.class_names:
            raise AttnGuideError(f"cannot resume from {where}: its classes {state['class_names'][1:]} differ "
                                 f"from the data set's {self.class_names[1:]}")
        if (state["arch"], state.get("encoder")) != (cfg.arch, self.encoder):
            raise AttnGuideError(f"cannot resume from {where}: it is --arch {state['arch']} --encoder "
                                 f"{state.get('encoder')}, not {cfg.arch} {self.encoder}")
        if state.get("decoder_channels") != cfg.decoder_widths:  # the checkpoint keeps the tuple
            raise AttnGuideError(f"cannot resume from {where}: its decoder has channels "
                                 f"{state.get('decoder_channels')}, not {cfg.decoder_widths} "
                                 "(--decoder-channels); keep the setting or start a new --out")
        mode = (state.get("config") or {}).get("mode", "pseudo")
        if mode != cfg.mode:
            raise AttnGuideError(f"cannot resume from {where}: it was trained with --mode {mode}, not "
                                 f"--mode {cfg.mode}; start a new run with another --out")
        if state.get("total_steps") != self.total_steps:
            self.reporter.warn(f"resuming with {self.total_steps} total iterations instead of "
                               f"{state.get('total_steps')}: the LR schedule changes")

    # ------------------------------------------------------------------ the loop's hooks

    def checkpoint_extras(self) -> dict[str, Any]:
        return {"kind": SEGMENTER, "total_steps": self.total_steps, "arch": self.cfg.arch,
                "encoder": self.encoder, "decoder_channels": self.cfg.decoder_widths,
                "class_names": self.class_names}

    def write_config(self) -> None:
        save_config(self.cfg, self.run_dir / self.config_name)

    def resumed_message(self) -> str:
        return (f"resumed from {self.resume_path} at iteration {self.step}/"
                f"{self.total_steps} (epoch {self.epoch + 1}, batch {self.batch})")

    def on_fit_start(self) -> None:
        # epochs this run will show: the current one plus what the remaining iterations need
        left = self.total_steps - self.step + self.batch
        self.epochs = self.epoch + max(1, math.ceil(left / self.steps_per_epoch))

    def on_fit_end(self) -> None:
        if self.crf_pool is not None:
            self.crf_pool.close()
            self.crf_pool = None

    def bar_loss(self, loss: torch.Tensor) -> float:
        return float(loss.detach())  # this batch's loss

    def train_step(self, batch: dict[str, Any]) -> tuple[torch.Tensor, int, list[torch.Tensor]]:
        loss, parts = self.loss(batch)
        return loss, len(batch["image"]), [loss, torch.ones_like(loss), *parts]

    def loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The training loss of a batch and its parts (``--mode sec``: seed, expand, constrain)."""
        device = self.device
        images = batch["image"].to(device, non_blocking=True)  # (B, 3, S, S)
        labels = batch["label"].to(device, non_blocking=True)  # (B, S, S) labels or cues
        with self.autocast():
            logits = main_output(self.module(images))  # (B, N, S, S); sec: (B, N, h, w) at stride 8
        logits = logits.float()
        if self.cfg.mode == "sec":
            loss, parts = self._sec_loss(logits, labels, batch["labels"].to(device), images)
        else:
            loss = F.cross_entropy(logits, labels, weight=self.class_weights, ignore_index=IGNORE,
                                   label_smoothing=self.cfg.label_smoothing)
            parts = []
            if not torch.isfinite(loss) and bool((labels == IGNORE).all()):
                loss = logits.sum() * 0.0  # a batch with every pixel ignored: no signal
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss at iteration {self.step + 1}; lower --lr")
        return loss, [p.detach() for p in parts]

    def _sec_loss(self, logits: torch.Tensor, cues: torch.Tensor, image_labels: torch.Tensor,
                  images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        cfg = self.cfg
        size = logits.shape[-2:]
        small = F.interpolate(cues[:, None].float(), size=size, mode="nearest")[:, 0].long()  # (B, h, w)
        seed = seeding_loss(logits, small)
        expand = expansion_loss(logits, image_labels, d_fg=cfg.fg_decay, d_bg=cfg.bg_decay)
        if cfg.constrain_weight > 0:
            if self.crf_pool is None:
                self.crf_pool = CRFPool(cfg.crf_workers)
            constrain = constrain_loss(logits, to_uint8_images(images), pool=self.crf_pool)
        else:
            constrain = logits.new_zeros(())
        return seed + expand + cfg.constrain_weight * constrain, [seed, expand, constrain]

    def epoch_record(self, sums: list[float], elapsed: float) -> dict[str, Any]:
        record: dict[str, Any] = {
            "epoch": self.epoch + 1,
            "step": self.step,
            "train_loss": sums[0] / max(sums[1], 1.0),
            "lr": self.scheduler.get_last_lr()[0],
            "time": elapsed,
            "images_per_s": self.images_per_s(elapsed),
        }
        for i, name in enumerate(self.loss_parts):
            record[f"train_{name}"] = sums[2 + i] / max(sums[1], 1.0)
        if self.dist.is_main and self.val_ds is not None:
            record.update(self.evaluate())
        return record

    def epoch_line(self, record: dict[str, Any]) -> None:
        parts = [f"epoch {record['epoch']}/{self.epochs}", f"iter {record['step']}/{self.total_steps}",
                 f"loss {record['train_loss']:.4f}"]
        for key, label in (("val_miou", "mIoU"), ("val_miou_crf", "mIoU+CRF")):
            if record.get(key) is not None:
                parts.append(f"{label} {100 * record[key]:.2f}")
        parts.append(f"{record['time']:.1f}s {record['images_per_s']:.1f} img/s")
        if record.get("best"):
            parts.append("best")
        self.reporter.info("  ".join(parts))

    @torch.no_grad()
    def evaluate(self, dataset=None) -> dict[str, Any]:
        """``val_miou``, ``val_pixel_accuracy``, ``val_iou`` (per class, background first)
        and, with ``crf_eval``, ``val_miou_crf`` / ``val_iou_crf``."""
        ds = dataset if dataset is not None else self.val_ds
        crf = parse_crf_params(self.cfg.crf_params) if self.cfg.crf_eval else None
        with eval_mode(self.model), self.autocast():
            return evaluate_segmenter(self.model, ds, self.class_names, self.device, crf_params=crf,
                                      crf_workers=self.cfg.crf_workers, spec=self.spec)


@torch.no_grad()
def evaluate_segmenter(model: nn.Module, dataset, class_names: list[str], device: torch.device,
                       crf_params=None, crf_workers: int = 0,
                       spec: SegmenterSpec | None = None) -> dict[str, Any]:
    """mIoU of ``model`` on the images of ``dataset`` that have a mask, each at its own size
    (``spec``: the model's :class:`SegmenterSpec`; default: any full-size-logits model)."""
    spec = spec or SegmenterSpec("")
    plain, refined = ConfusionMatrix(class_names), ConfusionMatrix(class_names)
    values = np.arange(len(class_names), dtype=np.uint8)
    jobs, gts = [], []
    with CRFPool(crf_workers if crf_params is not None else 0) as pool:
        for i, sample in enumerate(dataset.samples):
            if sample.mask_path is None:
                continue
            image, gt = dataset.load_raw(i)
            x = to_input(image, IMAGENET_MEAN, IMAGENET_STD, device)[None]
            logits = spec.logits(model, x)[0].float()  # (N, H, W)
            plain.update(logits.argmax(0).cpu().numpy(), gt)
            if crf_params is not None:
                jobs.append((image, logits.softmax(0).cpu().numpy(), values, crf_params, None))
                gts.append(gt)
        if jobs:
            for label, gt in zip(pool.map(refine_scores, jobs), gts):
                refined.update(label, gt)
    m = plain.metrics()
    out: dict[str, Any] = {"val_miou": m.miou, "val_pixel_accuracy": m.pixel_accuracy,
                           "val_iou": [None if math.isnan(v) else float(v) for v in m.per_class_iou]}
    if crf_params is not None:
        r = refined.metrics()
        out["val_miou_crf"] = r.miou
        out["val_iou_crf"] = [None if math.isnan(v) else float(v) for v in r.per_class_iou]
    return out
