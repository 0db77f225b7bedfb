"""What the Lightning module and the Accelerate loop share with ``attnguide train``.

:func:`build` makes, from a :class:`~attnguide.engine.config.TrainConfig` and in the
engine's order (seed, data sets, ``--guidance auto``, model, ``GuidedAttention``), the
same pieces :class:`attnguide.engine.trainer.Trainer` builds, so a run in another
framework starts from the same weights, sees the same batches in the same order with
the same augmentation, and follows the same learning-rate schedule:

    pieces = build(cfg)                               # seeds, data, model, guide
    loader, sampler = pieces.train_loader(rank, world_size)
    optimizer, scheduler = pieces.optimizers(len(sampler))
    for epoch ...: sampler.set_epoch(epoch)
        images, labels, masks, guided = pieces.inputs(batch, epoch, device)
        out = guide(images, labels, masks, guidance=guided)

:class:`ValidationMetrics` computes the engine's validation numbers (``val_loss``,
``val_accuracy``, ``val_map``, ``val_cam_miou``, ``val_attention_inside``,
``val_attention_area``, plus ``val_pointing_game``) with the :mod:`attnguide.metrics`
classes, and works under ``torch.inference_mode()`` (Lightning's validation default).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from attnguide.constants import IGNORE
from attnguide.core.guidance import guide_kwargs, uses_annotations
from attnguide.core.guide import GuidedAttention, extract_logits
from attnguide.core.hooks import eval_mode
from attnguide.core.losses import classification_loss
from attnguide.engine.config import TrainConfig, needs_masks
from attnguide.engine.loader import EpochBatchSampler, batch_targets, make_loader
from attnguide.engine.metrics import accuracy, mean_average_precision
from attnguide.engine.optim import build_optimizer, build_scheduler
from attnguide.engine.state import seed_everything
from attnguide.engine.trainer import open_splits, resolve_annotations
from attnguide.errors import AttnGuideError
from attnguide.metrics import AttentionArea, AttentionInside, CamMIoU, PointingGame, gt_classes
from attnguide.models.classifiers import create_model


def as_config(cfg: TrainConfig | dict[str, Any] | None = None, **options: Any) -> TrainConfig:
    """A validated TrainConfig from a TrainConfig, a dict of options, and/or keywords."""
    if isinstance(cfg, TrainConfig):
        base = cfg.to_dict()
    elif cfg is None:
        base = {}
    elif isinstance(cfg, dict):
        base = dict(cfg)
    else:
        raise AttnGuideError(f"cfg must be a TrainConfig or a dict of its options, got {type(cfg).__name__}")
    unknown = sorted(set({**base, **options}) - set(TrainConfig.__dataclass_fields__))
    if unknown:
        raise AttnGuideError(f"unknown option(s) {unknown}: see attnguide.engine.TrainConfig "
                             "(the options of `attnguide train`)")
    return TrainConfig(**{**base, **options}).validate()


@dataclass
class GuidedPieces:
    """The engine's pieces of one run (see the module doc). ``model`` is the bare model,
    ``guide`` the :class:`GuidedAttention` around it (never wrapped)."""

    cfg: TrainConfig
    train_ds: Any
    val_ds: Any
    class_names: list[str]
    multilabel: bool
    model: nn.Module
    guide: GuidedAttention

    def train_loader(self, rank: int = 0, world_size: int = 1,
                     pin_memory: bool = False) -> tuple[torch.utils.data.DataLoader, EpochBatchSampler]:
        """The loader of ``attnguide train`` for one process: ``cfg.batch_size`` is the global
        batch, each of the ``world_size`` processes takes its share of every batch."""
        cfg = self.cfg
        if cfg.batch_size % world_size:
            raise AttnGuideError(f"batch_size {cfg.batch_size} (the global batch) must be divisible by "
                                 f"the {world_size} processes")
        local = cfg.batch_size // world_size
        per_batch = round(cfg.labelled_share * local) if uses_annotations(cfg.guidance) else 0
        sampler = EpochBatchSampler(len(self.train_ds), local, cfg.seed, rank, world_size,
                                    labelled=self.train_ds.pixel_labelled, labelled_per_batch=per_batch)
        return make_loader(self.train_ds, sampler, cfg.seed, cfg.workers, pin_memory=pin_memory), sampler

    def val_loader(self, batch_size: int | None = None) -> torch.utils.data.DataLoader | None:
        """The whole validation split in order (every process evaluates all of it)."""
        if self.val_ds is None:
            return None
        sampler = EpochBatchSampler(len(self.val_ds), batch_size or self.cfg.batch_size,
                                    shuffle=False, drop_last=False)
        return make_loader(self.val_ds, sampler, 0, self.cfg.workers)

    def optimizers(self, steps_per_epoch: int):
        """(optimizer, per-iteration LambdaLR scheduler) of the options."""
        optimizer = build_optimizer(self.cfg, self.model.parameters())
        return optimizer, build_scheduler(self.cfg, optimizer, steps_per_epoch)

    def guided(self, epoch: int) -> bool:
        """Whether ``epoch`` (0-based) trains with guidance (after the warm-up epochs)."""
        return self.cfg.guidance != "none" and epoch >= self.cfg.warmup_epochs

    def inputs(self, batch: dict[str, Any], epoch: int,
               device: torch.device | str) -> tuple[Tensor, Tensor, Tensor | None, bool]:
        """(images (B, 3, S, S), labels (B, C) multi-hot or (B,) indices, masks (B, S, S) with
        255 where an image may not supervise attention or None, guided) of a batch."""
        guided = self.guided(epoch)
        images = batch["image"].to(device, non_blocking=True)
        labels = batch["labels"].to(device, non_blocking=True)
        if not self.multilabel:
            labels = labels.argmax(dim=1)
        masks = batch_targets(batch, self.cfg.guidance, guided, device)  # or an Annotations
        return images, labels, masks, guided


def build(cfg: TrainConfig | dict[str, Any] | None = None, classifier: nn.Module | None = None,
          **options: Any) -> GuidedPieces:
    """The pieces of ``attnguide train`` for ``cfg`` (plus keyword options), built in the
    engine's order so that weights and data equal the engine's for the same seed.

    ``classifier``: your own model instead of ``create_model(cfg.model)`` (the seed is
    set before the data sets are opened either way; ``model=`` is the architecture name
    option of ``attnguide train``).
    """
    cfg = as_config(cfg, **options)
    if cfg.resume:
        raise AttnGuideError("resume is the engine's (attnguide train --resume); in Lightning pass "
                             "ckpt_path= to Trainer.fit, with Accelerate use accelerator.load_state")
    seed_everything(cfg.seed)
    train_ds, val_ds = open_splits(cfg)
    class_names = list(train_ds.class_names)
    multilabel = bool(train_ds.multilabel)
    resolve_annotations(cfg, train_ds)
    if needs_masks(cfg.guidance) and not any(train_ds.samples[i].mask_path is not None
                                             for i in train_ds.mask_labelled):
        raise AttnGuideError(f"guidance {cfg.guidance} needs pixel masks, but no image of split "
                             f"{cfg.train_split!r} has one selected (see pixel_labels); use guidance='self'")
    model = classifier
    if model is None:
        model = create_model(cfg.model, len(class_names), weights=cfg.weights, pretrained=cfg.pretrained,
                             partial_weights=cfg.partial_weights)
    guide = GuidedAttention(model, **guide_kwargs(cfg.to_dict()))
    return GuidedPieces(cfg, train_ds, val_ds, class_names, multilabel, model, guide)


class _Classification(Metric):
    """Validation loss, accuracy and mAP over the whole split (logits kept for the mAP)."""

    full_state_update = False

    def __init__(self, multilabel: bool, **kwargs) -> None:
        super().__init__(**kwargs)
        self.multilabel = multilabel
        self.add_state("logits", default=[], dist_reduce_fx="cat")
        self.add_state("labels", default=[], dist_reduce_fx="cat")

    def update(self, logits: Tensor, labels: Tensor) -> None:
        self.logits.append(logits.detach().float())
        self.labels.append(labels.detach().float())

    def compute(self) -> dict[str, float]:
        def cat(x):
            return torch.cat(x) if isinstance(x, list) else x

        logits, labels = cat(self.logits).cpu(), cat(self.labels).cpu()
        targets = labels if self.multilabel else labels.argmax(dim=1)
        out = {"val_loss": float(classification_loss(logits, targets)),
               "val_accuracy": accuracy(logits, labels, self.multilabel)}
        if self.multilabel:
            out["val_map"] = mean_average_precision(logits, labels)
        return out


class ValidationMetrics(nn.Module):
    """The engine's validation numbers (see the module doc), accumulated batch by batch.

    ``update(guide, batch)`` runs the classifier on ``batch["image"]`` and, for the images
    with a mask, Grad-CAM of each ground-truth class; it works under
    ``torch.inference_mode()`` and ``torch.no_grad()`` (it leaves both for the attention
    of a cloned batch). ``compute()`` -> dict; ``reset()``.

    Args:
        num_classes: classes without background. multilabel: the data set's mode.
        cam_threshold: the background score of ``val_cam_miou``.
        sync: sync the states across processes on compute (off when every process
            evaluates the whole split).
    """

    def __init__(self, num_classes: int, multilabel: bool, cam_threshold: float = 0.15,
                 sync: bool = True) -> None:
        super().__init__()
        kw = {"sync_on_compute": sync}
        self.multilabel = multilabel
        self.classification = _Classification(multilabel, **kw)
        self.cam_miou = CamMIoU(num_classes, cam_threshold, **kw)
        self.inside = AttentionInside(**kw)
        self.area = AttentionArea(**kw)
        self.pointing = PointingGame(**kw)

    def update(self, guide: GuidedAttention, batch: dict[str, Any], autocast=None) -> None:
        device = next(guide.model.parameters()).device
        with torch.inference_mode(False):
            images = batch["image"].to(device).clone()  # a normal tensor, usable by autograd
            labels = batch["labels"].cpu().clone()
            masks = batch["mask"].cpu().clone()
        with eval_mode(guide.model), torch.no_grad():
            if autocast is not None:
                with autocast():
                    logits = extract_logits(guide.model(images))
            else:
                logits = extract_logits(guide.model(images))
        self.classification.update(logits.float().cpu(), labels)
        has_mask = (masks != IGNORE).flatten(1).any(1)
        if not bool(has_mask.any()):
            return
        idx = has_mask.nonzero().squeeze(1)
        classes, present = gt_classes(labels[idx], self.multilabel)
        with torch.inference_mode(False), torch.enable_grad(), eval_mode(guide.model):
            maps = guide.attention(images[idx.to(device)], classes.to(device), resize=True,
                                   normalize=True).detach().float().cpu()  # (n, K, S, S)
        for metric in (self.cam_miou, self.inside, self.pointing):
            metric.update(maps, classes, masks[idx], present)
        self.area.update(maps, classes, None, present)

    def compute(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.classification.compute())
        if int(self.cam_miou.confmat.sum()) > 0:
            out["val_cam_miou"] = float(self.cam_miou.compute())
            out["val_cam_iou"] = [None if math.isnan(v) else v for v in self.cam_miou.iou().tolist()]
            for key, metric in (("val_attention_inside", self.inside), ("val_attention_area", self.area),
                                ("val_pointing_game", self.pointing)):
                value = float(metric.compute())
                out[key] = None if math.isnan(value) else value
        return out

    def reset(self) -> None:
        for metric in (self.classification, self.cam_miou, self.inside, self.area, self.pointing):
            metric.reset()
