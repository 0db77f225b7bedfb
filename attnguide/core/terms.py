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

A term carries its own settings (`Term.options`): ``am`` has ``score``
(``auto``, ``sigmoid``, ``softmax``, ``logit``) and ``fill`` (the value erased
pixels move towards), ``bg`` has ``fill``. ``GuidedAttention(am_score=...,
fill=...)`` configures the terms given by name; a configured copy replaces the
term of the same name::

    guide = GuidedAttention(model, terms={TERMS.get("am").configured(score="logit"): 1.0})

Terms read the step only (`attnguide.core.step`), never the wrapper: what a
step cannot compute alone it asks of its `StepContext`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from torch import Tensor

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
from attnguide.core.step import Step, labelled
from attnguide.errors import AttnGuideError


@dataclass(frozen=True)
class Term:
    """A supervision term, its settings, and what it reads, so a step computes only
    what is needed.

    Attributes:
        fn: ``(step, **settings) -> scalar tensor``.
        attention: reads the attention maps (``step.attention``, ``step.soft``,
            ``step.erased_logits()``, ``step.class_attention()``): the step then
            captures the layer and computes CAMs.
        masks: needs pixel masks; skipped (0) in batches without them.
        input_grad: reads ``step.input_grad()`` (the images become a leaf that
            requires grad before the forward pass).
        options: the term's settings, passed to ``fn`` as keyword arguments
            (``am``: ``score`` and ``fill``; ``bg``: ``fill``); a mapping or
            ``(name, value)`` pairs, kept as sorted pairs so a term stays hashable.
            `configured` returns a copy with other values.
    """

    fn: Callable[..., Tensor]
    attention: bool = True
    masks: bool = False
    input_grad: bool = False
    options: Mapping[str, Any] | tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", tuple(sorted(dict(self.options).items())))

    @property
    def settings(self) -> dict[str, Any]:
        """The settings as a dict: ``{"score": "auto", "fill": 0.0}`` for ``am``."""
        return dict(self.options)

    def configured(self, **settings: Any) -> Term:
        """A copy with these settings changed; a name the term does not have is an error."""
        unknown = sorted(set(settings) - set(self.settings))
        if unknown:
            known = ", ".join(self.settings) or "none"
            raise AttnGuideError(f"term {term_name(self)!r} has no setting {unknown[0]!r} "
                                 f"(its settings: {known})")
        return replace(self, options={**self.settings, **settings})

    def __call__(self, step: Step) -> Tensor:
        return self.fn(step, **self.settings)


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
    if isinstance(spec, Term):  # a registered term, perhaps configured: its name
        for name in TERMS.names():
            if TERMS.get(name).fn is spec.fn:
                return name
    fn = spec.fn if isinstance(spec, Term) else spec
    return getattr(fn, "__name__", type(fn).__name__)


def weighted_terms(weights: Mapping[str | Term | Callable, float],
                   settings: Mapping[str, Any]) -> dict[str, tuple[Term, float]]:
    """``{spec: weight}`` -> ``{name: (configured term, weight)}``, the one form in which
    `GuidedAttention` keeps its terms.

    A term named by a string is configured with those of ``settings`` it has
    (``score``, ``fill``); a `Term` passed in keeps its own settings. A later
    spec with the same name replaces an earlier one.
    """
    out: dict[str, tuple[Term, float]] = {}
    for spec, weight in weights.items():
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
            raise AttnGuideError(f"the weight of term {term_name(spec)!r} must be a number "
                                 f">= 0, got {weight!r}")
        term = as_term(spec)
        if isinstance(spec, str):
            term = term.configured(**{k: v for k, v in settings.items() if k in term.settings})
        out[term_name(spec)] = (term, float(weight))
    return out


def _zero(step: Step) -> Tensor:
    return wide(step.logits.new_zeros(()))


def _am(step: Step, score: str = "auto", fill: float = 0.0) -> Tensor:
    if len(step.pairs) == 0:
        return _zero(step)
    if score == "auto":
        score = "sigmoid" if step.multilabel else "softmax"
    return attention_mining_loss(step.erased_logits(fill), step.pairs[:, 1], score)


def _ext(step: Step) -> Tensor:
    if len(step.pairs) == 0:
        return _zero(step)
    return attention_ext_loss(step.attention, step.pair_masks(), step.pairs[:, 1])


def _ext_all(step: Step) -> Tensor:
    if not bool(labelled(step.masks).any()):
        return _zero(step)
    return all_class_ext_loss(step.class_attention(), step.masks)


def _rrr(step: Step) -> Tensor:
    return input_gradient_loss(step.input_grad(), step.masks)


def _invariance(step: Step, index: Tensor, logits: Tensor) -> Tensor:
    """The prediction on altered images ``(index, logits)`` (objects on an erased or
    swapped background) must stay right and the clean image must agree."""
    return background_invariance_loss(step.logits[index], logits, step.labels[index])


def _bg(step: Step, fill: float = 0.0) -> Tensor:
    return _invariance(step, *step.object_logits(fill))


def _swap(step: Step) -> Tensor:
    return _invariance(step, *step.swapped_logits())


def _swap_attention(step: Step) -> Tensor:
    return _invariance(step, *step.swapped_logits(attention=True))


def _area(step: Step) -> Tensor:
    return area_loss(step.soft) if len(step.pairs) else _zero(step)


TERMS.register("am")(Term(_am, options={"score": "auto", "fill": 0.0}))
TERMS.register("ext")(Term(_ext, masks=True))
TERMS.register("ext_all")(Term(_ext_all, masks=True))
TERMS.register("rrr")(Term(_rrr, attention=False, masks=True, input_grad=True))
TERMS.register("area")(Term(_area))
TERMS.register("bg")(Term(_bg, attention=False, masks=True, options={"fill": 0.0}))
TERMS.register("swap")(Term(_swap, attention=False, masks=True))
TERMS.register("swap_attention")(Term(_swap_attention))
