"""GAIN's losses as pure functions; `GuidedAttention` composes them.

Shapes: B images, C classes, P (image, class) pairs, H x W input size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from attnguide.constants import IGNORE

SCORES = ("sigmoid", "softmax", "logit")


def wide(t: Tensor) -> Tensor:
    """At least float32 (loss arithmetic never runs in half precision); float64 stays."""
    return t if t.dtype == torch.float64 else t.float()


def classification_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """L_cl: BCE with logits for multi-hot (B, C) float labels (the paper's
    multi-label soft margin), cross-entropy for (B,) int64 class indices."""
    logits = wide(logits)
    if labels.dim() == 2:
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
    return F.cross_entropy(logits, labels)


def class_scores(logits: Tensor, score: str) -> Tensor:
    """(P, C) logits -> (P, C) scores: sigmoid / softmax probabilities or raw logits."""
    logits = wide(logits)
    if score == "sigmoid":
        return torch.sigmoid(logits)
    if score == "softmax":
        return torch.softmax(logits, dim=1)
    return logits


def attention_mining_loss(erased_logits: Tensor, classes: Tensor, score: str) -> Tensor:
    """L_am = mean over pairs of s_c(I*_c): the score of the class whose region
    was erased, on the erased image. (P, C), (P,) -> scalar; 0 when P = 0."""
    if classes.numel() == 0:
        return wide(erased_logits.new_zeros(()))
    scores = class_scores(erased_logits, score)
    return scores.gather(1, classes[:, None]).mean()


def attention_ext_loss(attention: Tensor, masks: Tensor, classes: Tensor) -> Tensor:
    """L_e of GAIN_ext: mean squared error between the attention of class c and
    its binary mask ``H_c = (mask == c + 1)``, over pixels whose mask is not 255.

    attention (P, H, W) in [0, 1], masks (P, H, W) int64, classes (P,).
    Each pair's error is averaged over its valid pixels, then pairs are
    averaged; pairs whose mask is all 255 add nothing (0 when none has one).
    """
    attention = wide(attention)
    target = (masks == (classes[:, None, None] + 1)).to(attention.dtype)
    return _mean_over_valid((attention - target).pow(2), masks)


def all_class_ext_loss(attention: Tensor, masks: Tensor) -> Tensor:
    """L_e over every class: the attention of each class must match its own mask,
    so attention of *any* class outside its object (background included) is
    penalised, and absent classes must attend nowhere.

    attention (B, C, H, W) in [0, 1], masks (B, H, W) int64 (c + 1 = class c, 255
    ignore). Per image: squared errors summed over classes, averaged over valid
    pixels; images without a valid pixel add nothing (0 when none has one).
    """
    attention = wide(attention)
    values = torch.arange(1, attention.shape[1] + 1, device=masks.device)
    target = (masks[:, None] == values[None, :, None, None]).to(attention.dtype)
    return _mean_over_valid((attention - target).pow(2).sum(1), masks)


def background_invariance_loss(clean_logits: Tensor, object_logits: Tensor,
                               labels: Tensor) -> Tensor:
    """The prediction must come from the objects: on the image with its background
    erased the classifier must still be right (L_cl), and on the full image it must
    agree with that object-only prediction (a consistency term whose target is held
    constant), so a shortcut in the background cannot change the output.

    clean_logits, object_logits (N, C); labels (N, C) multi-hot or (N,) indices.
    """
    if clean_logits.shape[0] == 0:
        return wide(clean_logits.new_zeros(()))
    clean, obj = wide(clean_logits), wide(object_logits)
    if labels.dim() == 2:
        agree = F.binary_cross_entropy_with_logits(clean, torch.sigmoid(obj).detach())
        agree = agree - F.binary_cross_entropy_with_logits(obj.detach(), torch.sigmoid(obj).detach())
    else:
        target = F.log_softmax(obj, dim=1).detach()
        agree = F.kl_div(F.log_softmax(clean, dim=1), target, log_target=True, reduction="batchmean")
    return classification_loss(obj, labels) + agree


def null_background_loss(background_logits: Tensor, multilabel: bool) -> Tensor:
    """The background alone must name no class: with the objects painted over, every
    sigmoid score goes to 0 (multi-label), or the softmax to the uniform distribution
    (its cross-entropy to uniform, less log C, so 0 at the optimum).

    With a pooled linear head the background's features add the same amount to every
    class's logit once this holds, so a background that goes with a class in the
    training data cannot move the decision. background_logits (N, C); 0 when N = 0.
    """
    if background_logits.shape[0] == 0:
        return wide(background_logits.new_zeros(()))
    logits = wide(background_logits)
    if multilabel:
        return F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits))
    return -F.log_softmax(logits, dim=1).mean(1).mean() - math.log(logits.shape[1])


def _mean_over_valid(err: Tensor, masks: Tensor) -> Tensor:
    """(N, H, W) per-pixel errors -> mean over each map's non-255 pixels, then over the
    maps that have one (0 when none has)."""
    valid = masks != IGNORE
    n_valid = valid.flatten(1).sum(1)
    has_mask = n_valid > 0
    if not bool(has_mask.any()):
        return wide(err.new_zeros(()))
    per_map = (err * valid).flatten(1).sum(1)[has_mask] / n_valid[has_mask]
    return per_map.mean()


def area_loss(soft_masks: Tensor) -> Tensor:
    """Mean erased area: a penalty against attention spread over the whole image."""
    if soft_masks.numel() == 0:
        return wide(soft_masks.new_zeros(()))
    return wide(soft_masks).mean()


def input_gradient_loss(input_grads: Tensor, masks: Tensor) -> Tensor:
    """Right for the Right Reasons (Ross et al. 2017), in a scale-free form.

    ``input_grads`` (B, 3, H, W) are the gradients of the summed log-probabilities
    with respect to the input; ``masks`` (B, H, W) mark the pixels that must not
    matter as 0 (background). Per image, the loss is the share of the squared
    input gradient that falls on background pixels, in [0, 1]; images without a
    labelled pixel (all 255) add nothing. A share does not grow with the image size
    or the scale of the logits, so one weight fits all models and resolutions.
    """
    energy = wide(input_grads).pow(2).sum(dim=1)  # (B, H, W)
    labelled = (masks != IGNORE).flatten(1).any(dim=1)  # (B,)
    if not bool(labelled.any()):
        return energy.new_zeros(())
    outside = (energy * (masks == 0)).flatten(1).sum(dim=1)
    share = outside / energy.flatten(1).sum(dim=1).clamp_min(1e-30)
    return share[labelled].mean()
