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
  ``val_map``: mean average precision over classes (multi-label);
  ``val_decision_threshold`` (multi-label): the probability threshold that maximises exact
  match on this split (:func:`attnguide.engine.metrics.choose_threshold`); the checkpoint's
  last one is what ``attnguide evaluate --run`` applies to the test split.
- On images with a mask: Grad-CAM of each ground-truth class
  (``guide.attention(resize=True, normalize=True)``, min-max per map to [0, 1]);
  a pixel is background when every class's attention is below the fixed
  ``cam_threshold`` (default 0.15, IRN's CAM evaluation threshold), else the
  class with the highest attention: ``val_cam_miou`` is the mIoU of that
  segmentation over background + classes (255 ignored), accumulated over the
  split; ``val_attention_inside`` the mean share of a map's attention mass that
  falls inside its class's mask; ``val_attention_area`` the mean map value.
- When the split has (class, bias attribute) groups (``groups.csv``, or the scenes'
  background / cue column: :mod:`attnguide.data.groups`): ``val_worst_group_accuracy``
  and ``val_mean_group_accuracy`` over the non-empty groups (multi-label: per
  (image, class) pair, right when the class's sigmoid is >= 0.5, or ``threshold``).
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
from torch import Tensor, nn

from attnguide.constants import IGNORE
from attnguide.core.guidance import (
    MASK_PARTS,
    PART_KINDS,
    check_annotation_kinds,
    guidance_kinds,
    guidance_parts,
    guide_kwargs,
    parse_annotation_kinds,
    uses_annotations,
)
from attnguide.core.guide import GuidedAttention, extract_logits
from attnguide.core.hooks import eval_mode
from attnguide.core.losses import classification_loss
from attnguide.data import open_dataset
from attnguide.data.groups import Groups, dataset_groups
from attnguide.engine import state as ckpt_state
from attnguide.engine.config import TrainConfig, needs_masks, resolve_auto, save_config
from attnguide.engine.loader import EpochBatchSampler, batch_targets, make_loader
from attnguide.engine.loggers import RunLogger, TensorBoardLogger, open_loggers
from attnguide.engine.loop import Loop, RunResult
from attnguide.engine.metrics import (
    AttentionArea,
    AttentionInside,
    CamMIoU,
    WorstGroupAccuracy,
    accuracy,
    choose_threshold,
    gt_classes,
    mean_average_precision,
    pair_predictions,
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


def _annotated(value: str | None) -> int | str | None:
    """``--annotated``: None -> "same" (the --pixel-labels draw), else like --pixel-labels."""
    return "same" if value is None or str(value).strip().lower() == "same" else _pixel_labels(value)


def open_splits(cfg: TrainConfig):
    """The training split (augmented, its pixel-label draw) and the validation split (plain,
    the training split's data mode; None without ``val_split``) of a run, as every training
    front end (the engine, Lightning, Accelerate) opens them."""
    train_ds = open_dataset(cfg.data, cfg.train_split, cfg.image_size, train=True,
                            pixel_labels=_pixel_labels(cfg.pixel_labels), seed=cfg.seed,
                            mode=cfg.data_mode, annotations=cfg.annotations,
                            annotated=_annotated(cfg.annotated))
    val_ds = None
    if cfg.val_split:
        val_ds = open_dataset(cfg.data, cfg.val_split, cfg.image_size, train=False,
                              pixel_labels=None, seed=cfg.seed,
                              mode="multi" if train_ds.multilabel else "single")
        if list(val_ds.class_names) != list(train_ds.class_names):
            raise AttnGuideError(f"splits {cfg.train_split!r} and {cfg.val_split!r} have different classes")
    return train_ds, val_ds


def resolve_annotations(cfg: TrainConfig, train_ds) -> str | None:
    """Settle what supervises attention once the training split is open, as every front end
    (the engine, Lightning, Accelerate) does: ``--guidance auto`` from the split's masks and
    the other kinds that ``--annotations`` names (`resolve_auto`; ``--annotations auto`` leaves
    auto on masks alone), ``--annotations`` checked against the guidance,
    the split narrowed to the kinds the guidance uses (masks are always kept) and its
    labelled images drawn among them. Returns the ``--guidance auto`` line (or None).

    Raises when the guidance needs a kind that no selected image has."""
    kinds = train_ds.annotation_kinds & train_ds.available_kinds()
    has_masks = "mask" in kinds and any(train_ds.samples[i].mask_path is not None
                                        for i in train_ds.mask_labelled)
    asked = parse_annotation_kinds(cfg.annotations)
    # --guidance auto adds box / click / avoid terms only for kinds that --annotations names
    # (with --annotations auto it stays the measured mask defaults)
    note = resolve_auto(cfg, has_masks, kinds & asked if asked is not None else ())
    if asked is not None:
        check_annotation_kinds(cfg.guidance, asked - {"mask"})
    train_ds.use_annotations((guidance_kinds(cfg.guidance) & kinds) | ({"mask"} & kinds))
    for part in sorted(guidance_parts(cfg.guidance) - {"self"} - MASK_PARTS):
        want = set(PART_KINDS[part])
        if not any(train_ds.samples[i].kinds & want for i in train_ds.box_labelled):
            said = ", ".join(sorted(want))
            raise AttnGuideError(
                f"--guidance {cfg.guidance} uses {said} ({part}), but no selected image of split "
                f"{cfg.train_split!r} has them; add a {said} column to the CSV (VOC boxes: "
                f"--annotations boxes), check --annotations and --pixel-labels, or drop {part}")
    return note


def _mask_words(ds, cfg: TrainConfig) -> str:
    """What the training split offers L_e: "has pixel masks", "has no pixel masks", or
    "has 12 masks of which --pixel-labels 0 selects none"."""
    if any(ds.samples[i].kinds & ds.annotation_kinds & {"mask", "scribble"} for i in ds.mask_labelled):
        return "has pixel masks"  # or scribbles, sparse masks
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
        self.auto_note = resolve_annotations(cfg, self.train_ds)
        masks = _mask_words(self.train_ds, cfg)
        if self.auto_note:
            self.auto_note += f"; split {cfg.train_split!r} {masks}"
        kind = "multi-label" if self.multilabel else "single-label"
        self.mode_note = f"data: {kind} ({self.train_ds.mode_reason}; see --data-mode)"
        if needs_masks(cfg.guidance) and masks != "has pixel masks":
            raise AttnGuideError(
                f"--guidance {cfg.guidance} needs pixel masks, but split {cfg.train_split!r} {masks}; "
                "add masks, raise --pixel-labels or use --guidance self")
        if cfg.labelled_share and not uses_annotations(cfg.guidance):
            raise AttnGuideError(f"--labelled-share {cfg.labelled_share} puts pixel-labelled images in every "
                                 f"batch, but --guidance {cfg.guidance} uses no masks; drop it or use ext, swap, ...")
        if cfg.batch_size % self.dist.world_size:
            raise AttnGuideError(
                f"--batch-size {cfg.batch_size} (the global batch) must be divisible by the "
                f"{self.dist.world_size} processes")
        self.local_batch = cfg.batch_size // self.dist.world_size
        per_batch = round(cfg.labelled_share * self.local_batch) if uses_annotations(cfg.guidance) else 0
        self.sampler = EpochBatchSampler(len(self.train_ds), self.local_batch, cfg.seed,
                                         self.dist.rank, self.dist.world_size,
                                         labelled=self.train_ds.pixel_labelled, labelled_per_batch=per_batch)
        self.loader = make_loader(self.train_ds, self.sampler, cfg.seed, cfg.workers,
                                  pin_memory=self.device.type == "cuda")
        self.steps_per_epoch = self.sampler.batches_per_epoch()
        self.epochs = cfg.epochs
        if cfg.steps is not None:  # a step budget: the last epoch may end early
            self.total_steps = cfg.steps
            self.epochs = math.ceil(cfg.steps / self.steps_per_epoch)

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
        self.tb: RunLogger | None = None  # the --logger back ends (main process)

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
        if cfg.guidance != "none" and cfg.warmup_epochs >= self.epochs:
            self.reporter.warn(f"--warmup-epochs {cfg.warmup_epochs} >= the run's {self.epochs} epochs: "
                               "guided attention is never switched on")
        if self.dist.is_main:  # --logger / --tensorboard (engine/loggers.py); None for none
            self.tb = open_loggers(cfg.logger, self.run_dir, cfg.to_dict(), tensorboard=cfg.tensorboard,
                                   project=cfg.wandb_project, resume=bool(cfg.resume))
            if self.tb is not None:
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
        # (B, S, S) masks, an Annotations of every kind, or None: one path for all of them
        masks = batch_targets(batch, cfg.guidance, guided, device)
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
                        cam_threshold=self.cfg.cam_threshold, autocast=self.autocast,
                        report_threshold=True)


class TensorBoardLog(TensorBoardLogger):
    """``--tensorboard`` (``--logger tensorboard``): :class:`attnguide.engine.loggers.TensorBoardLogger`
    under the name earlier versions had; the metric names are those of ``metrics.jsonl``."""


@torch.no_grad()
def evaluate(guide, dataset, *, multilabel: bool, device: torch.device, batch_size: int = 32,
             workers: int = 0, cam_threshold: float = 0.15, autocast=contextlib.nullcontext,
             groups: Groups | str | None = "auto", group_table: bool = False,
             threshold: float = 0.5, report_threshold: bool = False) -> dict[str, Any]:
    """Classification and attention metrics of ``guide`` on ``dataset`` (see the module doc).

    Args:
        threshold: multi-label decision threshold (a probability) of ``val_accuracy`` and the
            group metrics.
        report_threshold: multi-label, also return ``val_decision_threshold``, the threshold
            this split would choose (the training loop's validation; a test split's own
            choice is no score).
        groups: the (class, bias) groups of ``dataset``: ``"auto"`` reads them
            (:func:`attnguide.data.groups.dataset_groups`: ``groups.csv``, or the scenes'
            background / cue column), None skips the group metrics.
        group_table: also return ``val_group_accuracy``, {class: {bias: accuracy or None}}.

    Returns a dict with ``val_loss``, ``val_accuracy``, ``val_map`` (multi-label) and
    ``val_decision_threshold`` (multi-label, ``report_threshold``); on images
    with masks ``val_cam_miou``, ``val_cam_iou`` (per class, background first),
    ``val_attention_inside``, ``val_attention_area``; with groups
    ``val_worst_group_accuracy``, ``val_mean_group_accuracy`` and ``val_groups`` (how many
    non-empty groups). Every metric is an :mod:`attnguide.metrics` class.
    """
    n_classes = dataset.num_classes
    sampler = EpochBatchSampler(len(dataset), batch_size, shuffle=False, drop_last=False)
    loader = make_loader(dataset, sampler, 0, workers)
    logits_all, labels_all, index_all = [], [], []
    cam, inside, area = CamMIoU(n_classes, cam_threshold), AttentionInside(), AttentionArea()
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
            index_all.append(torch.as_tensor(batch["index"]))
            masks = batch["mask"]
            has_mask = (masks != IGNORE).flatten(1).any(1)
            if not bool(has_mask.any()):
                continue
            idx = has_mask.nonzero().squeeze(1)
            classes, present = gt_classes(labels[idx], multilabel)
            with torch.enable_grad():
                maps = guide.attention(images[idx.to(device)], classes.to(device), resize=True,
                                       normalize=True).float().cpu()  # (n, K, S, S)
            cam.update(maps, classes, masks[idx], present)
            inside.update(maps, classes, masks[idx], present)
            area.update(maps, classes, None, present)
    logits = torch.cat(logits_all)  # (N, C) in dataset order
    labels = torch.cat(labels_all)
    out: dict[str, Any] = {
        "val_loss": loss_sum / len(logits),
        "val_accuracy": accuracy(logits, labels, multilabel, threshold),
    }
    if multilabel:
        out["val_map"] = mean_average_precision(logits, labels)
        if report_threshold:
            out["val_decision_threshold"] = choose_threshold(logits, labels)
    if int(cam.confmat.sum()) > 0:
        out["val_cam_miou"] = float(cam.compute())
        out["val_cam_iou"] = [None if math.isnan(v) else v for v in cam.iou().tolist()]
        out["val_attention_inside"] = float(inside.compute()) if int(inside.count) else None
        out["val_attention_area"] = float(area.compute()) if int(area.count) else None
    if isinstance(groups, str):
        groups = dataset_groups(dataset) if groups == "auto" and hasattr(dataset, "samples") else None
    if groups is not None and len(groups):
        order = torch.cat(index_all)
        scores = torch.empty_like(logits)
        scores[order] = logits
        out.update(group_metrics(scores, groups, n_classes, multilabel,
                                 dataset.class_names if group_table else None, threshold))
    return out


def group_metrics(scores: Tensor, groups: Groups, num_classes: int, multilabel: bool,
                  class_names: list[str] | None = None, threshold: float = 0.5) -> dict[str, Any]:
    """Worst-group and mean per-group accuracy of (N, C) scores over ``groups``' pairs
    (:class:`attnguide.metrics.WorstGroupAccuracy`; multi-label at ``threshold``); with
    ``class_names`` also the table."""
    metric = WorstGroupAccuracy(num_classes, len(groups.bias_names))
    metric.update(pair_predictions(scores, groups.index, groups.classes, multilabel, threshold),
                  groups.classes, groups.bias)
    out: dict[str, Any] = {
        "val_worst_group_accuracy": float(metric.compute()),
        "val_mean_group_accuracy": float(metric.mean_group()),
        "val_groups": metric.groups_counted(),
    }
    if class_names is not None:
        table = metric.group_accuracies().tolist()
        out["val_group_accuracy"] = {
            name: {bias: None if math.isnan(v) else v for bias, v in zip(groups.bias_names, row, strict=True)}
            for name, row in zip(class_names, table, strict=True)}
    return out
