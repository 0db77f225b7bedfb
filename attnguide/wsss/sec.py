"""The three losses of SEC: Seed, Expand, Constrain (Kolesnikov & Lampert, ECCV 2016).

GAIN trains DeepLab-LargeFOV with them, its attention maps giving the
foreground cues. All three take the segmenter's logits at its own (stride 8)
resolution, ``logits (B, N, h, w)`` with ``N = C + 1`` channels, channel 0
background, and ``f = softmax(logits)`` over ``N``. Pure functions: the
caller sums them, ``L = L_seed + L_expand + L_constrain`` in SEC.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from attnguide.constants import IGNORE
from attnguide.errors import AttnGuideError
from attnguide.wsss.crf import CRFParams, CRFPool, dense_crf

__all__ = [
    "seeding_loss",
    "global_weighted_rank_pooling",
    "expansion_loss",
    "constrain_loss",
    "SEC_CRF_PARAMS",
]

_MIN_PROB = 1e-4  # SEC clips pooled probabilities here before the log

SEC_CRF_PARAMS = CRFParams.psa().downscaled(12)
"""SEC's CRF on 41x41 score maps: PSA/SEC kernels with both spatial stds divided by 12."""


def _check_logits(logits: torch.Tensor) -> None:
    if logits.ndim != 4 or logits.shape[1] < 2:
        raise AttnGuideError(
            f"logits must be (B, N, h, w) with N >= 2 (background + classes), "
            f"got {tuple(logits.shape)}"
        )


def seeding_loss(
    logits: torch.Tensor, cues: torch.Tensor, reduction: str = "class"
) -> torch.Tensor:
    """Cross-entropy on the localisation cues only.

    With ``S_c`` the pixels whose cue is class ``c`` (255 = no cue)::

        class (default):  L = mean over images of  mean_{c : S_c != {}}  -1/|S_c| sum_{u in S_c} log f_{u,c}
        pixel (SEC code): L = mean over images of  -1/|S| sum_c sum_{u in S_c} log f_{u,c},  S = union S_c

    ``class`` weighs a small object's cue as much as the large background
    cue; ``pixel`` is the normalisation of the SEC release. Images without
    any cue add nothing; a batch without cues gives 0 (still attached to the graph).

    Args:
        logits: ``(B, N, h, w)``.
        cues: ``(B, h, w)`` integer cue maps in ``0..N-1`` or 255 (e.g. :func:`seed_cues`
            resized to ``(h, w)`` with nearest interpolation).
        reduction: ``"class"`` or ``"pixel"``.

    Returns:
        Scalar tensor, ``>= 0``.
    """
    _check_logits(logits)
    batch, n, height, width = logits.shape
    cues = torch.as_tensor(cues, device=logits.device).long()
    if cues.shape != (batch, height, width):
        raise AttnGuideError(
            f"cues must be (B, h, w) = {(batch, height, width)} like the logits, got "
            f"{tuple(cues.shape)}; resize them with nearest interpolation"
        )
    if reduction not in ("class", "pixel"):
        raise AttnGuideError(
            f"seeding_loss reduction must be 'class' or 'pixel', got {reduction!r}"
        )
    valid = cues != IGNORE
    if ((cues < 0) | (cues >= n))[valid].any():
        raise AttnGuideError(f"cues hold values outside 0..{n - 1} and 255")
    onehot = F.one_hot(cues.where(valid, 0), n).permute(0, 3, 1, 2) * valid[:, None]  # (B, N, h, w)
    nll = -(F.log_softmax(logits, dim=1) * onehot).flatten(2).sum(2)  # (B, N)
    count = onehot.flatten(2).sum(2).to(nll.dtype)  # (B, N) cue pixels per class
    if reduction == "class":
        present = count > 0
        per_class = nll / count.clamp(min=1)
        n_present = present.sum(1)
        per_image = (per_class * present).sum(1) / n_present.clamp(min=1)
        has_cue = n_present > 0
    else:
        total = count.sum(1)
        per_image = nll.sum(1) / total.clamp(min=1)
        has_cue = total > 0
    if not has_cue.any():
        return logits.sum() * 0.0
    return per_image[has_cue].mean()


def global_weighted_rank_pooling(scores: torch.Tensor, decay: torch.Tensor | float) -> torch.Tensor:
    """GWRP: ``G = sum_j d^j s_(j) / sum_j d^j`` with ``s_(0) >= s_(1) >= ...`` the sorted scores.

    ``d = 0`` is global max pooling, ``d = 1`` global average pooling.

    Args:
        scores: ``(B, N, h, w)``.
        decay: a float or ``(B, N)`` tensor of per-map decays in [0, 1].

    Returns:
        ``(B, N)`` pooled scores.
    """
    batch, n = scores.shape[:2]
    ranked = scores.flatten(2).sort(dim=2, descending=True).values  # (B, N, h*w)
    decay = torch.as_tensor(decay, dtype=scores.dtype, device=scores.device).expand(batch, n)
    rank = torch.arange(ranked.shape[2], dtype=scores.dtype, device=scores.device)
    weights = decay[..., None] ** rank  # (B, N, h*w); 0 ** 0 = 1
    return (ranked * weights).sum(2) / weights.sum(2)


def expansion_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    d_fg: float = 0.996,
    d_bg: float = 0.999,
    d_absent: float = 0.0,
) -> torch.Tensor:
    """SEC's expand loss: image-level classification through GWRP of the softmax.

    With ``T`` the foreground classes present in the image, ``C'`` all of them,
    ``G_c(d)`` the GWRP of ``f_{:,c}`` with decay ``d``::

        L = -1/|T| sum_{c in T} log G_c(d_fg)
            -1/|C' \\ T| sum_{c in C' \\ T} log(1 - G_c(d_absent))
            -log G_bg(d_bg)

    averaged over the batch (a sum over an empty set is 0). SEC uses
    ``d_fg = 0.996``, ``d_bg = 0.999`` and ``d_absent = 0`` (max pooling: an
    absent class must be absent at every pixel). ``G`` is clipped to
    ``[1e-4, 1 - 1e-4]`` as in SEC.

    Args:
        logits: ``(B, N, h, w)``, channel 0 background.
        labels: ``(B, N - 1)`` image-level multi-hot foreground labels (no background column).

    Returns:
        Scalar tensor, ``>= 0``.
    """
    _check_logits(logits)
    batch, n = logits.shape[:2]
    labels = torch.as_tensor(labels, device=logits.device)
    if labels.shape != (batch, n - 1):
        raise AttnGuideError(
            f"labels must be (B, N - 1) = {(batch, n - 1)} multi-hot foreground labels, "
            f"got {tuple(labels.shape)}"
        )
    if not all(0.0 <= d <= 1.0 for d in (d_fg, d_bg, d_absent)):
        raise AttnGuideError(f"GWRP decays must be in [0, 1], got {d_fg}, {d_bg}, {d_absent}")
    present = labels.to(logits.dtype)  # (B, C)
    probs = F.softmax(logits, dim=1)
    fg_probs = probs[:, 1:]
    pooled_bg = global_weighted_rank_pooling(probs[:, :1], d_bg)[:, 0].clamp(
        _MIN_PROB, 1 - _MIN_PROB
    )
    pooled_present = global_weighted_rank_pooling(fg_probs, d_fg).clamp(_MIN_PROB, 1 - _MIN_PROB)
    pooled_absent = global_weighted_rank_pooling(fg_probs, d_absent).clamp(_MIN_PROB, 1 - _MIN_PROB)
    absent = 1.0 - present
    loss_present = -(present * pooled_present.log()).sum(1) / present.sum(1).clamp(min=1)
    loss_absent = -(absent * (1 - pooled_absent).log()).sum(1) / absent.sum(1).clamp(min=1)
    return (loss_present + loss_absent - pooled_bg.log()).mean()


def _to_uint8_hwc(images: torch.Tensor | np.ndarray, size: tuple[int, int]) -> list[np.ndarray]:
    """``uint8 (B, H, W, 3)`` images → list of ``uint8 (h, w, 3)`` resized (bilinear, antialiased)."""
    images = torch.as_tensor(images)
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise AttnGuideError(
            f"images must be uint8 (B, H, W, 3) RGB (the un-normalised input), got "
            f"{images.dtype} {tuple(images.shape)}"
        )
    resized = F.interpolate(
        images.permute(0, 3, 1, 2).float(),
        size=size,
        mode="bilinear",
        antialias=True,
        align_corners=False,
    )
    resized = resized.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    return [np.ascontiguousarray(image) for image in resized.cpu().numpy()]


def constrain_loss(
    logits: torch.Tensor,
    images: torch.Tensor | np.ndarray,
    params: CRFParams = SEC_CRF_PARAMS,
    pool: CRFPool | None = None,
) -> torch.Tensor:
    """SEC's constrain-to-boundary loss: KL from the CRF-refined output to the output.

    The images are resized to the logits' ``(h, w)``, ``Q = CRF(image, f)``
    (:func:`attnguide.wsss.crf.dense_crf`, computed on a detached copy, so it
    is a constant target) and::

        L = mean over images of  1/(h w) sum_u sum_c Q_{u,c} log(Q_{u,c} / f_{u,c})

    The gradient flows only through ``f``.

    Args:
        logits: ``(B, N, h, w)``.
        images: ``uint8 (B, H, W, 3)`` RGB input images (any ``H, W``).
        params: CRF settings for the ``(h, w)`` maps; SEC's by default.
        pool: a :class:`CRFPool` to spread the B CRFs over processes.

    Returns:
        Scalar tensor, ``>= 0``.
    """
    _check_logits(logits)
    batch, _, height, width = logits.shape
    small = _to_uint8_hwc(images, (height, width))
    if len(small) != batch:
        raise AttnGuideError(f"got {len(small)} images for {batch} logit maps")
    log_f = F.log_softmax(logits, dim=1)  # (B, N, h, w)
    probs = log_f.detach().exp().float().cpu().numpy()
    jobs = [(image, prob, params) for image, prob in zip(small, probs)]
    refined = (pool or CRFPool(0)).map(dense_crf, jobs)
    target = torch.as_tensor(np.stack(refined), dtype=logits.dtype, device=logits.device)
    kl = target * (target.clamp(min=1e-8).log() - log_f)  # (B, N, h, w)
    return kl.sum(1).mean()
