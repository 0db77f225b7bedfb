"""`Step`, what a supervision term reads, `StepContext`, what a step asks of the
module that runs it, and `GuideOutput`, what a step returns.

A term sees one `Step`: the batch, its logits and, when a term asks for them,
the attention maps, the erased images' logits, the input gradient and the
counterfactual images' logits. The few things a step cannot compute from its
tensors alone (a forward of altered images through the model, the attention of
every class) it asks of its `StepContext`, which `GuidedAttention` provides.
So the terms depend on this small protocol, never on the wrapper.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnguide.constants import IGNORE
from attnguide.core.losses import wide
from attnguide.core.maps import erase_pairs
from attnguide.errors import AttnGuideError

BUILTIN_REPORTED = ("am", "ext", "rrr", "area")
"""Terms always present in ``GuideOutput.losses`` (0 when off), for steady logs."""


@dataclass
class GuideOutput:
    """What one guided step returns.

    Attributes:
        loss: scalar, ``L_cl + alpha L_am + omega L_e + rrr_weight L_rrr + area_weight L_area``.
        logits: (B, C) logits of the clean images.
        losses: the unweighted terms ``cls``, ``am``, ``ext``, ``rrr``, ``area`` (zeros
            when unused).
        attention: (P, H, W) normalised attention of each pair, or None when
            guidance was off.
        pairs: (P, 2) int64 ``(image index, class index)`` of each attention map.
        stats: detached scalars for logging: ``attention_area`` (mean of T(A))
            and ``pairs``.
    """

    loss: Tensor
    logits: Tensor
    losses: dict[str, Tensor]
    attention: Tensor | None = None
    pairs: Tensor | None = None
    stats: dict[str, Tensor] = field(default_factory=dict)


class StepContext(Protocol):
    """What a step may ask of the module that runs it (`GuidedAttention` is one).

    Attributes:
        model: the classifier.
        fill: the value erased pixels move towards when a term names none
            (the ``am`` term's own ``fill``).
    """

    model: nn.Module
    fill: float

    def extra_logits(self, images: Tensor, erased: bool = True) -> Tensor:
        """(N, C) logits of altered images (N, 3, H, W): one more forward, BatchNorm
        frozen when the module says so for erased images (regions blanked out) or, with
        ``erased=False``, for composed pictures (every pixel from a photograph)."""

    def class_maps(self, step: Step) -> Tensor:
        """(B, C, H, W) attention of every class on every image of ``step`` (from its
        captured ``features``), each image's maps divided by their joint maximum."""


class Step:
    """What a supervision term can read in one guided step.

    Attributes:
        guide: the `StepContext` that runs the step (the `GuidedAttention` module;
            ``guide.model`` is the classifier).
        images: (B, 3, H, W); a leaf that requires grad when a term reads input gradients.
        labels: (B, C) multi-hot floats or (B,) class indices.
        masks: (B, H, W) int64 pixel labels (0 background, c + 1 class c, 255 ignore) or None.
        logits: (B, C) logits of the clean images.
        pairs: (P, 2) ``(image, class)`` of each positive label (None without attention).
        attention: (P, H, W) normalised attention of each pair (None without attention).
        soft: (P, H, W) erasing masks T(attention) (None without attention).
        features: the captured output of the target layer (None without attention).
        create_graph: whether maps computed in this step keep a graph (training).
        annotations: the batch's `attnguide.core.annotations.Annotations` (boxes, points,
            avoid regions, ...) or None; its masks and scribbles are in ``masks``.
    """

    def __init__(self, guide: StepContext, images: Tensor, labels: Tensor,
                 masks: Tensor | None, logits: Tensor, pairs: Tensor | None = None,
                 attention: Tensor | None = None, soft: Tensor | None = None,
                 features: Tensor | None = None, create_graph: bool = False,
                 annotations: Any = None) -> None:
        self.guide, self.images, self.labels, self.masks = guide, images, labels, masks
        self.logits, self.pairs, self.attention, self.soft = logits, pairs, attention, soft
        self.features, self.create_graph = features, create_graph
        self.annotations = annotations
        self._cache: dict[Any, Any] = {}

    @property
    def multilabel(self) -> bool:
        return self.labels.dim() == 2

    def _fill(self, fill: float | None) -> float:
        return float(self.guide.fill if fill is None else fill)

    def erased_logits(self, fill: float | None = None) -> Tensor:
        """(P, C) logits of the erased images ``I* = I - T(A) (I - fill)`` of every
        pair: one batched forward. ``fill`` None: the context's."""
        key = ("erased", self._fill(fill))
        if key not in self._cache:
            erased = erase_pairs(self.images, self.pairs[:, 0], self.soft, key[1])
            self._cache[key] = self.guide.extra_logits(erased)
        return self._cache[key]

    def class_attention(self) -> Tensor:
        """(B, C, H, W) attention of every class on every image, each image's maps
        divided by their joint maximum (so absent classes stay near 0)."""
        if "classes" not in self._cache:
            if self.features is None:
                raise AttnGuideError("class_attention() needs a term declared with attention=True")
            self._cache["classes"] = self.guide.class_maps(self)
        return self._cache["classes"]

    def input_grad(self) -> Tensor:
        """(B, 3, H, W) gradient of the summed log-probabilities w.r.t. the images
        (with a graph, so a loss on it trains the model)."""
        if "input_grad" not in self._cache:
            if not self.images.requires_grad:
                raise AttnGuideError("input_grad() needs a term declared with input_grad=True")
            logits = wide(self.logits)
            log_probs = F.logsigmoid(logits) if self.multilabel else F.log_softmax(logits, dim=1)
            (grad,) = torch.autograd.grad(log_probs.sum(), self.images, create_graph=True)
            self._cache["input_grad"] = grad
        return self._cache["input_grad"]

    def object_logits(self, fill: float | None = None) -> tuple[Tensor, Tensor]:
        """``(index, logits)``: the images with a labelled pixel and their (N, C) logits
        with the background (mask 0) erased to ``fill`` (None: the context's)."""
        key = ("objects", self._fill(fill))
        if key not in self._cache:
            index = labelled(self.masks).nonzero().squeeze(1)
            keep = (self.masks[index] != 0).unsqueeze(1)  # objects and ignored pixels stay
            images = self.images[index]
            objects = torch.where(keep, images, torch.full_like(images, key[1]))
            self._cache[key] = (index, self.guide.extra_logits(objects))
        return self._cache[key]

    def background_logits(self) -> tuple[Tensor, Tensor]:
        """``(index, logits)``: the images with a labelled pixel and the (N, C) logits of
        their backgrounds alone, every pixel not labelled background (objects, ignored
        pixels) painted over by `background_fill`."""
        if "background" not in self._cache:
            index = labelled(self.masks).nonzero().squeeze(1)
            objects = (self.masks[index] != 0).unsqueeze(1).to(self.images.dtype)
            self._cache["background"] = (index, self.guide.extra_logits(
                background_fill(self.images[index], objects), erased=False))
        return self._cache["background"]

    def swapped_logits(self, attention: bool = False, boxes: bool = False) -> tuple[Tensor, Tensor]:
        """``(index, logits)``: images and the (N, C) logits of their objects pasted on
        the background of another image of the batch (drawn at random, never itself),
        whose own objects are painted over with its own background from elsewhere in its
        picture (`background_fill`).

        Objects come from the pixel mask (images with a labelled pixel); with
        ``attention`` every other image with a positive class takes part too, its
        objects cut out by its own erasing mask T(A) (detached); with ``boxes`` the
        objects of the images with boxes (and no mask) are everything inside their boxes
        (the object and the background the box holds), and with both, what T(A) covers
        inside the boxes. Empty when fewer than two images take part.
        """
        key = ("swapped", attention, boxes)
        if key not in self._cache:
            images = self.images
            objects = torch.zeros_like(images[:, :1])
            taking_part = torch.zeros(len(images), dtype=torch.bool, device=images.device)
            if attention and self.soft is not None and len(self.pairs):
                soft = self.soft.detach().flatten(1).to(images.dtype)  # an image's union of its classes
                objects = soft.new_zeros(len(images), soft.shape[1]).scatter_reduce_(
                    0, self.pairs[:, :1].expand_as(soft), soft, "amax").view_as(objects)
                taking_part[self.pairs[:, 0]] = True
            if boxes and self.annotations is not None and "boxes" in self.annotations.kinds():
                inside, has = self.box_targets(tuple(images.shape[-2:]))
                boxed = has.any(1).to(images.device)
                cut = inside.any(1, keepdim=True).to(images)
                if attention:  # inside the boxes, only what the attention's erasing mask covers
                    cut = cut * objects
                objects = torch.where(boxed[:, None, None, None], cut, objects)
                taking_part |= boxed
            if self.masks is not None:
                has_label = labelled(self.masks)
                objects = torch.where(has_label[:, None, None, None],
                                      (self.masks != 0).unsqueeze(1).to(images.dtype), objects)
                taking_part |= has_label
            index = taking_part.nonzero().squeeze(1)
            n = len(index)
            if n < 2:
                self._cache[key] = (index[:0], self.logits[:0])
            else:
                partner = (torch.arange(n, device=index.device)
                           + torch.randint(1, n, (n,), device=index.device)) % n
                own, objects = images[index], objects[index]
                # the partner's background: its objects painted over with its own background
                # from elsewhere in its picture (painting them with ours would leave their
                # silhouettes, the shape of the partner's class, in our image)
                background = background_fill(own[partner].detach(), objects[partner])
                swapped = objects * own + (1 - objects) * background
                self._cache[key] = (index, self.guide.extra_logits(swapped, erased=False))
        return self._cache[key]

    def box_targets(self, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """``(inside (B, C, H, W) bool, has (B, C) bool)`` of the batch's boxes rasterised at
        ``size`` (coordinates scaled from the images' size), computed once per step and size
        (the box terms and the box swap read the same rasters)."""
        key = ("boxes", tuple(size))
        if key not in self._cache:
            self._cache[key] = self.annotations.box_targets(
                self.logits.shape[1], tuple(size), tuple(self.images.shape[-2:]))
        return self._cache[key]

    def pair_masks(self) -> Tensor:
        """(P, H, W) the pixel mask of each pair's image."""
        return self.masks[self.pairs[:, 0]]


def background_fill(images: Tensor, objects: Tensor) -> Tensor:
    """``images`` (N, 3, H, W) with their ``objects`` (N, 1, H, W, in [0, 1]) painted over
    by the same picture's background from elsewhere: the picture shifted by half its
    height and width, else by half its height, else by half its width, wherever the
    shifted copy shows background; a pixel every shift covers with an object takes the
    image's mean background colour. The counterfactual background of the swap terms.
    """
    h, w = images.shape[-2:]
    share = (1 - objects).sum((-2, -1), keepdim=True)
    mean = ((1 - objects) * images).sum((-2, -1), keepdim=True) / share.clamp_min(1e-6)
    fill = mean.expand_as(images)
    for shift in ((0, w // 2), (h // 2, 0), (h // 2, w // 2)):  # the last one applied wins
        covered = objects.roll(shift, (-2, -1))
        fill = covered * fill + (1 - covered) * images.roll(shift, (-2, -1))
    return objects * fill + (1 - objects) * images


def labelled(masks: Tensor) -> Tensor:
    """(B,) whether each image has a labelled (non-255) pixel."""
    return (masks != IGNORE).flatten(1).any(1)
