"""The training loop of ``attnguide train``.

One iteration::

    images (B, 3, S, S), labels (B, C) multi-hot or (B,) indices, masks (B, S, S)
    out = guide(images, labels, masks, guidance=epoch >= warmup_epochs)
    out.loss.backward(); clip; optimizer.step(); scheduler.step()

After each epoch: evaluation on the validation split, one line in
``metrics.jsonl``, ``last.pt`` (and ``best.pt`` when the best metric improved),
then the callbacks (``attnguide train``'s attention snapshots). The skeleton
(AMP, clipping, DDP, resume, best.pt, metrics.jsonl) is
:class:`attnguide.engine.loop.Loop`'s; ``last.pt`` is also written every
``checkpoint_every`` iterations; ``--resume`` restores everything (weights,
optimizer, scheduler, scaler, generators, the position in the epoch) and
continues bit-exactly on CPU. A warm-up epoch (classification only) never
outranks a guided one for best.pt.

Evaluation (rank 0):
- ``val_accuracy``: top-1 accuracy (single-label) or exact match at 0.5 (multi-label);
  ``val_map``: mean average precision over classes (multi-label).
- On images with a mask: Grad-CAM of each ground-truth class
  (``guide.attention(resize=True, normalize=True)``, min-max per map to [0, 1]);
  a pixel is background when every class's attention is below the fixed
  ``cam_threshold`` (default 0.15, IRN's CAM evaluation threshold), else the
  class with the highest attention: ``val_cam_miou`` is the mIoU of that
  segmentation over background + classes (255 ignored), accumulated over the
  split; ``val_attention_inside`` the mean share of a map's attention mass that
  falls inside its class's mask; ``val_attention_area`` the mean map value.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from attnguide.constants import IGNORE
from attnguide.core.guidance import guide_kwargs
from attnguide.core.guide import GuidedAttention, extract_logits
from attnguide.core.hooks import eval_mode
from attnguide.core.losses import classification_loss
from attnguide.data import open_dataset
from attnguide.engine import state as ckpt_state
from attnguide.engine.config import TrainConfig, needs_masks, resolve_auto, save_config
from attnguide.engine.loader import EpochBatchSampler, make_loader
from attnguide.engine.loop import Loop, RunResult
from attnguide.engine.metrics import (
    accuracy,
    attention_inside,
    cam_segmentation,
    confusion_matrix,
    iou_from_confusion,
    mean_average_precision,
    mean_iou,
)
from attnguide.engine.optim import build_optimizer, build_scheduler
from attnguide.errors import AttnGuideError
from attnguide.io.checkpoints import CLASSIFIER
from attnguide.models.classifiers import create_model

SUM_KEYS = ("loss", "cls", "am", "ext", "area", "attention_area", "rrr", "images")
"""Running sums of an epoch; terms beyond the built-in ones (ext_all, bg) follow "images"."""
IMAGES = SUM_KEYS.index("images")

TrainResult = RunResult
"""What :func:`attnguide.tasks.training.train` returns (the loop's one result type)."""


def _pixel_labels(value: str | None) -> int | str | None:
    if value is None:
        return None
    text = str(value).strip()
    if text.lower() in ("all", "none", ""):
        return None
    if text.isdigit():
        return int(text)
    return text


def open_splits(cfg: TrainConfig):
    """The training split (augmented, its pixel-label draw) and the validation split (plain,
    the training split's data mode; None without ``val_split``) of a run, as every training
    front end (the engine, Lightning, Accelerate) opens them."""
    train_ds = open_dataset(cfg.data, cfg.train_split, cfg.image_size, train=True,
                            pixel_labels=_pixel_labels(cfg.pixel_labels), seed=cfg.seed,
                            mode=cfg.data_mode)
    val_ds = None
    if cfg.val_split:
        val_ds = open_dataset(cfg.data, cfg.val_split, cfg.image_size, train=False,
                              pixel_labels=None, seed=cfg.seed,
                              mode="multi" if train_ds.multilabel else "single")
        if list(val_ds.class_names) != list(train_ds.class_names):
            raise AttnGuideError(f"splits {cfg.train_split!r} and {cfg.val_split!r} have different classes")
    return train_ds, val_ds


def _mask_words(ds, cfg: TrainConfig) -> str:
    """What the training split offers L_e: "has pixel masks", "has no pixel masks", or
    "has 12 masks of which --pixel-labels 0 selects none"."""
    if ds.pixel_labelled:
        return "has pixel masks"
    with_mask = sum(sample.mask_path is not None for sample in ds.samples)
    if not with_mask:
        return "has no pixel masks"
    return f"has {with_mask} masks of which --pixel-labels {cfg.pixel_labels} selects none"


class Trainer(Loop):
    """Builds everything from a :class:`TrainConfig` and runs :meth:`fit`.

    Attributes useful to callers: ``guide`` (the GuidedAttention, not wrapped),
    ``model`` (the bare model), ``optimizer``, ``scheduler``, ``run_dir``,
    ``val_ds``, ``class_names``, ``multilabel``; ``callbacks``: objects with
    ``on_epoch_end(trainer, record)``, called on the main process after each epoch.
    """

    count_index = IMAGES
    full_epoch_default = False

    def _build(self, cfg: TrainConfig) -> None:
        # ---- data
        self.train_ds, self.val_ds = open_splits(cfg)
        self.class_names = list(self.train_ds.class_names)
        self.multilabel = bool(self.train_ds.multilabel)
        # said when training starts, not before a set-up error
        self.auto_note = resolve_auto(cfg, bool(self.train_ds.pixel_labelled))
        masks = _mask_words(self.train_ds, cfg)
        if self.auto_note:
            self.auto_note += f"; split {cfg.train_split!r} {masks}"
        kind = "multi-label" if self.multilabel else "single-label"
        self.mode_note = f"data: {kind} ({self.train_ds.mode_reason}; see --data-mode)"
        if needs_masks(cfg.guidance) and not self.train_ds.pixel_labelled:
            raise AttnGuideError(
                f"--guidance {cfg.guidance} needs pixel masks, but split {cfg.train_split!r} {masks}; "
                "add masks, raise --pixel-labels or use --guidance self")
        if cfg.labelled_share and not needs_masks(cfg.guidance):
            raise AttnGuideError(f"--labelled-share {cfg.labelled_share} puts pixel-labelled images in every "
                                 f"batch, but --guidance {cfg.guidance} uses no masks; drop it or use ext, swap, ...")
        if cfg.batch_size % self.dist.world_size:
            raise AttnGuideError(
                f"--batch-size {cfg.batch_size} (the global batch) must be divisible by the "
                f"{self.dist.world_size} processes")
        self.local_batch = cfg.batch_size // self.dist.world_size
        per_batch = round(cfg.labelled_share * self.local_batch) if needs_masks(cfg.guidance) else 0
        self.sampler = EpochBatchSampler(len(self.train_ds), self.local_batch, cfg.seed,
                                         self.dist.rank, self.dist.world_size,
                                         labelled=self.train_ds.pixel_labelled, labelled_per_batch=per_batch)
        self.loader = make_loader(self.train_ds, self.sampler, cfg.seed, cfg.workers,
                                  pin_memory=self.device.type == "cuda")
        self.steps_per_epoch = self.sampler.batches_per_epoch()
        self.epochs = cfg.epochs

        # ---- resume: check before building anything expensive
        state = self.read_resume(CLASSIFIER)
        if state is not None:
            path = self.resume_path
            ckpt_state.check_compatible(state, path, model_name=cfg.model, class_names=self.class_names,
                                        multilabel=self.multilabel)
            before = (state.get("config") or {}).get("batch_size")
            if state.get("batch", 0) and before != cfg.batch_size:
                raise AttnGuideError(
                    f"cannot resume {path} in the middle of an epoch with --batch-size "
                    f"{cfg.batch_size}: it was trained with {before}; keep the batch size")
            self.resume_state = state

        # ---- model
        self.model = create_model(cfg.model, len(self.class_names),
                                  weights=None if self.resume_state else cfg.weights,
                                  pretrained=cfg.pretrained and not self.resume_state,
                                  partial_weights=cfg.partial_weights)
        if cfg.sync_bn:
            if not self.dist.enabled:
                self.reporter.warn("--sync-bn has no effect in a single process")
            elif self.device.type != "cuda":
                raise AttnGuideError("--sync-bn needs CUDA; on CPU pick a model without BatchNorm "
                                     "(e.g. a GroupNorm or LayerNorm one) or drop --sync-bn")
            else:
                self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.model.to(self.device)
        self.guide = GuidedAttention(self.model, **guide_kwargs(cfg.to_dict()))
        self.module: nn.Module = self.wrap_ddp(self.guide)
        self.optimizer = build_optimizer(cfg, self.model.parameters())
        self.scheduler = build_scheduler(cfg, self.optimizer, self.steps_per_epoch)
        self.scaler = self.make_scaler()

        # ---- progress state
        self.extra_terms = [name for name in self.guide.terms if name not in SUM_KEYS]
        self.sums = torch.zeros(len(SUM_KEYS) + len(self.extra_terms), dtype=torch.float64,
                                device=self.device)
        self.best_metric = cfg.best_metric
        if self.best_metric == "auto":
            self.best_metric = ("val_map" if self.multilabel else "val_accuracy") if self.val_ds else "train_loss"
        self.tb: TensorBoardLog | None = None

    # ------------------------------------------------------------------ the loop's hooks

    def checkpoint_extras(self) -> dict[str, Any]:
        return {
            "kind": CLASSIFIER,
            "model_name": self.cfg.model,
            "class_names": self.class_names,
            "multilabel": self.multilabel,
            "layer": self.guide.layer_name,
            "image_size": self.cfg.image_size,
        }

    def write_config(self) -> None:
        save_config(self.cfg, self.run_dir / self.config_name)
        self.reporter.info(self.mode_note)
        if self.auto_note:
            self.reporter.info(self.auto_note)

    def on_fit_start(self) -> None:
        cfg = self.cfg
        if cfg.guidance != "none" and cfg.warmup_epochs >= cfg.epochs:
            self.reporter.warn(f"--warmup-epochs {cfg.warmup_epochs} >= --epochs {cfg.epochs}: "
                               "guided attention is never switched on")
        if cfg.tensorboard and self.dist.is_main:
            self.tb = TensorBoardLog(self.run_dir / "tensorboard")
            self.callbacks.insert(0, self.tb)

    def on_step(self) -> None:
        if self.tb is not None:
            self.tb.step(self)

    def on_fit_end(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.callbacks.remove(self.tb)
            self.tb = None

    def _guided(self, epoch: int) -> bool:
        return self.cfg.guidance != "none" and epoch >= self.cfg.warmup_epochs

    def epoch_guided(self) -> bool:
        return self._guided(self.epoch)

    def full_epoch(self, record: dict[str, Any]) -> bool:
        return self.cfg.guidance == "none" or bool(record["guided"])

    def _autocast(self):  # the name evaluate() and older callers know
        return self.autocast()

    def train_step(self, batch: dict[str, Any]) -> tuple[Tensor, int, list[Tensor]]:
        cfg, device = self.cfg, self.device
        guided = self._guided(self.epoch)
        images = batch["image"].to(device, non_blocking=True)  # (B, 3, S, S)
        labels = batch["labels"].to(device, non_blocking=True)  # (B, C) multi-hot
        if not self.multilabel:
            labels = labels.argmax(dim=1)  # (B,)
        masks = None
        if guided and needs_masks(cfg.guidance) and bool(batch["pixel_label"].any()):
            keep = batch["pixel_label"][:, None, None]
            masks = torch.where(keep, batch["mask"], torch.full_like(batch["mask"], IGNORE))  # (B, S, S)
            masks = masks.to(device, non_blocking=True)
        with self.autocast():
            out = self.module(images, labels, masks, guidance=guided)
        area = out.stats.get("attention_area", out.losses["area"]) if out.stats else out.losses["area"]
        zero = out.losses["cls"].detach() * 0
        values = [out.loss, out.losses["cls"], out.losses["am"], out.losses["ext"],
                  out.losses["area"], area, out.losses.get("rrr", zero), zero + 1,
                  *(out.losses.get(name, zero) for name in self.extra_terms)]
        return out.loss, images.shape[0], values

    def epoch_record(self, sums: list[float], elapsed: float) -> dict[str, Any]:
        count = max(sums[IMAGES], 1.0)
        guided = self._guided(self.epoch)
        record: dict[str, Any] = {
            "epoch": self.epoch + 1,
            "step": self.step,
            "guided": guided,
            "train_loss": sums[0] / count,
            "train_loss_cls": sums[1] / count,
            "train_loss_am": sums[2] / count,
            "train_loss_ext": sums[3] / count,
            "train_loss_area": sums[4] / count,
            "train_loss_rrr": sums[6] / count,
            "attention_area": sums[5] / count if guided else None,
            **{f"train_loss_{name}": sums[len(SUM_KEYS) + i] / count
               for i, name in enumerate(self.extra_terms)},
            "lr": self.scheduler.get_last_lr()[0],
            "time": elapsed,
            "images_per_s": self.images_per_s(elapsed),
        }
        if self.dist.is_main and self.val_ds is not None:
            record.update(self.evaluate())
        return record

    # ------------------------------------------------------------------ evaluation

    def evaluate(self, dataset=None, batch_size: int | None = None) -> dict[str, Any]:
        """Metrics of ``dataset`` (default: the validation split); see the module doc."""
        return evaluate(self.guide, dataset if dataset is not None else self.val_ds,
                        multilabel=self.multilabel, device=self.device,
                        batch_size=batch_size or self.cfg.batch_size, workers=self.cfg.workers,
                        cam_threshold=self.cfg.cam_threshold, autocast=self.autocast)


class TensorBoardLog:
    """``--tensorboard``: the running loss and LR per iteration, each epoch's numbers per epoch."""

    def __init__(self, folder: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise AttnGuideError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
        self.writer = SummaryWriter(str(folder))

    def step(self, loop: Trainer) -> None:
        self.writer.add_scalar("train/loss_step", float(loop.sums[0] / loop.sums[IMAGES]), loop.step)
        self.writer.add_scalar("train/lr", loop.scheduler.get_last_lr()[0], loop.step)

    def on_epoch_end(self, loop: Trainer, record: dict[str, Any]) -> None:
        for key, val in record.items():
            if isinstance(val, (int, float)) and not isinstance(val, bool) and key != "epoch":
                self.writer.add_scalar(("val/" if key.startswith("val_") else "train/") + key,
                                       val, record["epoch"])

    def close(self) -> None:
        self.writer.close()


def _gt_classes(labels: Tensor, multilabel: bool) -> tuple[Tensor, Tensor]:
    """(N, C) multi-hot -> classes (N, K) padded with each row's first class, present (N, K)."""
    if not multilabel:
        return labels.argmax(dim=1, keepdim=True), torch.ones(len(labels), 1, dtype=torch.bool)
    pos = labels >= 0.5
    k = max(1, int(pos.sum(1).max()))
    # positives first, in class order; padding repeats the first positive
    order = torch.sort((~pos).int(), dim=1, stable=True).indices[:, :k]  # (N, K)
    present = pos.gather(1, order)
    classes = torch.where(present, order, order[:, :1])
    return classes, present


@torch.no_grad()
def evaluate(guide, dataset, *, multilabel: bool, device: torch.device, batch_size: int = 32,
             workers: int = 0, cam_threshold: float = 0.15, autocast=contextlib.nullcontext) -> dict[str, Any]:
    """Classification and attention metrics of ``guide`` on ``dataset`` (see the module doc).

    Returns a dict with ``val_loss``, ``val_accuracy``, ``val_map`` (multi-label), and on
    images with masks ``val_cam_miou``, ``val_cam_iou`` (per class, background first),
    ``val_attention_inside``, ``val_attention_area``.
    """
    n_classes = dataset.num_classes
    sampler = EpochBatchSampler(len(dataset), batch_size, shuffle=False, drop_last=False)
    loader = make_loader(dataset, sampler, 0, workers)
    logits_all, labels_all = [], []
    conf = torch.zeros(n_classes + 1, n_classes + 1, dtype=torch.int64)
    inside_sum, inside_n, area_sum, area_n = 0.0, 0, 0.0, 0
    loss_sum = 0.0
    with eval_mode(guide.model):
        for batch in loader:
            images = batch["image"].to(device)
            labels = batch["labels"]
            with autocast():
                logits = extract_logits(guide.model(images)).float().cpu()
            targets = labels if multilabel else labels.argmax(dim=1)
            loss_sum += float(classification_loss(logits, targets)) * len(images)
            logits_all.append(logits)
            labels_all.append(labels)
            masks = batch["mask"]
            has_mask = (masks != IGNORE).flatten(1).any(1)
            if not bool(has_mask.any()):
                continue
            idx = has_mask.nonzero().squeeze(1)
            classes, present = _gt_classes(labels[idx], multilabel)
            with torch.enable_grad():
                maps = guide.attention(images[idx.to(device)], classes.to(device), resize=True,
                                       normalize=True).float().cpu()  # (n, K, S, S)
            seg = cam_segmentation(maps, classes, present, cam_threshold)
            conf += confusion_matrix(seg, masks[idx], n_classes + 1)
            s, n = attention_inside(maps, classes, present, masks[idx])
            inside_sum, inside_n = inside_sum + s, inside_n + n
            area_sum += float((maps.mean(dim=(2, 3)) * present).sum())
            area_n += int(present.sum())
    logits = torch.cat(logits_all)
    labels = torch.cat(labels_all)
    out: dict[str, Any] = {
        "val_loss": loss_sum / len(logits),
        "val_accuracy": accuracy(logits, labels, multilabel),
    }
    if multilabel:
        out["val_map"] = mean_average_precision(logits, labels)
    if conf.sum() > 0:
        out["val_cam_miou"] = mean_iou(conf)
        out["val_cam_iou"] = [None if math.isnan(v) else v for v in iou_from_confusion(conf).tolist()]
        out["val_attention_inside"] = inside_sum / inside_n if inside_n else None
        out["val_attention_area"] = area_sum / area_n if area_n else None
    return out
