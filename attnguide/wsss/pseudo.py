"""From class attention maps (CAMs) to pseudo labels and SEC localisation cues.

Pure functions on tensors; nothing here touches a model except
:func:`multiscale_cams`, which calls the ``cam_fn`` it is given.

Shapes: ``K`` is the number of classes present in the image (its
image-level labels), ``classes (K,)`` their 0-based foreground indices
(VOC aeroplane = 0). In label maps class ``k`` becomes ``k + 1`` and 0 is
background, 255 ignore.

Example:
    >>> import torch
    >>> cams = torch.tensor([[[0.9, 0.1]]])          # (K=1, H=1, W=2)
    >>> cams_to_labels(cams, torch.tensor([14]), background_rule("threshold:0.15"))
    array([[15,  0]], dtype=uint8)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from attnguide.constants import IGNORE
from attnguide.errors import AttnGuideError

__all__ = [
    "fuse_cams",
    "multiscale_cams",
    "multiscale_cams_batch",
    "BackgroundRule",
    "background_rule",
    "cams_to_labels",
    "restrict_to_boxes",
    "seed_cues",
]

_EPS = 1e-5  # added to each class max before dividing (IRN)

CamFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def fuse_cams(maps: Sequence[torch.Tensor], size: tuple[int, int] | None = None) -> torch.Tensor:
    """Sum raw CAMs from several scales / flips and normalise each class by its max.

    ``fused_k = S_k / (max S_k + 1e-5)`` with ``S_k = sum_i up(maps_i)_k``,
    ``up`` bilinear resizing to ``size`` (PSA / IRN convention). Flipped maps
    must already be flipped back by the caller (:func:`multiscale_cams` does).

    Args:
        maps: non-empty list of ``(K, h_i, w_i)`` non-negative maps, same ``K``.
        size: output ``(H, W)``; the size of ``maps[0]`` when None.

    Returns:
        ``(K, H, W)`` float32 in [0, 1]; a class whose maps are all zero stays zero.
    """
    if len(maps) == 0:
        raise AttnGuideError("fuse_cams needs at least one (K, h, w) map")
    first = maps[0]
    if first.ndim != 3:
        raise AttnGuideError(f"fuse_cams expects (K, h, w) maps, got shape {tuple(first.shape)}")
    size = tuple(size) if size is not None else tuple(first.shape[-2:])
    total = torch.zeros((first.shape[0], *size), dtype=torch.float32, device=first.device)
    for cam in maps:
        if cam.ndim != 3 or cam.shape[0] != first.shape[0]:
            raise AttnGuideError(
                f"fuse_cams maps must all be (K={first.shape[0]}, h, w), got {tuple(cam.shape)}"
            )
        if cam.numel() and cam.min() < 0:
            raise AttnGuideError("fuse_cams expects non-negative raw CAMs; apply ReLU first")
        cam = cam.detach().float()[None]  # (1, K, h, w)
        total += F.interpolate(cam, size=size, mode="bilinear", align_corners=False)[0]
    peak = total.flatten(1).amax(dim=1) if total.numel() else total.new_zeros(total.shape[0])
    return total / (peak[:, None, None] + _EPS)


def multiscale_cams(
    cam_fn: CamFn,
    image: torch.Tensor,
    classes: torch.Tensor,
    scales: Sequence[float] = (1.0, 0.5, 1.5, 2.0),
    flip: bool = True,
) -> torch.Tensor:
    """Multi-scale (+ horizontal flip) CAMs of one image, fused by :func:`fuse_cams`.

    At each scale ``s`` the image is resized (bilinear) to
    ``(round(s H), round(s W))``; with ``flip`` its mirror image goes in the
    same batch, so ``cam_fn`` runs once per scale. The mirrored maps are
    flipped back before fusion.

    ``cam_fn`` may need gradients (Grad-CAM does), so nothing here runs under
    ``torch.no_grad``; its outputs are detached.

    Args:
        cam_fn: ``cam_fn(batch (N, 3, h, w), classes (N, K)) -> (N, K, h', w')``
            raw non-negative maps, e.g. ``GuidedAttention.attention``.
        image: ``(3, H, W)`` float tensor, already normalised for the model.
        classes: ``(K,)`` int64 0-based class indices present in the image.
        scales: resize factors; the first one need not be 1.
        flip: also use the horizontally mirrored image.

    Returns:
        ``(K, H, W)`` float32 in [0, 1] (``K = 0`` gives an empty tensor).
    """
    if image.ndim != 3 or image.shape[0] != 3:
        raise AttnGuideError(f"image must be a (3, H, W) tensor, got {tuple(image.shape)}")
    return multiscale_cams_batch(cam_fn, image[None], [classes], scales, flip)[0]


def multiscale_cams_batch(
    cam_fn: CamFn,
    images: torch.Tensor,
    classes: Sequence[torch.Tensor],
    scales: Sequence[float] = (1.0, 0.5, 1.5, 2.0),
    flip: bool = True,
) -> list[torch.Tensor]:
    """:func:`multiscale_cams` of several images of one size, with one ``cam_fn`` call
    per scale for all of them (and their mirror images).

    Images may have different numbers of classes: each image's list is padded to the
    longest by repeating its first class, and the padded maps are dropped. The maps
    equal those of one image at a time when ``cam_fn`` treats the images of a batch
    independently (a model in eval mode); small images gain most (one forward and one
    backward per class rank for the batch instead of per image).

    Args:
        images: ``(B, 3, H, W)`` float tensor, already normalised for the model.
        classes: B ``(K_i,)`` int64 class-index tensors.

    Returns:
        B ``(K_i, H, W)`` float32 tensors in [0, 1] (``K_i = 0`` gives an empty tensor).
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise AttnGuideError(f"images must be a (B, 3, H, W) tensor, got {tuple(images.shape)}")
    if len(classes) != images.shape[0]:
        raise AttnGuideError(f"{images.shape[0]} images need {images.shape[0]} class lists, got {len(classes)}")
    classes = [torch.as_tensor(c, dtype=torch.int64, device=images.device) for c in classes]
    if any(c.ndim != 1 for c in classes):
        raise AttnGuideError(f"classes must be (K,) class indices, got shapes {[tuple(c.shape) for c in classes]}")
    if not scales or any(s <= 0 for s in scales):
        raise AttnGuideError(f"scales must be a non-empty list of positive factors, got {scales}")
    height, width = images.shape[-2:]
    result = [images.new_zeros((0, height, width), dtype=torch.float32) for _ in classes]
    keep = [i for i, c in enumerate(classes) if c.numel()]
    if not keep:
        return result
    k_max = max(classes[i].numel() for i in keep)
    padded = torch.stack([torch.cat([classes[i], classes[i][:1].expand(k_max - classes[i].numel())])
                          for i in keep])  # (B', k_max)
    n = len(keep)
    maps: list[list[torch.Tensor]] = [[] for _ in keep]
    for scale in scales:
        size = (max(1, round(scale * height)), max(1, round(scale * width)))
        scaled = F.interpolate(images[keep], size=size, mode="bilinear", align_corners=False)
        batch = torch.cat([scaled, scaled.flip(-1)]) if flip else scaled  # (N, 3, h, w)
        wanted = padded.repeat(batch.shape[0] // n, 1)  # (N, k_max)
        out = cam_fn(batch, wanted)  # (N, k_max, h', w')
        if out.ndim != 4 or out.shape[:2] != wanted.shape:
            raise AttnGuideError(
                f"cam_fn returned shape {tuple(out.shape)} for {batch.shape[0]} images and "
                f"{k_max} classes; it must return (N, K, h', w')"
            )
        out = out.detach()
        for j, i in enumerate(keep):
            k = classes[i].numel()
            maps[j].append(out[j, :k])
            if flip:
                maps[j].append(out[n + j, :k].flip(-1))
    for j, i in enumerate(keep):
        result[i] = fuse_cams(maps[j], size=(height, width))
    return result


@dataclass(frozen=True)
class BackgroundRule:
    """Background score from foreground CAMs ``(K, H, W)`` in [0, 1] → ``(H, W)``.

    ``threshold``: ``bg = t`` everywhere (IRN uses 0.15 to evaluate CAMs).
    ``power``: ``bg = (1 - max_k CAM_k)^p`` (PSA, p = 4 or 32).
    """

    kind: str
    value: float

    def __call__(self, cams: torch.Tensor) -> torch.Tensor:
        height, width = cams.shape[-2:]
        if self.kind == "threshold":
            return cams.new_full((height, width), self.value)
        peak = cams.amax(dim=0) if cams.shape[0] else cams.new_zeros((height, width))
        return (1.0 - peak).clamp(min=0.0) ** self.value


_RULE_HELP = (
    "use 'threshold:T' (background score T, 0 < T < 1; IRN uses 0.15) "
    "or 'power:P' (background = (1 - max CAM)^P, P > 0; PSA uses 4 or 32)"
)


def background_rule(spec: str | BackgroundRule) -> BackgroundRule:
    """Parse ``"threshold:0.15"`` or ``"power:4"`` into a :class:`BackgroundRule`."""
    if isinstance(spec, BackgroundRule):
        return spec
    if not isinstance(spec, str) or spec.count(":") != 1:
        raise AttnGuideError(f"bad background rule {spec!r}: {_RULE_HELP}")
    kind, _, text = spec.partition(":")
    kind = kind.strip().lower()
    try:
        value = float(text)
    except ValueError:
        raise AttnGuideError(
            f"bad background rule {spec!r}: {text!r} is not a number; {_RULE_HELP}"
        ) from None
    if kind == "threshold" and 0.0 < value < 1.0:
        return BackgroundRule("threshold", value)
    if kind == "power" and value > 0.0:
        return BackgroundRule("power", value)
    raise AttnGuideError(f"bad background rule {spec!r}: {_RULE_HELP}")


def _check_cams(cams: torch.Tensor | np.ndarray, classes) -> tuple[torch.Tensor, torch.Tensor]:
    cams = torch.as_tensor(cams).float()
    classes = torch.as_tensor(classes, dtype=torch.int64).reshape(-1)
    if cams.ndim != 3 or cams.shape[0] != classes.numel():
        raise AttnGuideError(
            f"cams must be (K, H, W) with K = len(classes) = {classes.numel()}, "
            f"got {tuple(cams.shape)}"
        )
    if classes.numel() and (classes.min() < 0 or classes.max() >= IGNORE - 1):
        raise AttnGuideError(
            f"classes must be 0-based foreground indices in 0..253, got {classes.tolist()}"
        )
    return cams, classes


def _to_label_values(index: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Map indices into ``[background, classes...]`` to label values ``[0, classes + 1]``."""
    lookup = torch.cat([classes.new_zeros(1), classes + 1])
    return lookup[index]


def cams_to_labels(
    cams: torch.Tensor | np.ndarray, classes, bg: str | BackgroundRule
) -> np.ndarray:
    """Pseudo label map: ``argmax`` over ``[bg(cams), cams_1, ..., cams_K]``.

    Background wins ties. Label of the winning CAM ``j`` is ``classes[j] + 1``.

    Args:
        cams: ``(K, H, W)`` normalised CAMs in [0, 1] (e.g. from :func:`multiscale_cams`).
        classes: ``(K,)`` 0-based class indices of the CAMs.
        bg: a :func:`background_rule` spec or rule.

    Returns:
        ``uint8 (H, W)`` label map (no 255).
    """
    cams, classes = _check_cams(cams, classes)
    rule = background_rule(bg)
    scores = torch.cat([rule(cams)[None], cams])  # (K + 1, H, W)
    return _to_label_values(scores.argmax(dim=0), classes).to(torch.uint8).numpy()


def restrict_to_boxes(cams: torch.Tensor | np.ndarray, inside: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Box-supervised pseudo labels: each class's CAM kept only inside its own boxes.

    The rule of box-supervised segmentation (BoxSup, Dai et al. ICCV 2015; Simple Does It,
    Khoreva et al. CVPR 2017): a pixel outside every box of a class is not that class. A
    class with boxes keeps its CAM inside them, divided by its maximum there (so its
    peak inside the box is 1 again); a class without any box (``inside[k]`` all False)
    keeps its CAM unchanged. Where every present class has boxes, a pixel outside all
    of them has no class score left, and either background rule labels it background.

    Args:
        cams: ``(K, H, W)`` normalised CAMs in [0, 1].
        inside: ``(K, H, W)`` bool, the pixels inside each class's boxes
            (:meth:`attnguide.core.annotations.Annotations.box_targets` rasterises them).

    Returns:
        ``(K, H, W)`` float32 CAMs in [0, 1].

    Example:
        >>> cams = torch.tensor([[[0.9, 0.5, 0.2]]])
        >>> restrict_to_boxes(cams, torch.tensor([[[False, True, True]]]))
        tensor([[[0.0000, 1.0000, 0.4000]]])
    """
    cams = torch.as_tensor(cams).float()
    inside = torch.as_tensor(inside, dtype=torch.bool)
    if inside.shape != cams.shape:
        raise AttnGuideError(f"inside must have the CAMs' shape {tuple(cams.shape)} (K, H, W), "
                             f"got {tuple(inside.shape)}")
    boxed = inside.flatten(1).any(1)  # (K,) classes that have a box
    kept = torch.where(inside, cams, torch.zeros_like(cams))
    peak = kept.flatten(1).amax(1).clamp(min=_EPS)[:, None, None]
    return torch.where(boxed[:, None, None], (kept / peak).clamp(max=1.0), cams)


def seed_cues(
    cams: torch.Tensor | np.ndarray,
    classes,
    fg_fraction: float = 0.2,
    bg_threshold: float = 0.05,
) -> np.ndarray:
    """SEC-style localisation cues: confident foreground and background, the rest 255.

    With ``n_k = cams_k / max cams_k`` (the class's own max):

    - foreground cue of class ``k`` where ``n_k > fg_fraction`` (GAIN / SEC:
      20% of the class max); where several classes qualify the largest
      ``n_k`` wins;
    - background cue where every ``n_k < bg_threshold`` (our default 0.05:
      GAIN took background cues from a saliency network, which attnguide
      does not ship);
    - 255 elsewhere (the seeding loss skips those pixels).

    Args:
        cams: ``(K, H, W)`` non-negative CAMs.
        classes: ``(K,)`` 0-based class indices.
        fg_fraction: foreground threshold as a fraction of each class max, in (0, 1).
        bg_threshold: background threshold on the normalised CAMs, in [0, fg_fraction].

    Returns:
        ``uint8 (H, W)`` cue map: 0 background, ``k + 1`` class ``k``, 255 no cue.
    """
    cams, classes = _check_cams(cams, classes)
    if not 0.0 < fg_fraction < 1.0:
        raise AttnGuideError(f"fg_fraction must be in (0, 1), got {fg_fraction}")
    if not 0.0 <= bg_threshold <= fg_fraction:
        raise AttnGuideError(
            f"bg_threshold must be in [0, fg_fraction={fg_fraction}], got {bg_threshold}"
        )
    height, width = cams.shape[-2:]
    if classes.numel() == 0:  # nothing but background in the image
        return np.zeros((height, width), dtype=np.uint8)
    cues = torch.full((height, width), IGNORE, dtype=torch.int64)
    peak = cams.flatten(1).amax(dim=1).clamp(min=_EPS)
    norm = cams / peak[:, None, None]  # (K, H, W) in [0, 1]
    best, index = norm.max(dim=0)
    cues[best < bg_threshold] = 0
    foreground = best > fg_fraction
    cues[foreground] = _to_label_values(index[foreground] + 1, classes)
    return cues.to(torch.uint8).numpy()
