"""PyTorch Lightning: :class:`GuidedModule`, ``attnguide train`` as a ``LightningModule``.

Needs ``pip install 'attnguide[lightning]'``. The module takes the options of
``attnguide train`` (a :class:`~attnguide.engine.config.TrainConfig`, a dict, or
keywords) and builds what the engine builds, in the engine's order
(:func:`attnguide.integrations.common.build`): the same initial weights, batches,
augmentation, optimizer and per-iteration schedule, so the weights after N steps equal
``attnguide train``'s (bit for bit in one CPU process, fp32 or ``bf16-mixed``; under DDP
to float rounding of the gradient all-reduce).

Example::

    import lightning as L
    from attnguide.integrations.lightning import GuidedModule

    module = GuidedModule(data="data/scenes", model="resnet18", guidance="ext", epochs=5)
    trainer = L.Trainer(max_epochs=module.cfg.epochs, precision="bf16-mixed",
                        use_distributed_sampler=False)      # the module shards its own batches
    trainer.fit(module)
    module.guide.attention(images, classes)                   # the trained GuidedAttention

Training step: ``guide(images, labels, masks, guidance=epoch >= warmup_epochs)``, logged
as ``train_loss``, ``train_loss_cls``, ``train_loss_am``, ... (the names of metrics.jsonl).
Validation: the engine's numbers (``val_loss``, ``val_accuracy``, ``val_map``,
``val_cam_miou``, ``val_attention_inside``, ``val_attention_area``,
``val_pointing_game``), computed by :class:`~attnguide.integrations.common.ValidationMetrics`
with the :mod:`attnguide.metrics` classes; with ``snapshots`` N > 0 also the attention of N
validation images after each epoch (``LOG_DIR/snapshots/epoch_XXX.png``, sent to the
logger as an image too). Lightning runs validation under
``torch.inference_mode()`` by default (``Trainer(inference_mode=True)``); the metrics
leave it for the attention maps of a cloned batch, so either setting works.

DDP: ``strategy="ddp"`` wraps the whole module (the bare model is never wrapped before
``GuidedAttention`` sees it). ``batch_size`` is the global batch; each process takes
its share of every batch, which is why the Trainer needs ``use_distributed_sampler=False``
(the module refuses to start otherwise). Every process evaluates the whole validation
split (rank 0's numbers are the engine's).

Use your own model with ``GuidedModule(cfg, classifier=my_timm_model)``; use
``GuidedModule.guide`` (a :class:`~attnguide.core.guide.GuidedAttention`) for maps.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from attnguide.engine.config import TrainConfig
from attnguide.errors import AttnGuideError
from attnguide.integrations.common import GuidedPieces, ValidationMetrics, build
from attnguide.viz.snapshots import AttentionSnapshots

try:
    import lightning as L
    from lightning.pytorch.utilities import rank_zero_warn
except ImportError as error:  # pragma: no cover - the message is the point
    raise AttnGuideError("attnguide.integrations.lightning needs PyTorch Lightning: "
                         "pip install 'attnguide[lightning]' (or pip install lightning)") from error



class _EpochOrder(torch.utils.data.Sampler):
    """The engine's batch sampler, told the epoch when an epoch's iteration starts
    (Lightning calls ``set_epoch`` only on a plain sampler, not on a batch sampler)."""

    def __init__(self, sampler, module: GuidedModule) -> None:
        self.sampler, self.module = sampler, module

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        self.sampler.set_epoch(self.module.current_epoch)
        yield from self.sampler


class GuidedModule(L.LightningModule):
    """``attnguide train`` as a LightningModule (see the module doc).

    Args:
        cfg: a TrainConfig or a dict of its options (``attnguide train``'s), optional.
        classifier: your model instead of ``create_model(cfg.model)`` (``model=`` is the
            option of ``attnguide train``: a timm architecture name).
        **options: more options, overriding ``cfg``'s (``data=...``, ``epochs=...``).

    ``autocast_cache`` (default True): see :meth:`_weight_cast_cache`.

    Attributes: ``cfg`` (the resolved options), ``guide`` (the GuidedAttention, the only
    registered submodule: the state dict holds each weight once, the bare model's keys
    under ``guide.``),
    ``pieces`` (data sets, class names, the builders), ``class_names``, ``multilabel``.
    """

    autocast_cache = True

    def __init__(self, cfg: TrainConfig | dict[str, Any] | None = None,
                 classifier: nn.Module | None = None, **options: Any) -> None:
        super().__init__()
        pieces: GuidedPieces = build(cfg, classifier, **options)
        self.pieces = pieces
        self.cfg = pieces.cfg
        self.class_names, self.multilabel = pieces.class_names, pieces.multilabel
        self.guide = pieces.guide
        self.val_metrics = ValidationMetrics(len(self.class_names), self.multilabel,
                                             self.cfg.cam_threshold, sync=False)
        self.save_hyperparameters({"cfg": {**self.cfg.to_dict(), "resume": None}})
        self._sampler = None
        self._snapshots = AttentionSnapshots(self.cfg.snapshots)

    @property
    def model(self) -> nn.Module:
        """The bare classifier (``guide.model``)."""
        return self.guide.model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Plain logits (B, C)."""
        return self.guide(images)

    # ------------------------------------------------------------------ set-up

    def setup(self, stage: str) -> None:
        trainer = self.trainer
        connector = getattr(trainer, "_accelerator_connector", None)
        if trainer.world_size > 1 and getattr(connector, "use_distributed_sampler", False):
            raise AttnGuideError("GuidedModule shards its own batches (batch_size is the global batch): "
                                 "pass use_distributed_sampler=False to lightning.Trainer")
        if stage == "fit" and self.cfg.steps is not None and trainer.max_steps != self.cfg.steps:
            raise AttnGuideError(f"the options say steps={self.cfg.steps} (the LR schedule's length) but "
                                 f"Trainer(max_steps={trainer.max_steps}): pass max_steps=module.cfg.steps")
        if stage == "fit" and self.cfg.steps is None and trainer.max_epochs not in (None, -1, self.cfg.epochs):
            raise AttnGuideError(f"Trainer(max_epochs={trainer.max_epochs}) but the options say epochs="
                                 f"{self.cfg.epochs} (the LR schedule's length): pass max_epochs="
                                 "module.cfg.epochs, or build the module with epochs=...")

    def train_dataloader(self):
        loader, sampler = self.pieces.train_loader(self.trainer.global_rank, self.trainer.world_size,
                                                   pin_memory=self.device.type == "cuda")
        self._sampler = sampler
        return torch.utils.data.DataLoader(
            loader.dataset, batch_sampler=_EpochOrder(sampler, self), num_workers=loader.num_workers,
            collate_fn=loader.collate_fn, pin_memory=loader.pin_memory, generator=loader.generator,
            persistent_workers=loader.persistent_workers)

    def val_dataloader(self):
        return self.pieces.val_loader() or []

    def configure_optimizers(self):
        steps = len(self._sampler) if self._sampler is not None else \
            self.pieces.train_loader(self.trainer.global_rank, self.trainer.world_size)[1].batches_per_epoch()
        optimizer, scheduler = self.pieces.optimizers(steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        if self.cfg.clip_grad:
            self.clip_gradients(optimizer, gradient_clip_val=self.cfg.clip_grad, gradient_clip_algorithm="norm")
        else:
            super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    # ------------------------------------------------------------------ steps

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        images, labels, masks, guided = self.pieces.inputs(batch, self.current_epoch, self.device)
        with self._weight_cast_cache():
            out = self.guide(images, labels, masks, guidance=guided)
        n = images.shape[0]
        values = {"train_loss": out.loss.detach(),
                  **{f"train_loss_{k}": v.detach() for k, v in out.losses.items()}}
        if guided and out.stats and "attention_area" in out.stats:
            values["attention_area"] = out.stats["attention_area"].detach()
        self.log_dict({k: v.float() for k, v in values.items()}, on_step=False, on_epoch=True,
                      batch_size=n, sync_dist=True)
        self.log("train_loss_step", out.loss.detach().float(), on_step=True, on_epoch=False,
                 prog_bar=True, batch_size=n)
        return out.loss

    def _weight_cast_cache(self):
        """Under Lightning's autocast (``*-mixed`` precision), the autocast of ``attnguide train``:
        Lightning's has ``cache_enabled=False``, so each use of a weight in the step (the
        classification pass, the CAM gradient, the erased-image pass) would be cast to bf16
        anew and its gradient contributions summed in another order; the engine casts each
        weight once per step (torch's default). Off: ``autocast_cache = False``."""
        kind = self.device.type
        if not self.autocast_cache or not torch.is_autocast_enabled(kind):
            return contextlib.nullcontext()
        return torch.autocast(kind, dtype=torch.get_autocast_dtype(kind), cache_enabled=True)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.val_metrics.update(self.guide, batch)

    def on_validation_epoch_end(self) -> None:
        values = self.val_metrics.compute()
        self.val_metrics.reset()
        self.last_validation = values
        self.log_dict({k: float(v) for k, v in values.items() if isinstance(v, (int, float))},
                      sync_dist=False)
        if not self.trainer.sanity_checking and self.trainer.state.fn == "fit":
            with torch.inference_mode(False), torch.enable_grad():  # Grad-CAM needs autograd
                self.snapshot(values)

    def snapshot(self, values: dict[str, Any]) -> Path | None:
        """``cfg.snapshots`` validation images' attention after the epoch, as ``attnguide
        train`` draws them: ``LOG_DIR/snapshots/epoch_XXX.png`` (the logger's folder, else
        the Trainer's ``default_root_dir``), also sent to the logger (TensorBoard's
        ``add_image``, or a logger's ``log_image``). Main process only; needs matplotlib
        (without it one warning, and training goes on)."""
        trainer = self.trainer
        if not self.cfg.snapshots or self.pieces.val_ds is None or not trainer.is_global_zero:
            return None
        view = _SnapshotView(self, Path(trainer.log_dir or trainer.default_root_dir))
        record = {**values, "epoch": self.current_epoch + 1, "guided": self.pieces.guided(self.current_epoch)}
        path = self._snapshots.on_epoch_end(view, record)
        if path is None or trainer.logger is None:
            return path
        import numpy as np
        from PIL import Image

        picture = np.asarray(Image.open(path).convert("RGB"))  # (H, W, 3) uint8
        experiment = getattr(trainer.logger, "experiment", None)
        if hasattr(experiment, "add_image"):
            experiment.add_image("attention", picture, global_step=trainer.global_step, dataformats="HWC")
        elif hasattr(trainer.logger, "log_image"):
            trainer.logger.log_image(key="attention", images=[picture], step=trainer.global_step)
        return path


class _SnapshotView:
    """What :class:`attnguide.viz.snapshots.AttentionSnapshots` reads of a trainer."""

    def __init__(self, module: GuidedModule, run_dir: Path) -> None:
        self.cfg, self.guide, self.device = module.cfg, module.guide, module.device
        self.val_ds, self.class_names, self.multilabel = (module.pieces.val_ds, module.class_names,
                                                          module.multilabel)
        self.run_dir, self.reporter = run_dir, _Warnings()


class _Warnings:
    def warn(self, text: str) -> None:
        rank_zero_warn(text)
