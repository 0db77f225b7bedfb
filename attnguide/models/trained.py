"""Trained runs: a checkpoint of ``attnguide train`` back as a model ready for inference.

:func:`load_model` reads a run folder (its ``best.pt``, else ``last.pt``) or a
checkpoint file, rebuilds the timm classifier it names and returns a
:class:`TrainedModel`: the model in eval mode with its class names, attention
layer, image size, normalisation and training config, so that
:meth:`TrainedModel.guide` gives the same :class:`~attnguide.core.guide.GuidedAttention`
the run trained with.

Example:
    >>> trained = load_model("runs/scenes")          # best.pt, else last.pt (or a model folder)
    >>> guide = trained.guide()                      # GuidedAttention with the trained settings
    >>> maps = guide.attention(images, resize=True, normalize=True)   # (B, 1, H, W)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from attnguide.constants import IMAGENET_MEAN, IMAGENET_STD
from attnguide.core.guidance import guide_kwargs
from attnguide.core.guide import GuidedAttention
from attnguide.io.checkpoints import CLASSIFIER, read_checkpoint, resolve_checkpoint
from attnguide.models.classifiers import check_model_name
from attnguide.models.export import checkpoint_threshold, is_model_folder, read_model_folder

__all__ = ["TrainedModel", "load_model"]


@dataclass
class TrainedModel:
    """A model trained by ``attnguide train``, in eval mode.

    Attributes:
        model: the timm classifier (eval mode, on ``device``).
        class_names: one name per output.
        multilabel: sigmoid outputs (True) or softmax (False).
        layer: the attention layer used in training (``GuidedAttention.layer_name``).
        image_size: the training image size.
        config: the run's resolved training config (a dict).
        checkpoint: the file read.
        mean, std: input normalisation used in training.
        decision_threshold: multi-label only, the probability threshold that maximised exact
            match on the run's validation split at its last epoch (None without one).
    """

    model: nn.Module
    class_names: list[str]
    multilabel: bool
    layer: str | None
    image_size: int
    config: dict[str, Any]
    checkpoint: str = ""
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    decision_threshold: float | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def guide(self, **overrides: Any) -> GuidedAttention:
        """A GuidedAttention around ``model`` with the trained settings
        (layer, cam, mask, alpha, omega, ...); keyword arguments override them."""
        kwargs = guide_kwargs(self.config, layer=self.layer)
        kwargs.update(overrides)
        return GuidedAttention(self.model, **kwargs)

    @torch.no_grad()
    def predict(self, images: Tensor) -> Tensor:
        """Class probabilities (B, C) of normalised images (B, 3, H, W):
        sigmoid for multi-label models, softmax otherwise."""
        device = next(self.model.parameters()).device
        logits = self.model(images.to(device)).float()
        return logits.sigmoid() if self.multilabel else logits.softmax(dim=1)


def load_model(run_dir_or_checkpoint: str | os.PathLike, device: str | torch.device = "cpu",
               prefer: str = "best") -> TrainedModel:
    """Load a model trained by ``attnguide train`` for inference.

    Args:
        run_dir_or_checkpoint: a run folder (its ``best.pt``, else ``last.pt``),
            a checkpoint file, or a model folder of ``attnguide export``
            (``config.json`` + ``model.safetensors``, :mod:`attnguide.models.export`).
        device: where to put the model.
        prefer: ``"best"`` or ``"last"`` when given a run folder.

    Returns:
        A :class:`TrainedModel` with the model in eval mode.
    """
    import timm

    if is_model_folder(run_dir_or_checkpoint):
        return _load_folder(run_dir_or_checkpoint, device)
    path = resolve_checkpoint(run_dir_or_checkpoint, prefer)
    ckpt = read_checkpoint(path, CLASSIFIER)
    class_names = list(ckpt["class_names"])
    name = ckpt["model_name"]
    check_model_name(name)
    model = timm.create_model(name, pretrained=False, num_classes=len(class_names))
    model.load_state_dict(ckpt["model"])
    model.to(device).eval()
    config = dict(ckpt.get("config") or {})
    norm = ckpt.get("normalize") or {}
    return TrainedModel(
        model=model,
        class_names=class_names,
        multilabel=bool(ckpt["multilabel"]),
        layer=ckpt.get("layer"),
        image_size=int(ckpt.get("image_size") or config.get("image_size") or 224),
        config=config,
        checkpoint=str(path),
        mean=tuple(norm.get("mean", TrainedModel.mean)),
        std=tuple(norm.get("std", TrainedModel.std)),
        decision_threshold=checkpoint_threshold(ckpt),
    )


def _load_folder(folder: str | os.PathLike, device: str | torch.device) -> TrainedModel:
    """A model folder of ``attnguide export`` as a TrainedModel."""
    import timm

    config, state = read_model_folder(folder)
    name = config["architecture"]
    check_model_name(name)
    class_names = list(config["classes"])
    model = timm.create_model(name, pretrained=False, num_classes=len(class_names))
    model.load_state_dict(state)
    model.to(device).eval()
    norm = config.get("normalize") or {}
    return TrainedModel(
        model=model,
        class_names=class_names,
        multilabel=bool(config["multilabel"]),
        layer=config.get("layer"),
        image_size=int(config["image_size"]),
        config=dict(config.get("training") or {}),
        checkpoint=str(folder),
        mean=tuple(norm.get("mean", TrainedModel.mean)),
        std=tuple(norm.get("std", TrainedModel.std)),
        decision_threshold=config.get("decision_threshold"),
    )
