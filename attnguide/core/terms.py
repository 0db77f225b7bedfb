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
           are painted over with that picture's own background from elsewhere in
           it, so no silhouette of them is left) must still be
           classified as the first image, and the clean image must agree with that
           prediction. A shortcut in the background (a texture, a corner mark) now
           names the *wrong* class, so it cannot be used (images with a mask only,
           two or more per batch; one more forward, no CAM).
``swap_attention`` the same for every image of the batch: objects from the pixel
           mask where there is one, else cut out by the image's own attention
           (its erasing mask T(A), detached), so a few masks (which train the
           attention with ``ext``) reach the unlabelled images.
``bg_null`` the background alone names no class: each labelled image with its objects
           painted over by the picture's own background from elsewhere in it (as in
           ``swap``) must score 0 for every class (sigmoid) or the uniform distribution
           (softmax). With a pooled linear head the background then adds the same to
           every class, so a background that goes with a class cannot decide it. The
           background-only images by which "Noise or Signal" (Xiao et al., ICLR 2021)
           measured how much a classifier reads backgrounds, as a training target
           (images with a mask only; one more forward, no CAM).
``box_swap`` the background swap for boxes: each image with boxes has everything inside
           its boxes (object and the background the box holds) pasted onto another
           boxed image's background (its boxes painted over as in ``swap``); masks,
           where an image has one, cut as in ``swap`` (images with boxes or masks,
           two or more per batch; one more forward, no CAM). The cut-and-paste of
           box-supervised segmentation (Dwibedi et al. 2017, "Cut, Paste and Learn")
           as a consistency loss.
``box_swap_attention`` the same, cutting inside each box only what the image's own
           attention covers (its erasing mask T(A), detached), so that less of the
           background the box holds travels with the object.
``energy`` boxes: 1 - the share of each positive class's attention inside its
           boxes (Rao, Böhle et al., ICCV 2023; images with boxes only).
``box_l1`` boxes: the mean attention outside the class's boxes (the same paper's
           L1 loss; images with boxes only).
``point``  points: the attention peak near each click, ``-log A`` weighted by a
           Gaussian around the click (Bearman et al., ECCV 2016); setting ``sigma``
           (a share of the image's shorter side).
``avoid``  avoid regions: the share of attention inside them, for the positive
           classes (setting ``classes="positive"``) or every class (``"all"``, one
           more CAM gradient per class).
``avoid_rrr`` avoid regions through the input gradient (RRR, Ross et al. 2017): the
           share of the squared input gradient inside them; no CAM.
========  =====================================================================

Annotations other than masks reach the terms as an
`attnguide.core.annotations.Annotations` passed where the masks go
(``guide(images, labels, annotations)``); the step reads them as ``step.annotations``
and its pixel-mask terms read the masks and scribbles in it as ``step.masks``. A term
declares the kinds it reads (`Term.kinds`) and is skipped in a batch that has none.

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

import torch
from torch import Tensor

from attnguide.constants import IGNORE
from attnguide.core.annotations import (
    KINDS,
    Annotations,
    avoid_loss,
    energy_loss,
    outside_l1_loss,
    point_loss,
)
from attnguide.core.losses import (
    all_class_ext_loss,
    area_loss,
    attention_ext_loss,
    attention_mining_loss,
    background_invariance_loss,
    input_gradient_loss,
    null_background_loss,
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
        kinds: the annotation kinds it reads (``("boxes",)`` for ``energy``); skipped (0)
            in batches whose `Annotations` have none of them.
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
    kinds: tuple[str, ...] = ()

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


def _bg_null(step: Step) -> Tensor:
    _, logits = step.background_logits()
    return null_background_loss(logits, step.multilabel)


def _box_swap(step: Step) -> Tensor:
    return _invariance(step, *step.swapped_logits(boxes=True))


def _box_swap_attention(step: Step) -> Tensor:
    return _invariance(step, *step.swapped_logits(attention=True, boxes=True))


def _swap_attention(step: Step) -> Tensor:
    return _invariance(step, *step.swapped_logits(attention=True))


def _area(step: Step) -> Tensor:
    return area_loss(step.soft) if len(step.pairs) else _zero(step)


def _annotations(step: Step) -> Annotations | None:
    return getattr(step, "annotations", None)


def _pair_targets(step: Step, kind: str, build) -> tuple[Tensor, Tensor] | None:
    """``(targets (P', H, W), index (P',))`` of the pairs whose image has ``kind`` for
    their class, built once per step by ``build(annotations, C, (H, W)) -> (dense, has)``;
    None when no pair has one."""
    key = ("annotation", kind)
    if key not in step._cache:
        ann = _annotations(step)
        result = None
        if ann is not None and step.pairs is not None and len(step.pairs) and kind in ann.kinds():
            size = tuple(step.attention.shape[-2:])
            dense, has = build(ann, step.logits.shape[1], size)
            dense, has = dense.to(step.attention.device), has.to(step.attention.device)
            img, cls = step.pairs[:, 0], step.pairs[:, 1]
            index = has[img, cls].nonzero().squeeze(1)
            if len(index):
                result = (dense[img[index], cls[index]], index)
        step._cache[key] = result
    return step._cache[key]


def _boxes(step: Step) -> tuple[Tensor, Tensor] | None:
    return _pair_targets(step, "boxes", lambda a, c, size: step.box_targets(size))


def _pair_loss(step: Step, found: tuple[Tensor, Tensor] | None, loss) -> Tensor:
    """``loss(attention, targets)`` of the pairs `_pair_targets` found; 0 when none."""
    if found is None:
        return _zero(step)
    targets, index = found
    return loss(step.attention[index], targets)


def _energy(step: Step) -> Tensor:
    return _pair_loss(step, _boxes(step), energy_loss)


def _box_l1(step: Step) -> Tensor:
    return _pair_loss(step, _boxes(step), outside_l1_loss)


def _point(step: Step, sigma: float = 0.05) -> Tensor:
    size = tuple(step.images.shape[-2:])
    found = _pair_targets(step, "points", lambda a, c, s: a.point_targets(
        c, s, max(sigma * min(s), 0.5), size))
    return _pair_loss(step, found, point_loss)


def _avoid_regions(step: Step) -> tuple[Tensor, Tensor] | None:
    """``(region (B, H, W) bool, has (B,))`` of the batch, or None without avoid regions."""
    ann = _annotations(step)
    if ann is None or "avoid" not in ann.kinds():
        return None
    size = tuple(step.images.shape[-2:])
    region, has = ann.avoid_masks(size, size, device=step.images.device)
    return region, has


def _avoid(step: Step, classes: str = "positive") -> Tensor:
    found = _avoid_regions(step)
    if found is None:
        return _zero(step)
    region, has = found
    if classes == "all":
        maps = step.class_attention()  # (B, C, H, W)
        index = has.nonzero().squeeze(1)
        sel = maps[index]
        return avoid_loss(sel.flatten(0, 1), region[index].repeat_interleave(sel.shape[1], 0))
    if classes != "positive":
        raise AttnGuideError(f"the avoid term's classes setting is 'positive' or 'all', "
                             f"got {classes!r}")
    if step.pairs is None or not len(step.pairs):
        return _zero(step)
    index = has[step.pairs[:, 0]].nonzero().squeeze(1)
    return avoid_loss(step.attention[index], region[step.pairs[index, 0]])


def _avoid_rrr(step: Step) -> Tensor:
    found = _avoid_regions(step)
    if found is None:
        return _zero(step)
    region, has = found
    # input_gradient_loss penalises the pixels marked 0; images without a region are all 255
    masks = torch.where(region, 0, 1)
    masks = torch.where(has[:, None, None], masks, torch.full_like(masks, IGNORE))
    return input_gradient_loss(step.input_grad(), masks)


def term_kinds(term: Term) -> frozenset[str]:
    """The annotation kinds a term can use: its `Term.kinds`, and the label-map kinds
    (masks, scribbles) for a term that reads pixel masks."""
    kinds = set(term.kinds)
    if term.masks:
        kinds |= {"mask", "scribble"}
    return frozenset(kinds)


def check_kinds_used(kinds: frozenset[str] | set[str],
                     terms: Mapping[str, tuple[Term, float]]) -> None:
    """Raise when the batch carries an annotation kind that no term with a weight > 0
    reads (a mistake: the annotation would be silently ignored). Masks are exempt: they
    also serve evaluation, and GAIN without L_e takes them as before."""
    used = set().union(*(term_kinds(t) for t, w in terms.values() if w > 0)) if terms else set()
    unused = sorted(set(kinds) - used - {"mask"}, key=KINDS.index)
    if unused:
        readers = {k: sorted(n for n in TERMS.names() if k in term_kinds(TERMS.get(n)))
                   for k in unused}
        said = "; ".join(f"{k} feed the term(s) {', '.join(v)}" for k, v in readers.items())
        raise AttnGuideError(f"the batch carries {', '.join(unused)} annotations but none of "
                             f"the terms {', '.join(terms) or '(none)'} uses them: {said}; add "
                             "such a term (terms={...: weight}) or drop those annotations")


TERMS.register("am")(Term(_am, options={"score": "auto", "fill": 0.0}))
TERMS.register("ext")(Term(_ext, masks=True))
TERMS.register("ext_all")(Term(_ext_all, masks=True))
TERMS.register("rrr")(Term(_rrr, attention=False, masks=True, input_grad=True))
TERMS.register("area")(Term(_area))
TERMS.register("bg")(Term(_bg, attention=False, masks=True, options={"fill": 0.0}))
TERMS.register("swap")(Term(_swap, attention=False, masks=True))
TERMS.register("bg_null")(Term(_bg_null, attention=False, masks=True))
TERMS.register("swap_attention")(Term(_swap_attention))
TERMS.register("box_swap")(Term(_box_swap, attention=False, kinds=("boxes",)))
TERMS.register("box_swap_attention")(Term(_box_swap_attention, kinds=("boxes",)))
TERMS.register("energy")(Term(_energy, kinds=("boxes",)))
TERMS.register("box_l1")(Term(_box_l1, kinds=("boxes",)))
TERMS.register("point")(Term(_point, kinds=("points",), options={"sigma": 0.05}))
TERMS.register("avoid")(Term(_avoid, kinds=("avoid",), options={"classes": "positive"}))
TERMS.register("avoid_rrr")(Term(_avoid_rrr, attention=False, input_grad=True, kinds=("avoid",)))
