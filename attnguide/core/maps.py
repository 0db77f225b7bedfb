"""Attention-map maths of a guided step: pairs, CAMs from gradients, resizing, erasing.

Third in the reading order of the core (checks -> capture -> maps -> terms):
given the captured layer output ``A`` and the logits, `pair_maps` computes one
raw map per (image, class) pair from ``d s_c / d A``, `closed_form_maps` does
the same without a backward when the head is GAP + linear, `class_maps` gives
every class of every image, and `erase_pairs` builds the erased images
``I* = I - T(A) (I - fill)`` that L_am scores.

Shapes: B images, C classes, K channels, P pairs, (h, w) the layer's grid,
(H, W) the input size.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnguide.core.capture import LayerTarget
from attnguide.core.losses import wide
from attnguide.errors import AttnGuideError

CamMethod = Callable[[Tensor, Tensor], Tensor]
"""``(activations (P, K, h, w), gradients (P, K, h, w)) -> (P, h, w)``."""


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


def full_precision(like: Tensor):
    """Autocast off: CAM arithmetic stays in float32 under AMP (fp16 overflows)."""
    return torch.autocast(device_type=like.device.type, enabled=False)


def double_backward_safe(enabled: bool):
    """Fused scaled-dot-product attention kernels have no double backward; the
    second-order CAM graph of a transformer needs the math kernel."""
    if not enabled:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.MATH])


def positive_pairs(labels: Tensor, max_pairs_per_image: int | None = None) -> Tensor:
    """(P, 2) (image, class) pairs of positive labels, ordered by image; with a cap,
    a random subset of at most ``max_pairs_per_image`` classes per image."""
    if labels.dim() == 1:
        return torch.stack([torch.arange(len(labels), device=labels.device), labels], dim=1)
    positive = labels >= 0.5
    cap = max_pairs_per_image
    if cap is not None and int(positive.sum(1).max()) > cap:
        noise = torch.rand(labels.shape, device=labels.device).masked_fill(~positive, -1.0)
        keep = torch.zeros_like(positive)
        keep.scatter_(1, noise.topk(cap, dim=1).indices, True)
        positive &= keep
    return positive.nonzero()


def pair_maps(target: LayerTarget, cam: CamMethod, feats: Tensor, logits: Tensor, pairs: Tensor,
              image_hw, create_graph: bool) -> Tensor:
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
                f"the logits do not depend on layer {target.name!r}; pick a layer on the "
                "path from the input to the logits"
            )
        pieces.append(target.spatial(grad, image_hw)[b[idx]])
        order.append(idx)
    grads = torch.cat(pieces)
    if len(pieces) > 1:
        grads = grads[torch.cat(order).argsort()]
    acts = target.spatial(feats, image_hw)[b]  # (P, K, h, w)
    with full_precision(acts):
        return cam(wide(acts), wide(grads))


def closed_form_maps(target: LayerTarget, cam: CamMethod, feats: Tensor, logits: Tensor,
                     pairs: Tensor, image_hw) -> Tensor | None:
    """Maps with ``d s_c / d A = W_c / (h w)`` when the batch's logits equal
    ``GAP(A) W^T + b`` (layer -> global average pooling -> linear); else None."""
    fc = linear_classifier(target.model)
    acts = wide(target.spatial(feats, image_hw).detach())  # (B, K, h, w)
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
    with full_precision(acts):
        return cam(acts[b], grads)


def class_maps(target: LayerTarget, cam: CamMethod, feats: Tensor, logits: Tensor, size,
               create_graph: bool) -> Tensor:
    """(B, C, H, W) attention of every class, each image's maps divided by their
    joint maximum: absent classes keep their (small) scale relative to present ones."""
    B, C = logits.shape
    pairs = torch.cartesian_prod(torch.arange(B, device=logits.device),
                                 torch.arange(C, device=logits.device))
    raw = pair_maps(target, cam, feats, logits, pairs, size, create_graph)
    with full_precision(raw):
        maps = upsample_maps(wide(raw).view(B, C, *raw.shape[-2:]), size).clamp_min(0)
        top = maps.flatten(1).max(dim=1).values.clamp_min(1e-8)
        return maps / top[:, None, None, None]


def linear_classifier(model: nn.Module) -> nn.Linear | None:
    """The model's last linear layer (timm's ``get_classifier()`` when it is one)."""
    get = getattr(model, "get_classifier", None)
    fc = get() if callable(get) else None
    if isinstance(fc, nn.Linear):
        return fc
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def erase(images: Tensor, soft_masks: Tensor, fill: float) -> Tensor:
    """``I* = I - T(A) * (I - fill)``: (P, 3, H, W), (P, H, W) -> (P, 3, H, W)."""
    return images - soft_masks.unsqueeze(1).to(images.dtype) * (images - fill)


def erase_pairs(images: Tensor, index: Tensor, soft: Tensor, fill: float) -> Tensor:
    """`erase` of the images ``images[index]`` (B, 3, H, W), (P,), (P, H, W) ->
    (P, 3, H, W), without keeping the gathered copies for backward (`Erase`)."""
    return Erase.apply(images, index, soft, fill)


class Erase(torch.autograd.Function):
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
