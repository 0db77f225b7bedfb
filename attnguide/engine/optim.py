"""Optimizers and per-iteration learning-rate schedules.

The schedule is a factor of the peak ``lr`` as a function of the iteration
``t`` (0-based) out of ``T = steps`` when the run sets ``steps``, else
``epochs * steps_per_epoch``:

- ``cosine``: ``min + (1 - min) * (1 + cos(pi t / T)) / 2``
- ``poly``: ``min + (1 - min) * (1 - t / T) ** poly_power`` (DeepLab)
- ``step``: ``step_gamma ** (t // (step_epochs * steps_per_epoch))``
- ``constant``: 1

with ``min = min_lr / lr``, times a linear warm-up ``(t + 1) / lr_warmup_steps``
over the first ``lr_warmup_steps`` iterations.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from attnguide.engine.config import TrainConfig


def build_optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    """SGD (with ``momentum``) or AdamW; ``weight_decay`` on every parameter."""
    params = [p for p in params if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def total_steps(cfg: TrainConfig, steps_per_epoch: int) -> int:
    """Optimizer steps of the whole run: ``cfg.steps``, else ``epochs`` whole epochs."""
    return cfg.steps if cfg.steps is not None else cfg.epochs * steps_per_epoch


def lr_factor(cfg: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """The schedule's factor of ``cfg.lr`` at iteration t (see the module doc)."""
    total = max(1, total_steps(cfg, steps_per_epoch))
    floor = min(1.0, cfg.min_lr / cfg.lr)
    step_every = max(1, (cfg.step_epochs or max(1, cfg.epochs // 3)) * steps_per_epoch)
    warm = cfg.lr_warmup_steps

    def factor(t: int) -> float:
        progress = min(1.0, t / total)
        if cfg.schedule == "cosine":
            f = floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
        elif cfg.schedule == "poly":
            f = floor + (1 - floor) * (1 - progress) ** cfg.poly_power
        elif cfg.schedule == "step":
            f = cfg.step_gamma ** (t // step_every)
        else:
            f = 1.0
        if warm and t < warm:
            f *= (t + 1) / warm
        return f

    return factor


def build_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR stepped once per iteration."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg, steps_per_epoch))


def convert_sync_bn(model: nn.Module) -> nn.Module:
    """``model`` with every BatchNorm replaced by SyncBatchNorm (DDP on CUDA)."""
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)
