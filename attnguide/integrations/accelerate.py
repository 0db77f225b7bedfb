"""Hugging Face Accelerate: :func:`fit`, the loop of ``attnguide train`` on an ``Accelerator``.

Needs ``pip install 'attnguide[accelerate]'``. The pieces are the engine's
(:func:`attnguide.integrations.common.build`: same initial weights, batches, augmentation,
optimizer and schedule), so after the same steps the weights equal ``attnguide train``'s
(bit for bit in one CPU process, fp32 or bf16; under several processes to float rounding
of the gradient all-reduce). ``accelerator.prepare`` wraps the ``GuidedAttention`` (DDP in
several processes, autocast for ``mixed_precision``), never the bare model.

One process::

    from attnguide.integrations.accelerate import fit
    result = fit(data="data/scenes", model="resnet18", guidance="ext", epochs=5)
    result.guide.attention(images, classes)     # the trained GuidedAttention, unwrapped

Several (a script that calls :func:`fit`)::

    torchrun --standalone --nproc_per_node 2 train.py          # CPU (gloo)
    accelerate launch --multi_gpu --num_processes 4 train.py   # GPUs

``batch_size`` is the global batch: each process takes its share of every batch (the
loader is not passed through ``accelerator.prepare``, which would shard it once more);
the validation numbers (``val_*``, those of the engine) are computed on the main process.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from attnguide.engine.config import TrainConfig
from attnguide.errors import AttnGuideError
from attnguide.integrations.common import GuidedPieces, ValidationMetrics, build

try:
    from accelerate import Accelerator
except ImportError as error:  # pragma: no cover - the message is the point
    raise AttnGuideError("attnguide.integrations.accelerate needs Hugging Face Accelerate: "
                         "pip install 'attnguide[accelerate]' (or pip install accelerate)") from error


@dataclass
class AccelerateResult:
    """What :func:`fit` returns: ``pieces`` (``guide``, ``model``, data sets, options), the
    ``accelerator``, ``history`` (one record an epoch: ``epoch``, ``step``, ``guided``,
    ``train_loss``, ``lr``, and on the main process the engine's ``val_*`` numbers)."""

    pieces: GuidedPieces
    accelerator: Any
    history: list[dict[str, Any]] = field(default_factory=list)
    step: int = 0

    @property
    def guide(self):
        return self.pieces.guide

    @property
    def model(self) -> nn.Module:
        return self.pieces.model


def default_accelerator(cfg: TrainConfig) -> Accelerator:
    """``Accelerator(cpu=device == "cpu", mixed_precision=bf16/fp16 with amp, else no)``."""
    precision = "no"
    if cfg.amp:
        precision = "fp16" if cfg.amp_dtype == "fp16" or (
            cfg.amp_dtype == "auto" and cfg.device != "cpu" and torch.cuda.is_available()) else "bf16"
    return Accelerator(cpu=cfg.device == "cpu", mixed_precision=precision)


def fit(cfg: TrainConfig | dict[str, Any] | None = None, *, accelerator: Accelerator | None = None,
        classifier: nn.Module | None = None, **options: Any) -> AccelerateResult:
    """Train like ``attnguide train`` (options: a TrainConfig, a dict and/or keywords) on
    ``accelerator`` (default :func:`default_accelerator`); ``classifier``: your model instead
    of ``create_model(cfg.model)``. See the module doc."""
    pieces = build(cfg, classifier, **options)
    cfg = pieces.cfg
    acc = accelerator or default_accelerator(cfg)
    loader, sampler = pieces.train_loader(acc.process_index, acc.num_processes,
                                          pin_memory=acc.device.type == "cuda")
    pieces.model.to(acc.device)
    optimizer, scheduler = pieces.optimizers(len(sampler))
    guide, optimizer = acc.prepare(pieces.guide, optimizer)  # the scheduler steps once a step
    result = AccelerateResult(pieces, acc)
    metrics = ValidationMetrics(len(pieces.class_names), pieces.multilabel, cfg.cam_threshold, sync=False)
    epochs = cfg.epochs if cfg.steps is None else math.ceil(cfg.steps / len(loader))
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        pieces.model.train()
        total = torch.zeros(2, dtype=torch.float64, device=acc.device)  # loss sum, images
        for batch in loader:
            images, labels, masks, guided = pieces.inputs(batch, epoch, acc.device)
            out = guide(images, labels, masks, guidance=guided)
            optimizer.zero_grad(set_to_none=True)
            acc.backward(out.loss)
            if cfg.clip_grad:
                acc.clip_grad_norm_(pieces.model.parameters(), cfg.clip_grad)
            optimizer.step()
            scheduler.step()
            result.step += 1
            total += torch.stack([out.loss.detach().double() * len(images),
                                  torch.tensor(float(len(images)), dtype=torch.float64, device=acc.device)])
            if cfg.steps is not None and result.step >= cfg.steps:
                break
        total = acc.reduce(total, reduction="sum")
        record: dict[str, Any] = {"epoch": epoch + 1, "step": result.step, "guided": pieces.guided(epoch),
                                  "train_loss": float(total[0] / total[1].clamp_min(1)),
                                  "lr": scheduler.get_last_lr()[0]}
        if acc.is_main_process and pieces.val_ds is not None:
            for batch in pieces.val_loader():
                metrics.update(pieces.guide, batch, autocast=acc.autocast)
            record.update(metrics.compute())
            metrics.reset()
        result.history.append(record)
        acc.wait_for_everyone()
    return result
