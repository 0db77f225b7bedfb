"""Supervision terms: what a guided step adds to the classification loss L_cl.

``GuidedAttention`` computes ``L = L_cl + sum_t weight_t * term_t(step)``. A term
is a function of one `Step` (the batch, its logits and, computed only when a term
asks for them, the attention maps, the erased images' logits and the input
gradient) that returns a scalar. Built-in terms, by name in `TERMS`:

========  =====================================================================
``am``     GAIN's attention mining L_am: the score of class c on the image with
           c's attention erased (self-guidance; needs no masks).
``ext``    GAIN_ext's L_e: squared error between the attention of each positive
           class and its pixel mask (images with a mask only).
``ext_all`` L_e over *every* class: the attention of any class, present or not,
           outside its own mask is penalised, background included (images with a
           mask only; one more CAM gradient per class).
``rrr``    "Right for the Right Reasons" (Ross et al. 2017): the share of the
           input gradient of the summed log-probabilities on background pixels
           (images with a mask only; no CAM, a double backward through the model).
``area``   mean erased area T(A): against attention that covers the whole image.
``bg``     background invariance: with everything outside the objects erased the
           classifier must still be right, and on the full image it must agree
           with that object-only prediction (images with a mask only; one more
           forward, no CAM, no second order). A counterfactual rather than an
           attention map: it removes shortcuts that Grad-CAM does not show.
``swap``   background swap: each labelled image's objects pasted onto the
           background of another labelled image of the batch (whose own objects
           are painted over with the first image's background) must still be
           classified as the first image, and the clean image must agree with that
           prediction. A shortcut in the background (a texture, a corner mark) now
           names the *wrong* class, so it cannot be used (images with a mask only,
           two or more per batch; one more forward, no CAM).
``swap_attention`` the same for every image of the batch: objects from the pixel
           mask where there is one, else cut out by the image's own attention
           (its erasing mask T(A), detached), so a few masks (which train the
           attention with ``ext``) reach the unlabelled images.
========  =====================================================================

Your own term is any callable ``step -> scalar tensor``; wrap it in `Term` to say
what it reads (by default it may read the attention maps)::

    def outside_box(step):            # attention must stay in the left half
        return step.attention[..., step.attention.shape[-1] // 2:].mean()

    guide = GuidedAttention(model, terms={"ext": 10.0, outside_box: 1.0})
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from attnguide.constants import IGNORE
from attnguide.core.losses import (
    all_class_ext_loss,
    area_loss,
    attention_ext_loss,
    attention_mining_loss,
    background_invariance_loss,
    input_gradient_loss,
    wide,
)
from attnguide.core.registry import Registry
from attnguide.errors import AttnGuideError

if TYPE_CHECKING:  # pragma: no cover
    from attnguide.core.guide import GuidedAttention


@dataclass(frozen=True)
class Term:
    """A supervision term and what it reads, so a step computes only what is needed.

    Attributes:
        fn: ``step -> scalar tensor``.
        attention: reads the attention maps (``step.attention``, ``step.soft``,
            ``step.erased_logits()``, ``step.class_attention()``): the step then
            captures the layer and computes CAMs.
        masks: needs pixel masks; skipped (0) in batches without them.
        input_grad: reads ``step.input_grad()`` (the images become a leaf that
            requires grad before the forward pass).
    """

    fn: Callable[[Step], Tensor]
    attention: bool = True
    masks: bool = False
    input_grad: bool = False

    def __call__(self, step: Step) -> Tensor:
        return self.fn(step)


TERMS = Registry("supervision term")
"""Name -> `Term`; ``GuidedAttention(terms={name: weight})``."""


def as_term(spec: str | Term | Callable[[Step], Tensor]) -> Term:
    """A `Term` from a registered name, a `Term`, or a plain callable (reads attention)."""
    if isinstance(spec, Term):
        return spec
    if isinstance(spec, str):
        return TERMS.get(spec)
    if callable(spec):
        return Term(spec)
    raise AttnGuideError(f"a supervision term is a name in {TERMS.names()} or a callable, "
                         f"not {type(spec).__name__}")


def term_name(spec: Any) -> str:
    """The key under which a term's value is reported in ``GuideOutput.losses``."""
    if isinstance(spec, str):
        return spec
    fn = spec.fn if isinstance(spec, Term) else spec
    return getattr(fn, "__name__", type(fn).__name__)


class Step:
    """What a supervision term can read in one guided step.

    Attributes:
        guide: the `GuidedAttention` module (``guide.model`` is the classifier).
        images: (B, 3, H, W); a leaf that requires grad when a term reads input gradients.
        labels: (B, C) multi-hot floats or (B,) class indices.
        masks: (B, H, W) int64 pixel labels (0 background, c + 1 class c, 255 ignore) or None.
        logits: (B, C) logits of the clean images.
        pairs: (P, 2) ``(image, class)`` of each positive label (None without attention).
        attention: (P, H, W) normalised attention of each pair (None without attention).
        soft: (P, H, W) erasing masks T(attention) (None without attention).
    """

    def __init__(self, guide: GuidedAttention, images: Tensor, labels: Tensor,
                 masks: Tensor | None, logits: Tensor, pairs: Tensor | None = None,
                 attention: Tensor | None = None, soft: Tensor | None = None,
                 class_maps: Callable[[Tensor], Tensor] | None = None) -> None:
        self.guide, self.images, self.labels, self.masks = guide, images, labels, masks
        self.logits, self.pairs, self.attention, self.soft = logits, pairs, attention, soft
        self._class_maps = class_maps
        self._cache: dict[str, Tensor] = {}

    @property
    def multilabel(self) -> bool:
        return self.labels.dim() == 2

    def erased_logits(self) -> Tensor:
        """(P, C) logits of the erased images ``I*`` of every pair: one batched forward."""
        if "erased" not in self._cache:
            self._cache["erased"] = self.guide._erased_logits(self.images, self.pairs, self.soft)
        return self._cache["erased"]

    def class_attention(self) -> Tensor:
        """(B, C, H, W) attention of every class on every image, each image's maps
        divided by their joint maximum (so absent classes stay near 0)."""
        if "classes" not in self._cache:
            if self._class_maps is None:
                raise AttnGuideError("class_attention() needs a term declared with attention=True")
            self._cache["classes"] = self._class_maps(self.images)
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

    def object_logits(self) -> tuple[Tensor, Tensor]:
        """``(index, logits)``: the images with a labelled pixel and their (N, C) logits
        with the background (mask 0) erased to the guide's fill value."""
        if "objects" not in self._cache:
            index = _labelled(self.masks).nonzero().squeeze(1)
            keep = (self.masks[index] != 0).unsqueeze(1)  # objects and ignored pixels stay
            images = self.images[index]
            objects = torch.where(keep, images, torch.full_like(images, self.guide.fill))
            self._cache["objects"] = (index, self.guide._extra_logits(objects))
        return self._cache["objects"]

    def swapped_logits(self, attention: bool = False) -> tuple[Tensor, Tensor]:
        """``(index, logits)``: images and the (N, C) logits of their objects pasted on
        the background of another image of the batch (drawn at random, never itself),
        whose own objects are painted over with the first image's background.

        Objects come from the pixel mask (images with a labelled pixel); with
        ``attention`` every other image with a positive class takes part too, its
        objects cut out by its own erasing mask T(A) (detached). Empty when fewer
        than two images take part.
        """
        key = "swapped_attention" if attention else "swapped"
        if key not in self._cache:
            images = self.images
            objects = torch.zeros_like(images[:, :1])
            taking_part = torch.zeros(len(images), dtype=torch.bool, device=images.device)
            if attention and self.soft is not None and len(self.pairs):
                soft = self.soft.detach().flatten(1).to(images.dtype)  # an image's union of its classes
                objects = soft.new_zeros(len(images), soft.shape[1]).scatter_reduce_(
                    0, self.pairs[:, :1].expand_as(soft), soft, "amax").view_as(objects)
                taking_part[self.pairs[:, 0]] = True
            if self.masks is not None:
                labelled = _labelled(self.masks)
                objects = torch.where(labelled[:, None, None, None],
                                      (self.masks != 0).unsqueeze(1).to(images.dtype), objects)
                taking_part |= labelled
            index = taking_part.nonzero().squeeze(1)
            n = len(index)
            if n < 2:
                self._cache[key] = (index[:0], self.logits[:0])
            else:
                partner = (torch.arange(n, device=index.device)
                           + torch.randint(1, n, (n,), device=index.device)) % n
                own, objects = images[index], objects[index]
                other = own[partner].detach()
                # the partner's background: its pixels, with its objects painted by our own
                background = objects[partner] * own + (1 - objects[partner]) * other
                swapped = objects * own + (1 - objects) * background
                self._cache[key] = (index, self.guide._extra_logits(swapped))
        return self._cache[key]

    def pair_masks(self) -> Tensor:
        """(P, H, W) the pixel mask of each pair's image."""
        return self.masks[self.pairs[:, 0]]


def _labelled(masks: Tensor) -> Tensor:
    """(B,) whether each image has a labelled (non-255) pixel."""
    return (masks != IGNORE).flatten(1).any(1)


def _zero(step: Step) -> Tensor:
    return wide(step.logits.new_zeros(()))


def _am(step: Step) -> Tensor:
    if len(step.pairs) == 0:
        return _zero(step)
    score = step.guide.am_score
    if score == "auto":
        score = "sigmoid" if step.multilabel else "softmax"
    return attention_mining_loss(step.erased_logits(), step.pairs[:, 1], score)


def _ext(step: Step) -> Tensor:
    if len(step.pairs) == 0:
        return _zero(step)
    return attention_ext_loss(step.attention, step.pair_masks(), step.pairs[:, 1])


def _ext_all(step: Step) -> Tensor:
    if not bool(_labelled(step.masks).any()):
        return _zero(step)
    return all_class_ext_loss(step.class_attention(), step.masks)


def _rrr(step: Step) -> Tensor:
    return input_gradient_loss(step.input_grad(), step.masks)


def _counterfactual(altered: Callable[[Step], tuple[Tensor, Tensor]]) -> Callable[[Step], Tensor]:
    """A term asking the prediction on altered images ``(index, logits)`` (objects on
    an erased or swapped background) to stay right and the clean image to agree."""

    def term(step: Step) -> Tensor:
        index, logits = altered(step)
        return background_invariance_loss(step.logits[index], logits, step.labels[index])

    return term


def _area(step: Step) -> Tensor:
    return area_loss(step.soft) if len(step.pairs) else _zero(step)


TERMS.register("am")(Term(_am))
TERMS.register("ext")(Term(_ext, masks=True))
TERMS.register("ext_all")(Term(_ext_all, masks=True))
TERMS.register("rrr")(Term(_rrr, attention=False, masks=True, input_grad=True))
TERMS.register("area")(Term(_area))
TERMS.register("bg")(Term(_counterfactual(Step.object_logits), attention=False, masks=True))
TERMS.register("swap")(Term(_counterfactual(Step.swapped_logits), attention=False, masks=True))
TERMS.register("swap_attention")(Term(_counterfactual(lambda step: step.swapped_logits(attention=True))))
