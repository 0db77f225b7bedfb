"""`GuidedAttention`: GAIN's two streams around any classifier.

One training step (``guide(images, labels, masks)``):

1. S_cl: ``logits = model(I)``; a hook keeps the target layer's output ``A``.
2. Attention of each (image, positive class) pair: ``d s_c / d A`` from
   ``torch.autograd.grad`` (with ``create_graph`` so the map is trainable end
   to end), a CAM method, bilinear upsampling, per-map min-max to [0, 1].
3. S_am: the erased images ``I* = I - T(A) * (I - fill)`` of *all* pairs go
   through the model in one batched forward (BatchNorm frozen by default).
4. ``L = L_cl + alpha * L_am (+ omega * L_e for pairs with a pixel mask)``.

Shapes: B images, C classes, K channels, P pairs, (h, w) the layer's grid,
(H, W) the input size.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnguide.constants import IGNORE
from attnguide.core.cams import CAM_METHODS
from attnguide.core.hooks import ActivationCapture, IsolatedBatchNorm, frozen_batchnorm
from attnguide.core.layers import (
    LAYOUTS,
    MIN_CELLS,
    auto_layer,
    detect_layout,
    probe_last_spatial_layer,
    resolve_layer,
    to_spatial,
)
from attnguide.core.losses import SCORES, area_loss, classification_loss, wide
from attnguide.core.masks import resolve_mask
from attnguide.core.terms import Step, Term, as_term, term_name
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


def extract_logits(output) -> Tensor:
    """The (B, C) logits in a model's output: a tensor, ``output["logits"]``,
    ``output.logits``, or the first item of a tuple."""
    logits = output
    if isinstance(output, Mapping):
        logits = output.get("logits")
    elif not isinstance(output, Tensor) and isinstance(getattr(output, "logits", None), Tensor):
        logits = output.logits
    elif isinstance(output, (tuple, list)) and output:
        logits = output[0]
    if not isinstance(logits, Tensor) or logits.dim() != 2:
        got = tuple(logits.shape) if isinstance(logits, Tensor) else type(output).__name__
        raise AttnGuideError(
            f"the model returned {got}, not logits (B, C): return a tensor, a dict with a "
            "'logits' entry, or a tuple whose first item is the logits"
        )
    return logits


def normalize_maps(maps: Tensor, eps: float = 1e-8) -> Tensor:
    """Min-max normalise each (h, w) map on its own to [0, 1]: (..., h, w) -> same.
    A constant map becomes 0 everywhere."""
    flat = maps.flatten(-2)
    lo = flat.min(dim=-1, keepdim=True).values
    hi = flat.max(dim=-1, keepdim=True).values
    return ((flat - lo) / (hi - lo).clamp_min(eps)).view_as(maps)


def upsample_maps(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of (..., h, w) maps to ``size``."""
    lead = maps.shape[:-2]
    out = F.interpolate(maps.reshape(-1, 1, *maps.shape[-2:]), size=size, mode="bilinear",
                        align_corners=False)
    return out.reshape(*lead, *size)


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
            ``"auto"`` (sigmoid for multi-hot labels, softmax for class indices).
        freeze_bn: BatchNorm in eval mode during the erased-image pass (the erased
            images are out of distribution; their statistics would pollute the
            running estimates).
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
            with ImageNet-normalised inputs that is the mean colour).
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
            ``"ext"``, ``"rrr"``, ``"area"``).
        layout: how to read the layer's output: ``"auto"``, ``"NCHW"``,
            ``"NHWC"``, ``"tokens"``, or a callable ``tensor -> (B, K, h, w)``.
        check_finite: raise ``FloatingPointError`` naming the term when the loss
            is NaN or infinite (costs one device sync per step).

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
        freeze_bn: bool = True,
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
        if not isinstance(model, nn.Module):
            raise AttnGuideError(f"model must be a torch.nn.Module, not {type(model).__name__}")
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            raise AttnGuideError(
                "wrap the bare model, then the GuidedAttention module: DDP(GuidedAttention(model)); "
                "DataParallel replicas would each fire the hook"
            )
        if am_score != "auto" and am_score not in SCORES:
            raise AttnGuideError(f"am_score must be 'auto' or one of {SCORES}, not {am_score!r}")
        if not (isinstance(layout, str) and layout in LAYOUTS) and not callable(layout):
            raise AttnGuideError(f"layout must be one of {LAYOUTS} or a callable, not {layout!r}")
        if max_pairs_per_image is not None and max_pairs_per_image < 1:
            raise AttnGuideError("max_pairs_per_image must be None or at least 1")
        for name, value in (("alpha", alpha), ("omega", omega), ("area_weight", area_weight),
                            ("rrr_weight", rrr_weight)):
            if value < 0:
                raise AttnGuideError(f"{name} must be >= 0, got {value}")
        self.model = model
        self.cam_method = CAM_METHODS.get(cam)
        self.mask = resolve_mask(mask)
        self.terms: dict[str, tuple[Term, float]] = {}
        weights = {"am": alpha, "ext": omega, "rrr": rrr_weight, "area": area_weight,
                   **(terms or {})}
        for spec, weight in weights.items():
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
                raise AttnGuideError(f"the weight of term {term_name(spec)!r} must be a number "
                                     f">= 0, got {weight!r}")
            self.terms[term_name(spec)] = (as_term(spec), float(weight))
        self.am_score = am_score
        self.freeze_bn = freeze_bn
        self.isolate_batchnorm = isolate_batchnorm
        self.max_pairs_per_image = max_pairs_per_image
        self.detach_weights = detach_weights
        self.fill = float(fill)
        self.layout = layout
        self.check_finite = check_finite
        self._auto_layer = layer == "auto"
        self._warned_coarse = False
        resolved = resolve_layer(model, layer)
        self.layer_name, layer_module = resolved if resolved else (None, None)
        self._set_layer(layer_module)
        self._layout_of: str | Callable | None = None if layout == "auto" else layout
        # The wrapper's state dict is the bare model's: keys without "model.".
        self.register_state_dict_post_hook(_strip_model_prefix)
        self.register_load_state_dict_pre_hook(_add_model_prefix)

    # ------------------------------------------------------------------ public API

    def forward(
        self,
        images: Tensor,
        labels: Tensor | None = None,
        masks: Tensor | None = None,
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
                without one. None: no image in the batch has one.
            guidance: False runs exactly a plain classification step (warm-up).

        Returns:
            GuideOutput; call ``out.loss.backward()``.
        """
        if labels is None:
            if masks is not None:
                raise AttnGuideError("masks were given without labels; pass labels too")
            return self.model(images)
        _check_images(images)
        if torch.is_inference_mode_enabled():
            raise AttnGuideError(
                "a guided step needs autograd: call it outside torch.inference_mode() (in "
                "Lightning, Trainer(inference_mode=False)), or call guide(images) for plain logits")
        labels = _check_labels(labels, images.shape[0])
        if masks is not None:
            _check_masks(masks, images)
        training = torch.is_grad_enabled()
        terms = self._active_terms(guidance, masks is not None, training)
        needs_cam = any(term.attention for _, term, _ in terms)
        if any(term.input_grad for _, term, _ in terms):
            images = images.detach().requires_grad_(True)  # our own leaf; the user's is untouched
        if not needs_cam:
            logits = extract_logits(self.model(images))
            _check_label_range(labels, logits)
            if masks is not None:
                _check_mask_values(masks, logits.shape[1])
            return self._combine(Step(self, images, labels, masks, logits), terms)

        self._ensure_layer(images)
        # Under torch.no_grad() (a validation loss, say) record a graph only from the
        # layer to the logits, which the CAM gradients need; nothing else is kept.
        create_graph = training and not self.detach_weights
        cap = ActivationCapture(self._layer, start_grad=not training)
        isolate = (IsolatedBatchNorm(self.model, cap) if self.isolate_batchnorm
                   else contextlib.nullcontext())
        with torch.set_grad_enabled(training), _double_backward_safe(create_graph), cap, isolate:
            logits = extract_logits(self.model(images))
        feats = self._captured(cap, images)
        _check_label_range(labels, logits)
        if masks is not None:
            _check_mask_values(masks, logits.shape[1])
        pairs = self._pairs(labels)  # (P, 2)
        size = tuple(images.shape[-2:])
        if len(pairs):
            raw = self._pair_maps(feats, logits, pairs, size, create_graph=create_graph)  # (P, h, w)
            with _full_precision(images):
                attention = normalize_maps(upsample_maps(raw, size))  # (P, H, W)
                soft = self.mask(attention)  # (P, H, W)
        else:  # no positive class anywhere: nothing to attend to
            attention = soft = images.new_zeros(0, *size, dtype=torch.float32)

        def class_maps(_images: Tensor) -> Tensor:
            return self._class_maps(feats, logits, size, create_graph)

        step = Step(self, images, labels, masks, logits, pairs, attention, soft, class_maps)
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
        _check_images(images)
        if torch.is_inference_mode_enabled():
            raise AttnGuideError("attention() needs autograd: call it outside torch.inference_mode()")
        self._ensure_layer(images)
        if create_graph:
            with torch.enable_grad(), _double_backward_safe(True), \
                    ActivationCapture(self._layer) as cap:
                logits = extract_logits(self.model(images))
        else:  # graph only from the layer to the logits
            with torch.no_grad(), ActivationCapture(self._layer, start_grad=True) as cap:
                logits = extract_logits(self.model(images))
        feats = self._captured(cap, images)
        B = images.shape[0]
        if classes is None:
            classes = logits.detach().argmax(dim=1)
        classes = _check_classes(classes, B, logits.shape[1])  # (B, K)
        K = classes.shape[1]
        pairs = torch.stack([torch.arange(B, device=classes.device).repeat_interleave(K),
                             classes.flatten()], dim=1)
        maps = None
        if not create_graph:
            maps = self._closed_form_maps(feats, logits, pairs, images.shape[-2:])
        if maps is None:
            maps = self._pair_maps(feats, logits, pairs, images.shape[-2:], create_graph)
        maps = maps.view(B, K, *maps.shape[-2:])
        with _full_precision(maps):
            if resize:
                maps = upsample_maps(maps, tuple(images.shape[-2:]))
            if normalize:
                maps = normalize_maps(maps)
        return maps if create_graph else maps.detach()

    def erase(self, images: Tensor, soft_masks: Tensor) -> Tensor:
        """``I* = I - T(A) * (I - fill)``: (P, 3, H, W), (P, H, W) -> (P, 3, H, W)."""
        return images - soft_masks.unsqueeze(1).to(images.dtype) * (images - self.fill)

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

    # Weights of the built-in terms, read from ``terms`` (one source: a name passed in
    # ``terms=`` overrides the shorthand argument, and these report what is used).
    alpha = property(lambda self: self.terms["am"][1], doc="weight of L_am")
    omega = property(lambda self: self.terms["ext"][1], doc="weight of L_e")
    rrr_weight = property(lambda self: self.terms["rrr"][1], doc="weight of RRR")
    area_weight = property(lambda self: self.terms["area"][1], doc="weight of the area penalty")

    # ------------------------------------------------------------------ internals

    @property
    def _layer(self) -> nn.Module | None:
        return self._layer_ref[0]

    def _set_layer(self, module: nn.Module | None) -> None:
        # A plain tuple, so the layer is not registered a second time as a submodule.
        self._layer_ref = (module,)

    def _ensure_layer(self, images: Tensor) -> None:
        if self._layer is None:
            found = auto_layer(self.model, tuple(images.shape[-2:])) if self._auto_layer else None
            self.layer_name, module = found or probe_last_spatial_layer(self.model, images)
            self._set_layer(module)

    def _active_terms(self, guidance: bool, has_masks: bool, training: bool):
        """(name, term, weight) of the terms this step computes."""
        if not guidance:
            return []
        return [(name, term, w) for name, (term, w) in self.terms.items()
                if w > 0 and (has_masks or not term.masks) and (training or not term.input_grad)]

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
        self._raise_if_not_finite(loss, losses)
        return GuideOutput(loss=loss, logits=step.logits, losses=losses)

    def _erased_logits(self, images: Tensor, pairs: Tensor, soft: Tensor) -> Tensor:
        """Logits of every pair's erased image, ``I* = I - T(A) (I - fill)``: one forward."""
        return self._extra_logits(_Erase.apply(images, pairs[:, 0], soft, self.fill))

    def _extra_logits(self, images: Tensor) -> Tensor:
        """Logits of altered (out-of-distribution) images: BatchNorm frozen if asked."""
        with frozen_batchnorm(self.model, self.freeze_bn):
            return extract_logits(self.model(images))

    def _class_maps(self, feats: Tensor, logits: Tensor, size, create_graph: bool) -> Tensor:
        """(B, C, H, W) attention of every class, each image's maps divided by their
        joint maximum: absent classes keep their (small) scale relative to present ones."""
        B, C = logits.shape
        pairs = torch.cartesian_prod(torch.arange(B, device=logits.device),
                                     torch.arange(C, device=logits.device))
        raw = self._pair_maps(feats, logits, pairs, size, create_graph=create_graph)
        with _full_precision(raw):
            maps = upsample_maps(wide(raw).view(B, C, *raw.shape[-2:]), size).clamp_min(0)
            top = maps.flatten(1).max(dim=1).values.clamp_min(1e-8)
            return maps / top[:, None, None, None]

    def _captured(self, cap: ActivationCapture, images: Tensor) -> Tensor:
        if cap.calls != 1:
            what = "was not called" if cap.calls == 0 else f"ran {cap.calls} times"
            raise AttnGuideError(
                f"layer {self.layer_name!r} {what} in one forward pass; pick a layer that runs "
                "exactly once (a distinct stage or block)"
            )
        if self._layout_of is None:
            self._layout_of = detect_layout(self.model, self.layer_name, cap.output)
        spatial = self._spatial(cap.output, images)
        if spatial.dim() != 4 or min(spatial.shape[2:]) < 2:
            raise AttnGuideError(
                f"layer {self.layer_name!r} gives a {tuple(spatial.shape[1:])} map: attention needs "
                "a spatial grid of at least 2x2; pick an earlier layer or use larger images"
            )
        if min(spatial.shape[2:]) < MIN_CELLS and not self._warned_coarse:
            self._warned_coarse = True
            h, w = spatial.shape[2:]
            warnings.warn(
                f"layer {self.layer_name!r} gives a {h}x{w} attention map for "
                f"{images.shape[-2]}x{images.shape[-1]} images: too coarse to follow objects; "
                "feed larger images (or drop down-scaled passes), or watch an earlier layer "
                "(layer='auto' picks the deepest stage with at least 7x7 cells)", stacklevel=4)
        return cap.output

    def _spatial(self, tensor: Tensor, images: Tensor) -> Tensor:
        return to_spatial(self.model, tensor, self._layout_of, tuple(images.shape[-2:]))

    def _pairs(self, labels: Tensor) -> Tensor:
        """(P, 2) (image, class) pairs of positive labels, ordered by image."""
        if labels.dim() == 1:
            return torch.stack([torch.arange(len(labels), device=labels.device), labels], dim=1)
        positive = labels >= 0.5
        cap = self.max_pairs_per_image
        if cap is not None and int(positive.sum(1).max()) > cap:
            noise = torch.rand(labels.shape, device=labels.device).masked_fill(~positive, -1.0)
            keep = torch.zeros_like(positive)
            keep.scatter_(1, noise.topk(cap, dim=1).indices, True)
            positive &= keep
        return positive.nonzero()

    def _pair_maps(self, feats: Tensor, logits: Tensor, pairs: Tensor, image_hw,
                   create_graph: bool) -> Tensor:
        """Raw maps (P, h, w) from autograd gradients.

        The gradient of ``sum_b s_{c_b}(b)`` w.r.t. the batch's activations gives
        each image its own ``d s_c / d A`` at once (images do not interact). An
        image with k positive classes needs k such calls: call j handles the
        j-th positive class of every image, so the number of calls is the largest
        number of positives in one image, never the number of pairs.
        """
        b, c = pairs[:, 0], pairs[:, 1]
        counts = torch.bincount(b, minlength=logits.shape[0])
        rank = torch.arange(len(pairs), device=b.device) - (counts.cumsum(0) - counts)[b]
        pieces, order = [], []
        for j in range(int(counts.max())):
            idx = (rank == j).nonzero().squeeze(1)
            grad_out = torch.zeros_like(logits)
            grad_out[b[idx], c[idx]] = 1.0
            (grad,) = torch.autograd.grad(logits, feats, grad_out, retain_graph=True,
                                          create_graph=create_graph, allow_unused=True)
            if grad is None:
                raise AttnGuideError(
                    f"the logits do not depend on layer {self.layer_name!r}; pick a layer on the "
                    "path from the input to the logits"
                )
            pieces.append(self._spatial_grad(grad, image_hw)[b[idx]])
            order.append(idx)
        grads = torch.cat(pieces)
        if len(pieces) > 1:
            grads = grads[torch.cat(order).argsort()]
        acts = self._spatial_grad(feats, image_hw)[b]  # (P, K, h, w)
        with _full_precision(acts):
            return self.cam_method(wide(acts), wide(grads))

    def _spatial_grad(self, tensor: Tensor, image_hw) -> Tensor:
        return to_spatial(self.model, tensor, self._layout_of, tuple(image_hw))

    def _closed_form_maps(self, feats: Tensor, logits: Tensor, pairs: Tensor, image_hw):
        """Maps with ``d s_c / d A = W_c / (h w)`` when the batch's logits equal
        ``GAP(A) W^T + b`` (layer -> global average pooling -> linear); else None."""
        fc = _linear_classifier(self.model)
        acts = wide(self._spatial_grad(feats, image_hw).detach())  # (B, K, h, w)
        if fc is None or fc.in_features != acts.shape[1] or fc.out_features != logits.shape[1]:
            return None
        weight = fc.weight.detach().to(acts.dtype)
        expected = acts.mean(dim=(2, 3)) @ weight.T
        if fc.bias is not None:
            expected = expected + fc.bias.detach().to(acts.dtype)
        got = logits.detach().to(acts.dtype)
        if not torch.allclose(expected, got, rtol=1e-4, atol=1e-4 * (1 + float(got.abs().max()))):
            return None
        b, c = pairs[:, 0], pairs[:, 1]
        h, w = acts.shape[2:]
        grads = (weight[c] / (h * w))[:, :, None, None].expand(-1, -1, h, w)  # (P, K, h, w)
        with _full_precision(acts):
            return self.cam_method(acts[b], grads)

    def _raise_if_not_finite(self, loss: Tensor, losses: dict[str, Tensor]) -> None:
        if self.check_finite and not bool(torch.isfinite(loss.detach())):
            bad = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in losses.items())
            raise FloatingPointError(
                f"the guided loss is not finite ({bad}): check the inputs for NaN/inf, lower the "
                "learning rate, or use bf16 instead of fp16 autocast"
            )


# ---------------------------------------------------------------------- helpers


class _Erase(torch.autograd.Function):
    """``I*_p = I_{b_p} - T_p (I_{b_p} - fill)`` for pairs p of images b_p.

    Saves only the batch of images (already saved by the first layer of the
    clean pass) and the soft masks (the sigmoid's own output), not the gathered
    (P, 3, H, W) copies a plain expression would keep until backward.
    """

    @staticmethod
    def forward(ctx, images: Tensor, index: Tensor, soft: Tensor, fill: float) -> Tensor:
        ctx.save_for_backward(images, index, soft)
        ctx.fill = fill
        src = images[index]
        return src - soft.unsqueeze(1).to(src.dtype) * (src - fill)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        images, index, soft = ctx.saved_tensors
        grad_images = grad_soft = None
        if ctx.needs_input_grad[2]:
            grad_soft = -(grad * (images[index] - ctx.fill)).sum(1).to(soft.dtype)
        if ctx.needs_input_grad[0]:
            keep = grad * (1 - soft.unsqueeze(1).to(grad.dtype))
            grad_images = torch.zeros_like(images).index_add_(0, index, keep.to(images.dtype))
        return grad_images, None, grad_soft, None


def _full_precision(like: Tensor):
    """Autocast off: CAM arithmetic stays in float32 under AMP (fp16 overflows)."""
    return torch.autocast(device_type=like.device.type, enabled=False)


def _double_backward_safe(enabled: bool):
    """Fused scaled-dot-product attention kernels have no double backward; the
    second-order CAM graph of a transformer needs the math kernel."""
    if not enabled:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.MATH])


def _linear_classifier(model: nn.Module) -> nn.Linear | None:
    get = getattr(model, "get_classifier", None)
    fc = get() if callable(get) else None
    if isinstance(fc, nn.Linear):
        return fc
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def _check_images(images) -> None:
    if not isinstance(images, Tensor) or images.dim() != 4 or not images.is_floating_point():
        got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise AttnGuideError(f"images must be a float tensor (B, 3, H, W), got {got}")


def _check_labels(labels, batch: int) -> Tensor:
    if not isinstance(labels, Tensor):
        raise AttnGuideError(f"labels must be a tensor, not {type(labels).__name__}")
    if labels.dim() not in (1, 2) or labels.shape[0] != batch:
        raise AttnGuideError(
            f"labels must be (B, C) multi-hot or (B,) class indices with B = {batch}, "
            f"got shape {tuple(labels.shape)}"
        )
    if labels.dim() == 1:
        if labels.is_floating_point() or labels.dtype == torch.bool:
            raise AttnGuideError(
                f"(B,) labels must be int64 class indices, got {labels.dtype}; for multi-label "
                "data pass (B, C) multi-hot floats"
            )
        return labels.long()
    labels = labels.float()
    if bool(((labels < 0) | (labels > 1)).any()):
        raise AttnGuideError("multi-hot labels must lie in [0, 1] (1 = class present)")
    return labels


def _check_label_range(labels: Tensor, logits: Tensor) -> None:
    n = logits.shape[1]
    if labels.dim() == 2 and labels.shape[1] != n:
        raise AttnGuideError(f"labels have {labels.shape[1]} classes but the model outputs {n} logits")
    if labels.dim() == 1 and bool(((labels < 0) | (labels >= n)).any()):
        raise AttnGuideError(f"class indices must lie in [0, {n - 1}] for a model with {n} logits")


def _check_masks(masks, images: Tensor) -> None:
    expected = (images.shape[0], *images.shape[2:])
    if not isinstance(masks, Tensor) or tuple(masks.shape) != expected:
        got = tuple(masks.shape) if isinstance(masks, Tensor) else type(masks).__name__
        raise AttnGuideError(
            f"masks must have shape (B, H, W) = {expected} to match the images, got {got}; "
            "resize masks with nearest-neighbour interpolation"
        )
    if masks.is_floating_point() or masks.dtype == torch.bool:
        raise AttnGuideError(f"masks must be integer label maps (int64), got {masks.dtype}")


def _check_mask_values(masks: Tensor, n_classes: int) -> None:
    bad = (masks < 0) | ((masks > n_classes) & (masks != IGNORE))
    if bool(bad.any()):
        raise AttnGuideError(
            f"mask values must be 0 (background), 1..{n_classes} (class c -> c + 1) or 255 "
            f"(ignore); found {int(masks[bad][0])}"
        )


def _check_classes(classes, batch: int, n_classes: int) -> Tensor:
    if not isinstance(classes, Tensor) or classes.is_floating_point():
        raise AttnGuideError("classes must be an int64 tensor (B,) or (B, K) of class indices")
    if classes.dim() == 1:
        classes = classes[:, None]
    if classes.dim() != 2 or classes.shape[0] != batch:
        raise AttnGuideError(f"classes must be (B,) or (B, K) with B = {batch}, got {tuple(classes.shape)}")
    if bool(((classes < 0) | (classes >= n_classes)).any()):
        raise AttnGuideError(f"class indices must lie in [0, {n_classes - 1}]")
    return classes.long()


def _strip_model_prefix(module, state_dict, prefix, local_metadata) -> None:
    inner = prefix + "model."
    for key in [k for k in state_dict if k.startswith(inner)]:
        state_dict[prefix + key[len(inner):]] = state_dict.pop(key)
    meta = getattr(state_dict, "_metadata", None)
    if meta is not None:
        for key in [k for k in meta if k.startswith(inner) or k == prefix + "model"]:
            meta[prefix + key[len(inner):] if key.startswith(inner) else prefix.rstrip(".")] = meta.pop(key)


def _add_model_prefix(module, state_dict, prefix, local_metadata, strict, missing, unexpected,
                      errors) -> None:
    inner = prefix + "model."
    for key in [k for k in state_dict if k.startswith(prefix) and not k.startswith(inner)]:
        state_dict[inner + key[len(prefix):]] = state_dict.pop(key)
