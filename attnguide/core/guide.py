"""`GuidedAttention`: GAIN's two streams around any classifier.

One training step (``guide(images, labels, masks)``):

1. S_cl: ``logits = model(I)``; a hook keeps the target layer's output ``A``.
2. Attention of each (image, positive class) pair: ``d s_c / d A`` from
   ``torch.autograd.grad`` (with ``create_graph`` so the map is trainable end
   to end), a CAM method, bilinear upsampling, per-map min-max to [0, 1].
3. S_am: the erased images ``I* = I - T(A) * (I - fill)`` of *all* pairs go
   through the model in one batched forward (BatchNorm frozen by default).
4. ``L = L_cl + alpha * L_am (+ omega * L_e for pairs with a pixel mask)``.

The parts, in reading order: `attnguide.core.checks` (inputs), `.capture` (the
watched layer), `.maps` (CAM maths, erasing), `.step` and `.terms` (what is
added to L_cl). This module only runs them in order and is the terms'
`StepContext`.

Shapes: B images, C classes, K channels, P pairs, (h, w) the layer's grid,
(H, W) the input size.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

from attnguide.core.annotations import Annotations
from attnguide.core.cams import CAM_METHODS
from attnguide.core.capture import LayerTarget
from attnguide.core.checks import (
    SWAP_TERMS,
    check_arguments,
    check_autograd,
    check_classes,
    check_finite,
    check_images,
    check_label_range,
    check_labels,
    check_mask_values,
    check_masks,
    extract_logits,
    resolve_freeze_bn,
)
from attnguide.core.hooks import (
    IsolatedBatchNorm,
    add_model_prefix,
    frozen_batchnorm,
    strip_model_prefix,
)
from attnguide.core.losses import area_loss, classification_loss
from attnguide.core.maps import (
    class_maps,
    closed_form_maps,
    double_backward_safe,
    erase,
    full_precision,
    normalize_maps,
    pair_maps,
    positive_pairs,
    upsample_maps,
)
from attnguide.core.masks import resolve_mask
from attnguide.core.step import BUILTIN_REPORTED, GuideOutput, Step
from attnguide.core.terms import Term, check_kinds_used, weighted_terms
from attnguide.errors import AttnGuideError

__all__ = ["BUILTIN_REPORTED", "GuideOutput", "GuidedAttention", "extract_logits",
           "normalize_maps", "upsample_maps"]


class GuidedAttention(nn.Module):
    """Make a classifier's attention trainable (GAIN, Li et al. CVPR 2018).

    Args:
        model: any classifier returning logits (B, C); timm models work out of the box.
        layer: dotted module name, the module itself, None (timm's last
            ``feature_info`` stage; for other models the last layer with a
            spatial output, found by one probe forward), or ``"auto"``: at the
            first call, the deepest timm stage whose map has at least 7 cells
            along the image's shorter side.
        cam: a name in ``CAM_METHODS`` (``gradcam`` (paper), ``gradcampp``,
            ``xgradcam``, ``layercam``, ``hirescam``, ``cam``) or a callable
            ``(activations (P,K,h,w), gradients (P,K,h,w)) -> (P,h,w)``.
        mask: ``"soft_threshold"`` (paper, threshold 0.5, sharpness 10),
            ``"hard_threshold"``, an instance such as ``SoftThreshold(0.4, 20)``,
            or a callable on (P, H, W) attention.
        alpha: weight of the attention-mining loss L_am (paper: 1).
        omega: weight of the pixel-mask loss L_e of GAIN_ext (paper: 10).
        am_score: score of L_am: ``"sigmoid"``, ``"softmax"``, ``"logit"``, or
            ``"auto"`` (sigmoid for multi-hot labels, softmax for class indices);
            the ``score`` setting of the ``am`` term.
        freeze_bn: which of a step's extra forwards run BatchNorm in eval mode
            (running statistics, no update): ``"all"`` (``True``), ``"erased"``
            (only images with regions blanked out: GAIN's erased images and the
            objects alone, which are out of distribution and whose statistics would
            pollute the running estimates; composed pictures, the background swap's
            and the backgrounds alone, run in the model's own mode), ``"none"``
            (``False``), or ``"auto"`` (the default): ``"none"`` when a background-swap
            term is on (measured to move reliance off the background far more), else
            ``"all"``.
        isolate_batchnorm: in guided steps, train-mode BatchNorm layers *after*
            the target layer hold their batch statistics constant in backward
            (forward values and running statistics unchanged). Otherwise one
            image's CAM gradient would pick up the other images' scores through
            the batch statistics (a 45-65% error in Grad-CAM weights at resnet18's
            layer2). No effect when the layer is the last stage or BN is in eval mode.
        max_pairs_per_image: cap on positive classes used per image (a random
            subset each step); None uses all.
        detach_weights: compute CAM gradients without a graph (what public GAIN
            ports do; cheaper). The default, False, keeps ``create_graph=True`` so
            L_am and L_e train the attention end to end, second order through
            the layers after the target layer, as the paper's formulation implies.
        fill: value erased pixels move towards (0 = the paper's ``I - T(A) I``;
            with ImageNet-normalised inputs that is the mean colour); the ``fill``
            setting of the terms that erase (``am``, ``bg``).
        area_weight: weight of a penalty on the mean erased area (0 = off), against
            attention that spreads over the whole image.
        rrr_weight: weight of input-gradient supervision ("Right for the Right
            Reasons", Ross et al. 2017) on images with a pixel mask: the share of
            the squared input gradient of the summed log-probabilities that falls
            on background pixels (0 = off). Independent of image size and logit
            scale. Costs a double backward through the whole model.
        terms: more supervision terms, ``{name or callable: weight}``: names from
            ``attnguide.core.terms.TERMS`` (``"ext_all"``: L_e over every class) or
            your own ``step -> scalar`` functions (see `attnguide.core.terms`). A name
            given here overrides alpha/omega/rrr_weight/area_weight (``"am"``,
            ``"ext"``, ``"rrr"``, ``"area"``). Both spellings end in one place,
            ``self.terms``: ``{name: (configured Term, weight)}``, from which
            ``alpha``, ``omega``, ``rrr_weight``, ``area_weight``, ``am_score`` and
            ``fill`` are read back.
        layout: how to read the layer's output: ``"auto"``, ``"NCHW"``,
            ``"NHWC"``, ``"tokens"``, or a callable ``tensor -> (B, K, h, w)``.
        check_finite: refuse images holding NaN or inf before the forward pass (so
            BatchNorm statistics stay clean) and raise ``FloatingPointError`` naming the
            term when the loss is NaN or infinite (two device syncs per step).

    Example:
        >>> model = timm.create_model("resnet18", num_classes=20)
        >>> guide = GuidedAttention(model, layer="layer4")
        >>> out = guide(images, labels)          # images (8,3,224,224), labels (8,20) multi-hot
        >>> out.loss.backward()
        >>> out.attention.shape                  # (P, 224, 224), P positive pairs
        >>> guide.attention(images, labels.argmax(1)).shape   # (8, 1, 7, 7)
    """

    def __init__(
        self,
        model: nn.Module,
        layer: str | nn.Module | None = None,
        *,
        cam: str | Callable[[Tensor, Tensor], Tensor] = "gradcam",
        mask: str | Callable[[Tensor], Tensor] = "soft_threshold",
        alpha: float = 1.0,
        omega: float = 10.0,
        am_score: str = "auto",
        freeze_bn: bool | str = "auto",
        isolate_batchnorm: bool = True,
        max_pairs_per_image: int | None = None,
        detach_weights: bool = False,
        fill: float = 0.0,
        area_weight: float = 0.0,
        rrr_weight: float = 0.0,
        terms: Mapping[str | Callable, float] | None = None,
        layout: str | Callable[[Tensor], Tensor] = "auto",
        check_finite: bool = True,
    ) -> None:
        super().__init__()
        shorthand = {"am": alpha, "ext": omega, "rrr": rrr_weight, "area": area_weight}
        check_arguments(model, am_score=am_score, layout=layout,
                        max_pairs_per_image=max_pairs_per_image,
                        weights={"alpha": alpha, "omega": omega, "area_weight": area_weight,
                                 "rrr_weight": rrr_weight})
        self.model = model
        self.cam_method = CAM_METHODS.get(cam)
        self.mask = resolve_mask(mask)
        # the one representation of the terms: name -> (configured term, weight)
        self.terms: dict[str, tuple[Term, float]] = weighted_terms(
            {**shorthand, **(terms or {})}, {"score": am_score, "fill": float(fill)})
        self.freeze_bn = resolve_freeze_bn(freeze_bn, swap=any(
            name in SWAP_TERMS and weight for name, (_, weight) in self.terms.items()))
        self.isolate_batchnorm = isolate_batchnorm
        self.max_pairs_per_image = max_pairs_per_image
        self.detach_weights = detach_weights
        self.layout = layout
        self.check_finite = check_finite
        self._target = LayerTarget(model, layer, layout)
        # The wrapper's state dict is the bare model's: keys without "model.".
        self.register_state_dict_post_hook(strip_model_prefix)
        self.register_load_state_dict_pre_hook(add_model_prefix)

    # ------------------------------------------------------------------ public API

    def forward(
        self,
        images: Tensor,
        labels: Tensor | None = None,
        masks: Tensor | Annotations | None = None,
        *,
        guidance: bool = True,
    ) -> GuideOutput | Tensor:
        """One training step's forward.

        Args:
            images: (B, 3, H, W) float.
            labels: (B, C) multi-hot float (multi-label, BCE) or (B,) int64
                (single-label, CE). None: return ``model(images)`` unchanged.
            masks: (B, H, W) int64 pixel labels for L_e, VOC convention (0
                background, class c -> c + 1, 255 ignore); all-255 for images
                without one. None: no image in the batch has one. Or an
                `attnguide.core.annotations.Annotations`: per image a mask, a
                scribble, boxes, points and/or avoid regions (its masks and
                scribbles become ``step.masks``; the box, point and avoid terms read
                the rest).
            guidance: False runs exactly a plain classification step (warm-up).

        Returns:
            GuideOutput; call ``out.loss.backward()``.
        """
        if labels is None:
            if masks is not None:
                raise AttnGuideError("masks were given without labels; pass labels too")
            return self.model(images)
        check_images(images, finite=self.check_finite)
        check_autograd("a guided step", " (in Lightning, Trainer(inference_mode=False)), or call "
                       "guide(images) for plain logits")
        labels = check_labels(labels, images.shape[0])
        annotations = None
        if isinstance(masks, Annotations):
            annotations, masks = _unpack_annotations(masks, images, labels, guidance, self.terms)
        if masks is not None:
            check_masks(masks, images)
        training = torch.is_grad_enabled()
        terms = self._active_terms(guidance, masks is not None, training,
                                   annotations.kinds() if annotations is not None else frozenset())
        needs_cam = any(term.attention for _, term, _ in terms)
        if any(term.input_grad for _, term, _ in terms):
            images = images.detach().requires_grad_(True)  # our own leaf; the user's is untouched
        if not needs_cam:
            logits = extract_logits(self.model(images))
            self._check_targets(labels, masks, logits)
            return self._combine(Step(self, images, labels, masks, logits,
                                      annotations=annotations), terms)

        target = self._target
        target.ensure(images)
        # Under torch.no_grad() (a validation loss, say) record a graph only from the
        # layer to the logits, which the CAM gradients need; nothing else is kept.
        create_graph = training and not self.detach_weights
        cap = target.capture(start_grad=not training)
        isolate = (IsolatedBatchNorm(self.model, cap) if self.isolate_batchnorm
                   else contextlib.nullcontext())
        with torch.set_grad_enabled(training), double_backward_safe(create_graph), cap, isolate:
            logits = extract_logits(self.model(images))
        feats = target.captured(cap, images, stacklevel=3)
        self._check_targets(labels, masks, logits)
        pairs = positive_pairs(labels, self.max_pairs_per_image)  # (P, 2)
        size = tuple(images.shape[-2:])
        if len(pairs):
            raw = pair_maps(target, self.cam_method, feats, logits, pairs, size,
                            create_graph)  # (P, h, w)
            with full_precision(images):
                attention = normalize_maps(upsample_maps(raw, size))  # (P, H, W)
                soft = self.mask(attention)  # (P, H, W)
        else:  # no positive class anywhere: nothing to attend to
            attention = soft = images.new_zeros(0, *size, dtype=torch.float32)

        step = Step(self, images, labels, masks, logits, pairs, attention, soft, feats, create_graph,
                    annotations=annotations)
        out = self._combine(step, terms)
        out.attention, out.pairs = attention, pairs
        if all(name != "area" for name, _, _ in terms):  # reported even when off
            out.losses["area"] = area_loss(soft)
        out.stats = {"attention_area": out.losses["area"].detach(),
                     "pairs": torch.tensor(float(len(pairs)), device=out.loss.device)}
        return out

    def attention(
        self,
        images: Tensor,
        classes: Tensor | None = None,
        *,
        resize: bool = False,
        normalize: bool = False,
        create_graph: bool = False,
    ) -> Tensor:
        """Attention maps of the given classes, for inference or custom losses.

        Args:
            images: (B, 3, H, W).
            classes: (B,) or (B, K) int64 class indices; None: each image's top-1 class.
            resize: bilinear upsampling to (H, W).
            normalize: min-max each map to [0, 1].
            create_graph: keep the graph (the maps are then differentiable with
                respect to the model's parameters).

        Returns:
            (B, K, h, w) raw maps after the method's ReLU (``(B, K, H, W)`` with
            ``resize``). The model's train/eval mode is left as it is: call
            ``model.eval()`` first for inference.

        When the layer feeds global average pooling and a linear classifier
        (checked on the batch's own logits), the gradient is known in closed
        form, ``d s_c / d A = W_c / (h w)``, and no backward pass runs.
        """
        check_images(images, finite=self.check_finite)
        check_autograd("attention()")
        target = self._target
        target.ensure(images)
        if create_graph:
            with torch.enable_grad(), double_backward_safe(True), target.capture() as cap:
                logits = extract_logits(self.model(images))
        else:  # graph only from the layer to the logits
            with torch.no_grad(), target.capture(start_grad=True) as cap:
                logits = extract_logits(self.model(images))
        feats = target.captured(cap, images, stacklevel=3)
        B = images.shape[0]
        if classes is None:
            classes = logits.detach().argmax(dim=1)
        classes = check_classes(classes, B, logits.shape[1])  # (B, K)
        K = classes.shape[1]
        pairs = torch.stack([torch.arange(B, device=classes.device).repeat_interleave(K),
                             classes.flatten()], dim=1)
        maps = None
        if not create_graph:
            maps = self._closed_form_maps(feats, logits, pairs, images.shape[-2:])
        if maps is None:
            maps = pair_maps(target, self.cam_method, feats, logits, pairs, images.shape[-2:],
                             create_graph)
        maps = maps.view(B, K, *maps.shape[-2:])
        with full_precision(maps):
            if resize:
                maps = upsample_maps(maps, tuple(images.shape[-2:]))
            if normalize:
                maps = normalize_maps(maps)
        return maps if create_graph else maps.detach()

    def erase(self, images: Tensor, soft_masks: Tensor) -> Tensor:
        """``I* = I - T(A) * (I - fill)``: (P, 3, H, W), (P, H, W) -> (P, 3, H, W)."""
        return erase(images, soft_masks, self.fill)

    def close(self) -> None:
        """Kept for symmetry with other CAM libraries: attnguide's hooks exist only
        inside a call and are always removed in ``finally``. Safe to call twice."""

    def __enter__(self) -> GuidedAttention:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def extra_repr(self) -> str:
        name = getattr(self.cam_method, "__name__", repr(self.cam_method))
        return (f"layer={self.layer_name!r}, cam={name}, mask={self.mask!r}, alpha={self.alpha}, "
                f"omega={self.omega}, detach_weights={self.detach_weights}")

    # Read back from ``terms`` (one source: a name passed in ``terms=`` overrides the
    # shorthand argument, and these report what is used).
    alpha = property(lambda self: self.terms["am"][1], doc="weight of L_am")
    omega = property(lambda self: self.terms["ext"][1], doc="weight of L_e")
    rrr_weight = property(lambda self: self.terms["rrr"][1], doc="weight of RRR")
    area_weight = property(lambda self: self.terms["area"][1], doc="weight of the area penalty")
    am_score = property(lambda self: self.terms["am"][0].settings.get("score", "auto"),
                        doc="score of L_am (the am term's setting)")
    fill = property(lambda self: float(self.terms["am"][0].settings.get("fill", 0.0)),
                    doc="value erased pixels move towards (the am term's setting)")

    @property
    def layer_name(self) -> str | None:
        """Dotted name of the watched layer; None until the first call chooses it."""
        return self._target.name

    # ------------------------------------------------------------------ StepContext

    def extra_logits(self, images: Tensor, erased: bool = True) -> Tensor:
        """Logits of altered images, BatchNorm frozen as ``freeze_bn`` says for
        erased images (``erased``) or composed pictures."""
        frozen = self.freeze_bn == "all" or (erased and self.freeze_bn == "erased")
        with frozen_batchnorm(self.model, frozen):
            return extract_logits(self.model(images))

    def class_maps(self, step: Step) -> Tensor:
        """(B, C, H, W) attention of every class of ``step``'s images (`maps.class_maps`)."""
        return class_maps(self._target, self.cam_method, step.features, step.logits,
                          tuple(step.images.shape[-2:]), step.create_graph)

    # ------------------------------------------------------------------ internals

    @property
    def _layer(self) -> nn.Module | None:
        return self._target.module

    def _check_targets(self, labels: Tensor, masks: Tensor | None, logits: Tensor) -> None:
        check_label_range(labels, logits)
        if masks is not None:
            check_mask_values(masks, logits.shape[1])

    def _active_terms(self, guidance: bool, has_masks: bool, training: bool,
                      kinds: frozenset[str] = frozenset()):
        """(name, term, weight) of the terms this step computes (a term that reads
        annotation kinds only when the batch has one of them)."""
        if not guidance:
            return []
        return [(name, term, w) for name, (term, w) in self.terms.items()
                if w > 0 and (has_masks or not term.masks) and (training or not term.input_grad)
                and (not term.kinds or bool(kinds & set(term.kinds)))]

    def _combine(self, step: Step, terms) -> GuideOutput:
        """``L_cl + sum weight * term``; every built-in term is reported (0 when off)."""
        loss_cls = classification_loss(step.logits, step.labels)
        zero = loss_cls.new_zeros(())
        losses = {"cls": loss_cls, **dict.fromkeys(BUILTIN_REPORTED, zero)}
        loss = loss_cls
        for name, term, weight in terms:
            value = term(step)
            losses[name] = value
            loss = loss + weight * value
        if self.check_finite:
            check_finite(loss, losses)
        return GuideOutput(loss=loss, logits=step.logits, losses=losses)

    def _closed_form_maps(self, feats: Tensor, logits: Tensor, pairs: Tensor, image_hw):
        return closed_form_maps(self._target, self.cam_method, feats, logits, pairs, image_hw)


def _unpack_annotations(annotations: Annotations, images: Tensor, labels: Tensor, guidance: bool,
                        terms) -> tuple[Annotations, Tensor | None]:
    """Check an `Annotations` batch against the images and the terms; return it with the
    (B, H, W) masks its masks and scribbles make (None without)."""
    if len(annotations) != images.shape[0]:
        raise AttnGuideError(f"annotations hold {len(annotations)} images but the batch has "
                             f"{images.shape[0]}; give one entry (None for nothing) per image")
    size = tuple(images.shape[-2:])
    num_classes = labels.shape[1] if labels.dim() == 2 else None
    annotations.check(size, num_classes)
    if guidance:
        check_kinds_used(annotations.kinds(), terms)
    return annotations, annotations.label_maps(size, images.device)
