"""``attnguide segment``: train a segmenter on pseudo labels (or on the ground truth).

One iteration of ``mode="pseudo"`` (the default)::

    images (B, 3, S, S), labels (B, S, S) in 0..C or 255 (ignored)
    loss = cross_entropy(model(images), labels, ignore_index=255)
    loss.backward(); optimizer.step(); scheduler.step()

``mode="sec"`` trains with SEC's losses (seed, expand, constrain;
:mod:`attnguide.wsss.sec`), as GAIN did with its attention as SEC's cues::

    cues (B, S, S): seed_cues of the image's saved CAMs (pseudo-label --save-cams),
        class c where its CAM > fg_fraction x its max, background where every
        CAM < bg_threshold x its max, 255 elsewhere; same geometry as the image
    logits (B, C + 1, h, w) at stride 8 (DeepLab-LargeFOV's fc8; other archs:
        their full-size logits average-pooled by 8), cues resized to (h, w) (nearest)
    loss = seeding_loss(logits, cues)
         + expansion_loss(logits, image labels, fg_decay, bg_decay)      # GWRP
         + constrain_weight * constrain_loss(logits, images)             # dense CRF

Data: each training image and its label map (``labels/<name>.png`` written by
``attnguide pseudo-label``, or the data set's masks with ``labels="gt"``, the
upper bound) get the same random geometry (torchvision.transforms.v2 on an
``Image`` and a ``Mask``): scale by a factor drawn from ``scale_range``
(bilinear / nearest), random ``crop_size`` crop padded with the mean colour
and label 255, horizontal flip.

Optimisation (DeepLab defaults): SGD, momentum 0.9, weight decay 5e-4, base
``lr`` 1e-3 and ``head_lr_mult`` (10) times it for the last classifier layer
(DeepLab-LargeFOV's fc8, an smp model's ``segmentation_head``); per-iteration
``poly`` ``(1 - t/T)^0.9`` or ``step`` (x ``step_gamma`` every ``step_size``
iterations) schedule over ``T`` = ``iterations``, or ``epochs`` x batches per
epoch.

After each epoch (and at the last iteration): mIoU on ``val_split`` at the
images' own size (``val_miou``; ``val_miou_crf`` after DeepLab-v1 dense-CRF
post-processing with ``crf_eval``), one line in ``metrics.jsonl``,
``last.pt`` and, when ``val_miou`` improved, ``best.pt`` (atomic writes).
``last.pt`` is also written every ``checkpoint_every`` iterations; ``resume``
restores weights, optimizer, scheduler, scaler, generators and the position
in the epoch (the engine's resumable loader), so a resumed run sees the same
batches as an uninterrupted one. Under ``torchrun`` the global batch is split
over processes (DistributedDataParallel, the engine's process-group set-up).
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from attnguide.constants import BACKGROUND, IGNORE
from attnguide.engine.segment_config import (  # noqa: F401 - re-exported
    DEEPLAB,
    MODES,
    SEC_PARTS,
    SegmentConfig,
    config_from_options,
)
from attnguide.errors import AttnGuideError
from attnguide.tasks.common import label_path
from attnguide.tasks.predict import (
    SEGMENTER_KIND,
    check_segmenter_checkpoint,
    input_multiple,
    predict_logits,
)
from attnguide.wsss.crf import parse_crf_params

# ---------------------------------------------------------------------- data


class SegmentationSet(Dataset):
    """Images of a split with their label maps, under joint random geometry.

    Items: ``image (3, S, S)`` float32 normalised, ``label (S, S)`` int64 in
    0..C or 255. ``labels_dir`` None uses the data set's own masks.
    """

    def __init__(self, ds, labels_dir: Path | None, crop_size: int, scales: tuple[float, float]) -> None:
        from torchvision import tv_tensors
        from torchvision.transforms import v2

        from attnguide.data import IMAGENET_MEAN, IMAGENET_STD

        self.ds, self.labels_dir, self.scales = ds, labels_dir, scales
        self.num_classes = ds.num_classes
        fill = tuple(round(255 * m) for m in IMAGENET_MEAN)
        self.geometry = v2.Compose([
            v2.RandomCrop(crop_size, pad_if_needed=True, fill={tv_tensors.Image: fill, tv_tensors.Mask: IGNORE}),
            v2.RandomHorizontalFlip(p=0.5),
            v2.ToDtype(torch.float32, scale=True),  # images only; masks keep their dtype
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ])
        self.paths = [self.label_file(i) for i in range(len(ds))]
        self._check_files()

    def _check_files(self) -> None:
        ds, labels_dir = self.ds, self.labels_dir
        if labels_dir is None:
            unlabelled = [s.name for s in ds.samples if s.mask_path is None]
            if unlabelled:
                raise AttnGuideError(
                    f"--labels gt needs a mask for every image of split {ds.split!r}, but "
                    f"{len(unlabelled)} have none (e.g. {', '.join(unlabelled[:5])}); "
                    "train on pseudo labels with --labels DIR")
        else:
            missing = self._missing()
            if missing:
                raise AttnGuideError(
                    f"label folder {str(labels_dir)!r} lacks {len(missing)} of the {len(ds)} label maps "
                    f"of split {ds.split!r}: {_shown(missing)}; run 'attnguide pseudo-label RUN --data "
                    f"{ds.root} --split {ds.split} --out {labels_dir}' (with --resume to complete it)")

    def _missing(self) -> list[str]:
        return [s.name for s, p in zip(self.ds.samples, self.paths) if not p.is_file()]

    def label_file(self, index: int) -> Path:
        sample = self.ds.samples[index]
        if self.labels_dir is None:
            return sample.mask_path
        return label_path(self.labels_dir, sample.name)

    def __len__(self) -> int:
        return len(self.ds)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Image ``uint8 (H, W, 3)`` and label ``uint8 (H, W)`` at the original size."""
        from attnguide.data.io import read_label_map, read_rgb

        sample = self.ds.samples[index]
        image = read_rgb(sample.image_path)
        path = self.paths[index]
        label = read_label_map(path)
        if label.shape != image.shape[:2]:
            raise AttnGuideError(
                f"label map {path} is {label.shape[1]}x{label.shape[0]} but image "
                f"{sample.image_path} is {image.shape[1]}x{image.shape[0]}; label maps must have "
                "their image's size")
        present = np.flatnonzero(np.bincount(label.ravel(), minlength=256))
        bad = [int(v) for v in present if self.num_classes < v < IGNORE]
        if bad:
            raise AttnGuideError(
                f"label map {path} holds values {bad[:10]} but the data set has {self.num_classes} "
                f"classes (valid: 0 background, 1..{self.num_classes}, 255 ignore)")
        return image, label

    def __getitem__(self, index: int) -> dict[str, Any]:
        from torchvision import tv_tensors
        from torchvision.transforms.v2 import functional as TF

        image, label = self.load(index)  # (H, W, 3), (H, W)
        img = tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1))
        mask = tv_tensors.Mask(torch.from_numpy(label))
        low, high = self.scales
        factor = random.uniform(low, high)  # seeded per item by the engine's loader
        if factor != 1.0:
            height, width = image.shape[:2]
            size = [max(1, round(height * factor)), max(1, round(width * factor))]
            img, mask = TF.resize(img, size, antialias=True), TF.resize(mask, size)  # masks: nearest
        img, mask = self.geometry(img, mask)
        return {"image": img.as_subclass(torch.Tensor), "label": mask.as_subclass(torch.Tensor).long(),
                "index": index}


def _shown(names: list[str], limit: int = 10) -> str:
    more = f" (and {len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def cams_folder(labels: str | Path) -> Path:
    """The folder of ``<name>.npz`` CAMs for ``--mode sec``: ``LABELS/cams`` (what
    ``attnguide pseudo-label --save-cams`` writes), or ``LABELS`` itself when it holds them."""
    labels = Path(labels)
    if (labels / "cams").is_dir():
        return labels / "cams"
    if labels.is_dir() and next(labels.rglob("*.npz"), None) is not None:
        return labels
    raise AttnGuideError(
        f"--mode sec reads the CAMs that 'attnguide pseudo-label --save-cams' writes to OUT/cams/, but "
        f"{str(labels)!r} has no cams/ folder and no .npz file; rerun pseudo-label with --save-cams "
        f"--resume --out {labels}, or train on its label PNGs with --mode pseudo")


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
                f"split {ds.split!r}: {_shown(missing)}; run 'attnguide pseudo-label RUN --data {ds.root} "
                f"--split {ds.split} --out {out} --save-cams --resume'")

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Image ``uint8 (H, W, 3)`` and cue map ``uint8 (H, W)`` at the original size."""
        import zipfile

        from attnguide.data.io import read_rgb
        from attnguide.wsss.pseudo import seed_cues

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


class SecLogits(nn.Module):
    """``(B, 3, S, S)`` -> the stride-8 logits ``(B, N, ceil(S/8), ceil(S/8))`` SEC's losses use.

    DeepLab-LargeFOV: fc8 on its stride-8 features (no upsampling). Any other
    segmenter: its full-size logits average-pooled by 8. Holds no weights of
    its own (checkpoints keep the wrapped model's).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from attnguide.models.segmenters import DeepLabLargeFOV

        if isinstance(self.model, DeepLabLargeFOV):
            return self.model.classifier(self.model.forward_features(x))
        out = self.model(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        return F.avg_pool2d(out, 8, ceil_mode=True)


def to_uint8_images(images: torch.Tensor) -> torch.Tensor:
    """Normalised ``(B, 3, S, S)`` -> ``uint8 (B, S, S, 3)`` RGB (the constrain loss's CRF input)."""
    from attnguide.data import IMAGENET_MEAN, IMAGENET_STD

    mean = images.new_tensor(IMAGENET_MEAN)[:, None, None]
    std = images.new_tensor(IMAGENET_STD)[:, None, None]
    rgb = ((images.detach().float() * std + mean) * 255).round().clamp(0, 255)
    return rgb.to(torch.uint8).permute(0, 2, 3, 1).cpu()


# ---------------------------------------------------------------------- results


@dataclass
class SegmentResult:
    """What :func:`segment` returns: the run folder, metrics.jsonl records, best val mIoU."""

    run_dir: Path
    history: list[dict[str, Any]] = field(default_factory=list)
    best_value: float | None = None

    @property
    def last_checkpoint(self) -> Path:
        return self.run_dir / "last.pt"

    @property
    def best_checkpoint(self) -> Path:
        return self.run_dir / "best.pt"


def lr_factor(cfg: SegmentConfig, total: int):
    """The schedule's factor of the base LR at iteration t (see the module doc)."""
    every = cfg.step_size or max(1, total // 4)

    def factor(t: int) -> float:
        if cfg.schedule == "poly":
            return (1 - min(t, total) / total) ** cfg.poly_power
        return cfg.step_gamma ** (t // every)

    return factor


def param_groups(model: nn.Module, lr: float, head_lr_mult: float) -> list[dict[str, Any]]:
    """Base LR for everything, ``head_lr_mult * lr`` for the last classifier layer."""
    from attnguide.models.segmenters import DeepLabLargeFOV

    if isinstance(model, DeepLabLargeFOV):
        return model.param_groups(lr, head_lr_mult)
    head = getattr(model, "segmentation_head", None)
    head_params = list(head.parameters()) if head is not None else []
    ids = {id(p) for p in head_params}
    body = [p for p in model.parameters() if id(p) not in ids]
    groups = [{"params": body, "lr": lr}]
    if head_params:
        groups.append({"params": head_params, "lr": lr * head_lr_mult})
    return groups


# ---------------------------------------------------------------------- trainer


class SegmentTrainer:
    """Builds everything from a :class:`SegmentConfig`; :meth:`fit` trains."""

    def __init__(self, cfg: SegmentConfig, reporter=None) -> None:
        from attnguide.data import open_dataset
        from attnguide.engine.distributed import resolve_device, setup_distributed
        from attnguide.engine.loader import EpochBatchSampler, make_loader
        from attnguide.engine.progress import Reporter
        from attnguide.engine.trainer import autocast_dtype, seed_everything
        from attnguide.io.checkpoints import read_checkpoint, resolve_checkpoint
        from attnguide.models.segmenters import create_segmenter

        self.cfg = cfg.validate()
        self.device = resolve_device(cfg.device)
        self.dist = setup_distributed(self.device)
        self.reporter = reporter or Reporter(quiet=cfg.quiet)
        if not self.dist.is_main:
            self.reporter = Reporter(self.reporter.console, silent=True)
        self.run_dir = Path(cfg.out)
        self.amp_dtype = autocast_dtype(cfg, self.device)  # reads cfg.amp, cfg.amp_dtype
        seed_everything(cfg.seed)

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
        self.resume_state = None
        if cfg.resume:
            self.resume_path = resolve_checkpoint(cfg.resume, prefer="last")
            state = read_checkpoint(self.resume_path)
            check_segmenter_checkpoint(state, self.resume_path)
            self._check_compatible(state)
            self.resume_state = state

        # ---- model
        self.encoder = cfg.encoder or (None if cfg.arch.lower().replace("_", "-") == DEEPLAB else "resnet50")
        self.model = create_segmenter(cfg.arch, self.encoder, len(self.class_names),
                                      None if self.resume_state else cfg.weights)
        multiple = input_multiple(self.model)
        if cfg.crop_size % multiple:
            good = math.ceil(cfg.crop_size / multiple) * multiple
            raise AttnGuideError(
                f"--crop-size {cfg.crop_size} is not a multiple of {multiple}, the output stride of "
                f"{cfg.arch} with encoder {self.encoder}; use --crop-size {good}")
        self.model.to(self.device)
        # what the training step calls: the segmenter, or its stride-8 logits for SEC's losses
        self.module: nn.Module = SecLogits(self.model) if cfg.mode == "sec" else self.model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            self.module = DistributedDataParallel(
                self.module, device_ids=[self.device] if self.device.type == "cuda" else None)
        self.crf_pool = None  # the constrain loss's CRFs (--mode sec), started on first use
        self.optimizer = torch.optim.SGD(param_groups(self.model, cfg.lr, cfg.head_lr_mult), lr=cfg.lr,
                                         momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_factor(cfg, self.total_steps))
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.epoch, self.batch, self.step = 0, 0, 0
        self.sums = torch.zeros(2 + len(self.loss_parts), dtype=torch.float64, device=self.device)
        self.history: list[dict[str, Any]] = []
        self.best_value: float | None = None

    def _check_compatible(self, state: dict[str, Any]) -> None:
        cfg = self.cfg
        where = str(self.resume_path)
        if list(state["class_names"]) != self.class_names:
            raise AttnGuideError(f"cannot resume from {where}: its classes {state['class_names'][1:]} differ "
                                 f"from the data set's {self.class_names[1:]}")
        encoder = cfg.encoder or (None if cfg.arch.lower().replace("_", "-") == DEEPLAB else "resnet50")
        if (state["arch"], state.get("encoder")) != (cfg.arch, encoder):
            raise AttnGuideError(f"cannot resume from {where}: it is --arch {state['arch']} --encoder "
                                 f"{state.get('encoder')}, not {cfg.arch} {encoder}")
        mode = (state.get("config") or {}).get("mode", "pseudo")
        if mode != cfg.mode:
            raise AttnGuideError(f"cannot resume from {where}: it was trained with --mode {mode}, not "
                                 f"--mode {cfg.mode}; start a new run with another --out")
        if state.get("total_steps") != self.total_steps:
            self.reporter.warn(f"resuming with {self.total_steps} total iterations instead of "
                               f"{state.get('total_steps')}: the LR schedule changes")

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        from attnguide.data import IMAGENET_MEAN, IMAGENET_STD
        from attnguide.engine.state import rng_state

        return {
            "kind": SEGMENTER_KIND,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": rng_state(),
            "epoch": self.epoch,
            "batch": self.batch,
            "step": self.step,
            "total_steps": self.total_steps,
            "epoch_sums": self.sums.cpu().tolist(),
            "history": self.history,
            "best": {"metric": "val_miou", "value": self.best_value},
            "arch": self.cfg.arch,
            "encoder": self.encoder,
            "class_names": self.class_names,
            "normalize": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
            "config": {**self.cfg.to_dict(), "resume": None},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from attnguide.engine.state import restore_loop_state

        restore_loop_state(self, state)
        self.best_value = (state.get("best") or {}).get("value")

    def save(self, *names: str) -> None:
        from attnguide.io.checkpoints import save_checkpoint

        if self.dist.is_main:
            save_checkpoint(self.state_dict(), *[self.run_dir / n for n in names])

    # ------------------------------------------------------------------ running

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def fit(self) -> SegmentResult:
        import yaml

        from attnguide.io.atomic import atomic_write

        try:
            if self.dist.is_main:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                text = "# attnguide segment: the resolved options of this run\n" + yaml.safe_dump(
                    {**self.cfg.to_dict(), "resume": None}, sort_keys=False)
                atomic_write(self.run_dir / "segment.yaml", text.encode())
            if self.resume_state is not None:
                self.load_state_dict(self.resume_state)
                self.resume_state = None
                self.reporter.info(f"resumed from {self.resume_path} at iteration {self.step}/"
                                   f"{self.total_steps} (epoch {self.epoch + 1}, batch {self.batch})")
                if self.dist.is_main:
                    self._write_metrics()
            elif self.dist.is_main:
                (self.run_dir / "metrics.jsonl").write_text("")
            # epochs this run will show: the current one plus what the remaining iterations need
            left = self.total_steps - self.step + self.batch
            self.epochs = self.epoch + max(1, math.ceil(left / self.steps_per_epoch))
            while self.step < self.total_steps:
                self._train_epoch()
                record = self._end_epoch()
                self._epoch_line(record)
        finally:
            self.reporter.end_epoch()
            if self.crf_pool is not None:
                self.crf_pool.close()
                self.crf_pool = None
            self.dist.close()
        return SegmentResult(self.run_dir, self.history, self.best_value)

    def _train_epoch(self) -> None:
        cfg, device = self.cfg, self.device
        self.sampler.set_epoch(self.epoch, self.batch)
        if self.batch == 0:
            self.sums.zero_()
        self.model.train()
        todo = min(self.steps_per_epoch, self.batch + self.total_steps - self.step)
        self.reporter.start_epoch(self.epoch, self.epochs, todo, self.batch, True)
        self._start, self._images = time.perf_counter(), 0
        for batch in self.loader:
            loss, parts = self.loss(batch)
            images = batch["image"]
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                loss.backward()
                self.optimizer.step()
            self.scheduler.step()
            self.step += 1
            self.batch += 1
            value = float(loss.detach())
            values = [value, 1.0, *(float(p) for p in parts)]
            self.sums += torch.tensor(values, dtype=torch.float64, device=device) * len(images)
            self._images += len(images)
            ips = self._images * self.dist.world_size / max(time.perf_counter() - self._start, 1e-9)
            self.reporter.update(value, ips)
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.step < self.total_steps:
                self.save("last.pt")
            if self.step >= self.total_steps:
                break
        self.reporter.end_epoch()

    def loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The training loss of a batch and its parts (``--mode sec``: seed, expand, constrain)."""
        device = self.device
        images = batch["image"].to(device, non_blocking=True)  # (B, 3, S, S)
        labels = batch["label"].to(device, non_blocking=True)  # (B, S, S) labels or cues
        with self._autocast():
            logits = self.module(images)  # (B, N, S, S); sec: (B, N, h, w) at stride 8
            if isinstance(logits, (tuple, list)):
                logits = logits[0]
        logits = logits.float()
        if self.cfg.mode == "sec":
            loss, parts = self._sec_loss(logits, labels, batch["labels"].to(device), images)
        else:
            loss, parts = F.cross_entropy(logits, labels, ignore_index=IGNORE), []
            if not torch.isfinite(loss) and bool((labels == IGNORE).all()):
                loss = logits.sum() * 0.0  # a batch with every pixel ignored: no signal
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss at iteration {self.step + 1}; lower --lr")
        return loss, [p.detach() for p in parts]

    def _sec_loss(self, logits: torch.Tensor, cues: torch.Tensor, image_labels: torch.Tensor,
                  images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        from attnguide.wsss.crf import CRFPool
        from attnguide.wsss.sec import constrain_loss, expansion_loss, seeding_loss

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

    def _end_epoch(self) -> dict[str, Any]:
        from attnguide.engine.distributed import all_reduce_sum

        elapsed = time.perf_counter() - self._start
        sums = all_reduce_sum(self.sums.clone(), self.dist).tolist()
        record: dict[str, Any] = {
            "epoch": self.epoch + 1,
            "step": self.step,
            "train_loss": sums[0] / max(sums[1], 1.0),
            "lr": self.scheduler.get_last_lr()[0],
            "time": elapsed,
            "images_per_s": self._images * self.dist.world_size / max(elapsed, 1e-9),
        }
        for i, name in enumerate(self.loss_parts):
            record[f"train_{name}"] = sums[2 + i] / max(sums[1], 1.0)
        if self.dist.is_main and self.val_ds is not None:
            record.update(self.evaluate())
        value = record.get("val_miou")
        improved = (self.dist.is_main and value is not None and not math.isnan(value)
                    and (self.best_value is None or value > self.best_value))
        if improved:
            self.best_value = value
        record["best"] = bool(improved)
        self.history.append(record)
        self.epoch += 1
        self.batch = 0
        self.sums.zero_()
        if self.dist.is_main:
            self._write_metrics()
            self.save("last.pt", *(["best.pt"] if improved else []))
        self.dist.barrier()
        return record

    def _epoch_line(self, record: dict[str, Any]) -> None:
        parts = [f"epoch {record['epoch']}/{self.epochs}", f"iter {record['step']}/{self.total_steps}",
                 f"loss {record['train_loss']:.4f}"]
        for key, label in (("val_miou", "mIoU"), ("val_miou_crf", "mIoU+CRF")):
            if record.get(key) is not None:
                parts.append(f"{label} {100 * record[key]:.2f}")
        parts.append(f"{record['time']:.1f}s {record['images_per_s']:.1f} img/s")
        if record.get("best"):
            parts.append("best")
        self.reporter.info("  ".join(parts))

    def _write_metrics(self) -> None:
        from attnguide.io.atomic import atomic_write

        lines = "".join(json.dumps(r) + "\n" for r in self.history)
        atomic_write(self.run_dir / "metrics.jsonl", lines.encode())

    @torch.no_grad()
    def evaluate(self, dataset=None) -> dict[str, Any]:
        """``val_miou``, ``val_pixel_accuracy``, ``val_iou`` (per class, background first)
        and, with ``crf_eval``, ``val_miou_crf`` / ``val_iou_crf``."""
        from attnguide.core.hooks import eval_mode

        ds = dataset if dataset is not None else self.val_ds
        with eval_mode(self.model), self._autocast():
            return evaluate_segmenter(self.model, ds, self.class_names, self.device,
                                      crf_params=parse_crf_params(self.cfg.crf_params) if self.cfg.crf_eval else None,
                                      crf_workers=self.cfg.crf_workers)


@torch.no_grad()
def evaluate_segmenter(model: nn.Module, dataset, class_names: list[str], device: torch.device,
                       crf_params=None, crf_workers: int = 0) -> dict[str, Any]:
    """mIoU of ``model`` on the images of ``dataset`` that have a mask, each at its own size."""
    from attnguide.data import IMAGENET_MEAN, IMAGENET_STD
    from attnguide.tasks.common import to_input
    from attnguide.wsss.crf import CRFPool
    from attnguide.wsss.crf_jobs import refine_scores
    from attnguide.wsss.evaluate import ConfusionMatrix

    plain, refined = ConfusionMatrix(class_names), ConfusionMatrix(class_names)
    multiple = input_multiple(model)
    values = np.arange(len(class_names), dtype=np.uint8)
    jobs, gts = [], []
    with CRFPool(crf_workers if crf_params is not None else 0) as pool:
        for i, sample in enumerate(dataset.samples):
            if sample.mask_path is None:
                continue
            image, gt = dataset.load_raw(i)
            x = to_input(image, IMAGENET_MEAN, IMAGENET_STD, device)[None]
            logits = predict_logits(model, x, multiple)[0].float()  # (N, H, W)
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


def segment(cfg: SegmentConfig, reporter=None) -> SegmentResult:
    """Train a segmenter as ``cfg`` says; see :class:`SegmentConfig`.

    Example:
        >>> res = segment(SegmentConfig(data="data/scenes", labels="pseudo/ext", arch="unet",  # doctest: +SKIP
        ...                             encoder="resnet18", crop_size=96, epochs=20, out="runs/seg"))
        >>> res.history[-1]["val_miou"]
    """
    return SegmentTrainer(cfg, reporter).fit()
