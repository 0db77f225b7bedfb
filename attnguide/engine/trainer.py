"""The training loop of ``attnguide train``.

One iteration::

    images (B, 3, S, S), labels (B, C) multi-hot or (B,) indices, masks (B, S, S)
    out = guide(images, labels, masks, guidance=epoch >= warmup_epochs)
    out.loss.backward(); clip; optimizer.step(); scheduler.step()

After each epoch: evaluation on the validation split, one line in
``metrics.jsonl``, ``last.pt`` (and ``best.pt`` when the best metric improved).
``last.pt`` is also written every ``checkpoint_every`` iterations; ``--resume``
restores everything (weights, optimizer, scheduler, scaler, generators, the
position in the epoch) and continues bit-exactly on CPU.

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
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from attnguide.constants import IGNORE
from attnguide.core.guidance import guide_kwargs
from attnguide.engine import state as ckpt_state
from attnguide.engine.config import TrainConfig, needs_masks, resolve_auto, save_config
from attnguide.engine.distributed import DistInfo, all_reduce_sum, resolve_device, setup_distributed
from attnguide.engine.loader import EpochBatchSampler, make_loader
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
from attnguide.engine.progress import Reporter
from attnguide.errors import AttnGuideError
from attnguide.io.atomic import atomic_write
from attnguide.io.checkpoints import read_checkpoint, resolve_checkpoint, save_checkpoint
from attnguide.models.classifiers import create_model

SUM_KEYS = ("loss", "cls", "am", "ext", "area", "attention_area", "rrr", "images")
"""Running sums of an epoch; terms beyond the built-in ones (ext_all, bg) follow "images"."""
IMAGES = SUM_KEYS.index("images")


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        run_dir: the run folder. history: the metrics.jsonl records.
        best_metric / best_value: the metric that picked best.pt and its value.
    """

    run_dir: Path
    history: list[dict[str, Any]] = field(default_factory=list)
    best_metric: str = ""
    best_value: float | None = None

    @property
    def last_checkpoint(self) -> Path:
        return self.run_dir / "last.pt"

    @property
    def best_checkpoint(self) -> Path:
        return self.run_dir / "best.pt"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _pixel_labels(value: str | None) -> int | str | None:
    if value is None:
        return None
    text = str(value).strip()
    if text.lower() in ("all", "none", ""):
        return None
    if text.isdigit():
        return int(text)
    return text


def autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None without ``--amp``."""
    if not cfg.amp:
        return None
    if cfg.amp_dtype == "fp16" or (cfg.amp_dtype == "auto" and device.type == "cuda"):
        if device.type != "cuda":
            raise AttnGuideError("--amp-dtype fp16 needs CUDA; on CPU use --amp-dtype bf16")
        return torch.float16
    return torch.bfloat16


def _better(metric: str, new: float, old: float | None) -> bool:
    if new is None or (isinstance(new, float) and math.isnan(new)):
        return False
    if old is None or (isinstance(old, float) and math.isnan(old)):
        return True
    return new < old if "loss" in metric else new > old


class Trainer:
    """Builds everything from a :class:`TrainConfig` and runs :meth:`fit`.

    Attributes useful to callers: ``guide`` (the GuidedAttention, not wrapped),
    ``model`` (the bare model), ``optimizer``, ``scheduler``, ``run_dir``.
    """

    def __init__(self, cfg: TrainConfig, reporter: Reporter | None = None) -> None:
        self.cfg = cfg.validate()
        self.device = resolve_device(cfg.device)
        self.dist: DistInfo = setup_distributed(self.device)
        try:
            self._build(cfg, reporter)
        except BaseException:
            self.dist.close()
            raise

    def _build(self, cfg: TrainConfig, reporter: Reporter | None) -> None:
        from attnguide.core.guide import GuidedAttention
        from attnguide.data import open_dataset

        self.reporter = reporter or Reporter(quiet=cfg.quiet)
        if not self.dist.is_main:
            self.reporter = Reporter(self.reporter.console, silent=True)
        self.run_dir = Path(cfg.out)
        self.amp_dtype = autocast_dtype(cfg, self.device)

        seed_everything(cfg.seed)
        # ---- data
        self.train_ds = open_dataset(cfg.data, cfg.train_split, cfg.image_size, train=True,
                                     pixel_labels=_pixel_labels(cfg.pixel_labels), seed=cfg.seed,
                                     mode=cfg.data_mode)
        self.class_names = list(self.train_ds.class_names)
        self.multilabel = bool(self.train_ds.multilabel)
        self.val_ds = None
        if cfg.val_split:
            self.val_ds = open_dataset(cfg.data, cfg.val_split, cfg.image_size, train=False,
                                       pixel_labels=None, seed=cfg.seed,
                                       mode="multi" if self.multilabel else "single")
            if list(self.val_ds.class_names) != self.class_names:
                raise AttnGuideError(f"splits {cfg.train_split!r} and {cfg.val_split!r} have different classes")
        # said when training starts, not before a set-up error
        self.auto_note = resolve_auto(cfg, bool(self.train_ds.pixel_labelled))
        if self.auto_note:
            self.auto_note += (f"; split {cfg.train_split!r} "
                               f"{'has' if self.train_ds.pixel_labelled else 'has no'} pixel masks")
        if needs_masks(cfg.guidance) and not self.train_ds.pixel_labelled:
            raise AttnGuideError(
                f"--guidance {cfg.guidance} needs pixel masks, but no image of split {cfg.train_split!r} has one "
                "selected (see --pixel-labels); add masks or use --guidance self")
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

        # ---- resume: check before building anything expensive
        self.resume_state: dict[str, Any] | None = None
        if not cfg.resume and not cfg.overwrite and (self.run_dir / "last.pt").exists():
            raise AttnGuideError(
                f"{self.run_dir} already holds a run (last.pt): continue it with --resume "
                f"{self.run_dir}, pick another --out, or pass --overwrite")
        if cfg.resume:
            path = resolve_checkpoint(cfg.resume, prefer="last")
            state = read_checkpoint(path)
            ckpt_state.check_compatible(state, path, model_name=cfg.model, class_names=self.class_names,
                                     multilabel=self.multilabel)
            before = (state.get("config") or {}).get("batch_size")
            if state.get("batch", 0) and before != cfg.batch_size:
                raise AttnGuideError(
                    f"cannot resume {path} in the middle of an epoch with --batch-size "
                    f"{cfg.batch_size}: it was trained with {before}; keep the batch size")
            self.resume_state, self.resume_path = state, path

        # ---- model
        self.model = create_model(cfg.model, len(self.class_names),
                                  weights=None if self.resume_state else cfg.weights,
                                  pretrained=cfg.pretrained and not self.resume_state)
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
        self.module: nn.Module = self.guide
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            self.module = DistributedDataParallel(
                self.guide, device_ids=[self.device] if self.device.type == "cuda" else None)
        self.optimizer = build_optimizer(cfg, self.model.parameters())
        self.scheduler = build_scheduler(cfg, self.optimizer, self.steps_per_epoch)
        self.scaler = (torch.amp.GradScaler("cuda")
                       if self.amp_dtype == torch.float16 else None)

        # ---- progress state
        self.epoch, self.batch, self.step = 0, 0, 0
        self.extra_terms = [name for name in self.guide.terms if name not in SUM_KEYS]
        self.sums = torch.zeros(len(SUM_KEYS) + len(self.extra_terms), dtype=torch.float64,
                                device=self.device)
        self.history: list[dict[str, Any]] = []
        self.best_metric = cfg.best_metric
        if self.best_metric == "auto":
            self.best_metric = ("val_map" if self.multilabel else "val_accuracy") if self.val_ds else "train_loss"
        self.best_value: float | None = None
        self.best_guided = False  # whether best.pt comes from a guided epoch
        self.tb = None

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        from attnguide.data import IMAGENET_MEAN, IMAGENET_STD

        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": ckpt_state.rng_state(),
            "epoch": self.epoch,
            "batch": self.batch,
            "step": self.step,
            "epoch_sums": self.sums.cpu().tolist(),
            "history": self.history,
            "best": {"metric": self.best_metric, "value": self.best_value,
                     "guided": self.best_guided},
            "model_name": self.cfg.model,
            "class_names": self.class_names,
            "multilabel": self.multilabel,
            "layer": self.guide.layer_name,
            "image_size": self.cfg.image_size,
            "normalize": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
            "config": {**self.cfg.to_dict(), "resume": None},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        ckpt_state.restore_loop_state(self, state)
        best = state.get("best") or {}
        if best.get("metric") == self.best_metric:
            self.best_value = best.get("value")
            self.best_guided = bool(best.get("guided", False))

    def save(self, *names: str) -> None:
        if self.dist.is_main:
            save_checkpoint(self.state_dict(), *[self.run_dir / n for n in names])

    # ------------------------------------------------------------------ running

    def fit(self) -> TrainResult:
        cfg = self.cfg
        try:
            if self.dist.is_main:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                save_config(cfg, self.run_dir / "config.yaml")
                if self.auto_note:
                    self.reporter.info(self.auto_note)
            if self.resume_state is not None:
                self.load_state_dict(self.resume_state)
                self.resume_state = None
                self.reporter.info(f"resumed from {self.resume_path} at epoch {self.epoch + 1}, "
                                   f"batch {self.batch}/{self.steps_per_epoch}, step {self.step}")
                if self.dist.is_main:  # metrics of the epochs the checkpoint has seen
                    self._write_metrics()
            elif self.dist.is_main:
                (self.run_dir / "metrics.jsonl").write_text("")
            if cfg.guidance != "none" and cfg.warmup_epochs >= cfg.epochs:
                self.reporter.warn(f"--warmup-epochs {cfg.warmup_epochs} >= --epochs {cfg.epochs}: "
                                   "guided attention is never switched on")
            if cfg.tensorboard and self.dist.is_main:
                self.tb = _tensorboard(self.run_dir / "tensorboard")
            while self.epoch < cfg.epochs:
                self._train_epoch()
                record = self._end_epoch()
                self.reporter.epoch_line(record, cfg.epochs)
        finally:
            if self.tb is not None:
                self.tb.close()
            self.reporter.end_epoch()
            self.dist.close()
        return TrainResult(self.run_dir, self.history, self.best_metric, self.best_value)

    def _guided(self, epoch: int) -> bool:
        return self.cfg.guidance != "none" and epoch >= self.cfg.warmup_epochs

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _train_epoch(self) -> None:
        cfg, device = self.cfg, self.device
        guided = self._guided(self.epoch)
        self.sampler.set_epoch(self.epoch, self.batch)
        if self.batch == 0:
            self.sums.zero_()
        self.model.train()
        self.reporter.start_epoch(self.epoch, cfg.epochs, self.steps_per_epoch, self.batch, guided)
        self._epoch_start = time.perf_counter()
        self._epoch_images = 0
        for batch in self.loader:
            images = batch["image"].to(device, non_blocking=True)
            labels = batch["labels"].to(device, non_blocking=True)
            if not self.multilabel:
                labels = labels.argmax(dim=1)
            masks = None
            if guided and needs_masks(cfg.guidance) and bool(batch["pixel_label"].any()):
                keep = batch["pixel_label"][:, None, None]
                masks = torch.where(keep, batch["mask"], torch.full_like(batch["mask"], IGNORE))
                masks = masks.to(device, non_blocking=True)
            with self._autocast():
                out = self.module(images, labels, masks, guidance=guided)
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler.scale(out.loss).backward()
                if cfg.clip_grad:
                    self.scaler.unscale_(self.optimizer)
                    nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_grad)
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                out.loss.backward()
                if cfg.clip_grad:
                    nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_grad)
                self.optimizer.step()
            self.scheduler.step()
            self.step += 1
            self.batch += 1
            n = images.shape[0]
            self._epoch_images += n
            area = out.stats.get("attention_area", out.losses["area"]) if out.stats else out.losses["area"]
            with torch.no_grad():
                zero = out.losses["cls"].detach() * 0
                values = [out.loss, out.losses["cls"], out.losses["am"], out.losses["ext"],
                          out.losses["area"], area, out.losses.get("rrr", zero), zero + 1,
                          *(out.losses.get(name, zero) for name in self.extra_terms)]
                self.sums += torch.stack([v.detach().double() for v in values]) * n
            del out
            elapsed = time.perf_counter() - self._epoch_start
            ips = self._epoch_images * self.dist.world_size / max(elapsed, 1e-9)
            if self.reporter.bar:
                self.reporter.update(float(self.sums[0] / self.sums[IMAGES]), ips)
            if self.tb is not None:
                self.tb.add_scalar("train/loss_step", float(self.sums[0] / self.sums[IMAGES]), self.step)
                self.tb.add_scalar("train/lr", self.scheduler.get_last_lr()[0], self.step)
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                self.save("last.pt")
        self.reporter.end_epoch()

    def _end_epoch(self) -> dict[str, Any]:
        elapsed = time.perf_counter() - self._epoch_start
        sums = all_reduce_sum(self.sums.clone(), self.dist).tolist()
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
            "images_per_s": self._epoch_images * self.dist.world_size / max(elapsed, 1e-9),
        }
        if self.dist.is_main and self.val_ds is not None:
            record.update(self.evaluate())
            if self.cfg.snapshots:  # RUN/snapshots/epoch_XXX.png, see attnguide.viz.pictures
                from attnguide.viz.pictures import training_snapshot

                training_snapshot(self, record)
        value = record.get(self.best_metric)
        # best.pt: a guided epoch outranks every warm-up epoch, whatever their metrics
        guided = self.cfg.guidance == "none" or bool(record["guided"])
        if guided and not self.best_guided:
            self.best_value = None
        improved = (self.dist.is_main and (guided or not self.best_guided)
                    and _better(self.best_metric, value, self.best_value))
        if improved:
            self.best_value, self.best_guided = value, guided
        record["best"] = bool(improved)
        self.history.append(record)
        self.epoch += 1
        self.batch = 0
        self.sums.zero_()
        if self.dist.is_main:
            self._write_metrics()
            self.save("last.pt", *(["best.pt"] if improved else []))
            if self.tb is not None:
                for key, val in record.items():
                    if isinstance(val, (int, float)) and not isinstance(val, bool) and key != "epoch":
                        self.tb.add_scalar(("val/" if key.startswith("val_") else "train/") + key,
                                           val, record["epoch"])
        self.dist.barrier()
        return record

    def _write_metrics(self) -> None:
        lines = "".join(json.dumps(r, allow_nan=True) + "\n" for r in self.history)
        atomic_write(self.run_dir / "metrics.jsonl", lines.encode())

    # ------------------------------------------------------------------ evaluation

    def evaluate(self, dataset=None, batch_size: int | None = None) -> dict[str, Any]:
        """Metrics of ``dataset`` (default: the validation split); see the module doc."""
        return evaluate(self.guide, dataset if dataset is not None else self.val_ds,
                        multilabel=self.multilabel, device=self.device,
                        batch_size=batch_size or self.cfg.batch_size, workers=self.cfg.workers,
                        cam_threshold=self.cfg.cam_threshold, autocast=self._autocast)


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
    from attnguide.core.guide import extract_logits
    from attnguide.core.hooks import eval_mode
    from attnguide.core.losses import classification_loss

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


def _tensorboard(folder: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise AttnGuideError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
    return SummaryWriter(str(folder))


def train(cfg: TrainConfig, reporter: Reporter | None = None) -> TrainResult:
    """Train a guided classifier as ``cfg`` says; see :class:`TrainConfig`.

    Example:
        >>> from attnguide.engine import TrainConfig, train
        >>> result = train(TrainConfig(data="data/scenes", model="resnet18", guidance="ext",
        ...                            epochs=5, out="runs/scenes"))
        >>> result.history[-1]["val_cam_miou"]
    """
    return Trainer(cfg, reporter).fit()
