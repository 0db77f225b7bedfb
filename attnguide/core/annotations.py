"""`Annotations`: what a user knows about where each image's classes are, per image,
mixed in a batch, and the pure losses that compare attention with it.

A batch of B images carries, for each image, nothing (``None`` or ``{}``) or a dict
with any of these kinds (coordinates in pixels of the batch's images, continuous: the
pixel in column x covers ``x <= u < x + 1``):

==============  ===========================================================================
``mask``        (H, W) int label map, VOC convention: 0 background, c + 1 class c, 255
                unlabelled. Feeds the terms that read ``step.masks`` (``ext``, ``rrr``, ...).
``scribble``    (H, W) int *sparse* label map, same values, 255 where nobody drew: the same
                terms read it as a mask whose unlabelled pixels are ignored (a sparse L_e).
``boxes``       (N, 5) ``(class, x0, y0, x1, y1)``, the class 0-based, ``x0 < x1``,
                ``y0 < y1``: ``energy``, ``box_l1``.
``points``      (N, 3) ``(class, x, y)``, one click on an object of the class: ``point``.
``avoid``       (N, 4) boxes ``(x0, y0, x1, y1)`` or an (H, W) *bool* mask (numbers are
                read as boxes): where no class may look (a watermark, a ruler): ``avoid``.
==============  ===========================================================================

Lists, tuples, numpy arrays and tensors are accepted; an image may carry several kinds
(boxes and an avoid region, say). ``Annotations`` turns them into dense targets at the
attention's resolution (``step.attention`` is (P, H, W) at the input size; targets at
another size are scaled): `label_maps`, `box_targets`, `point_targets`, `avoid_masks`.

Example:
    >>> ann = Annotations([
    ...     {"boxes": [(0, 4, 4, 20, 30)]},           # image 0: a box of class 0
    ...     None,                                     # image 1: nothing
    ...     {"points": [(2, 10.5, 7.5)], "avoid": [(0, 0, 8, 8)]},
    ... ])
    >>> out = guide(images, labels, ann)              # GuidedAttention(..., terms={"energy": 1})
    >>> inside, has = ann.box_targets(num_classes=3, size=(32, 32))  # (3, 3, 32, 32), (3, 3)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from attnguide.constants import IGNORE
from attnguide.errors import AttnGuideError

KINDS = ("mask", "scribble", "boxes", "points", "avoid")
"""The annotation kinds, in the order they are documented."""
LABEL_MAP_KINDS = ("mask", "scribble")
"""Kinds that become ``step.masks`` (the pixel-mask terms read them)."""


def _as_rows(value: Any, width: int, kind: str, image: int) -> Tensor:
    """(N, width) float64 rows of a boxes/points/avoid-boxes annotation."""
    rows = torch.as_tensor(value if not isinstance(value, Tensor) else value.detach().cpu(),
                           dtype=torch.float64)
    if rows.numel() == 0:
        return rows.reshape(0, width)
    if rows.dim() == 1 and rows.numel() == width:
        rows = rows[None]
    if rows.dim() != 2 or rows.shape[1] != width:
        what = {"boxes": "(class, x0, y0, x1, y1)", "points": "(class, x, y)",
                "avoid": "(x0, y0, x1, y1) or an (H, W) mask"}[kind]
        raise AttnGuideError(f"annotations of image {image}: {kind} must be rows of {what}, "
                             f"got shape {tuple(rows.shape)}")
    if not bool(torch.isfinite(rows).all()):
        raise AttnGuideError(f"annotations of image {image}: {kind} hold NaN or inf")
    return rows


def _check_boxes(xyxy: Tensor, kind: str, image: int, size: tuple[int, int] | None) -> None:
    bad = (xyxy[:, 2] <= xyxy[:, 0]) | (xyxy[:, 3] <= xyxy[:, 1])
    if bool(bad.any()):
        row = xyxy[int(bad.nonzero()[0])].tolist()
        raise AttnGuideError(f"annotations of image {image}: {kind} box {row} has x1 <= x0 or "
                             "y1 <= y0; give (x0, y0, x1, y1) with x0 < x1 and y0 < y1")
    if size is not None:
        h, w = size
        tol = 1e-3  # float rounding of a box at the edge
        out = ((xyxy[:, 0] < -tol) | (xyxy[:, 1] < -tol) | (xyxy[:, 2] > w + tol)
               | (xyxy[:, 3] > h + tol))
        if bool(out.any()):
            row = xyxy[int(out.nonzero()[0])].tolist()
            raise AttnGuideError(f"annotations of image {image}: {kind} box {row} lies outside "
                                 f"the {w}x{h} image; clip it to 0 <= x <= {w}, 0 <= y <= {h}")


class Annotations:
    """Per-image annotations of one batch (see the module doc for the kinds).

    Args:
        items: one entry per image: None / ``{}`` (no annotation) or a dict of kinds.
        size: (H, W) of the batch's images, to check coordinates now (optional; the
            guided step checks them against its images anyway).

    Attributes:
        items: the normalised entries: dicts of tensors (``boxes`` (N, 5), ``points``
            (N, 3), ``avoid`` (H, W) bool or (N, 4), ``mask``/``scribble`` (H, W) int64).
    """

    def __init__(self, items: Sequence[Mapping[str, Any] | None],
                 size: tuple[int, int] | None = None) -> None:
        if isinstance(items, (Mapping, Tensor)) or not isinstance(items, Iterable):
            raise AttnGuideError("Annotations takes a list with one entry per image (None or a "
                                 f"dict of {', '.join(KINDS)}), got {type(items).__name__}")
        self.items: list[dict[str, Tensor]] = [self._normalise(item, i) for i, item in enumerate(items)]
        if size is not None:
            self.check(size)

    @staticmethod
    def _normalise(item: Mapping[str, Any] | None, image: int) -> dict[str, Tensor]:
        if item is None:
            return {}
        if not isinstance(item, Mapping):
            raise AttnGuideError(f"annotations of image {image} must be None or a dict of "
                                 f"{', '.join(KINDS)}, got {type(item).__name__}")
        unknown = sorted(set(item) - set(KINDS))
        if unknown:
            raise AttnGuideError(f"annotations of image {image}: unknown kind {unknown[0]!r}; "
                                 f"the kinds are {', '.join(KINDS)}")
        out: dict[str, Tensor] = {}
        for kind, value in item.items():
            if value is None:
                continue
            if kind in LABEL_MAP_KINDS:
                t = torch.as_tensor(value).long()
                if t.dim() != 2:
                    raise AttnGuideError(f"annotations of image {image}: {kind} must be an (H, W) "
                                         f"label map, got shape {tuple(t.shape)}")
            elif kind == "avoid" and torch.as_tensor(value).dtype == torch.bool:
                t = torch.as_tensor(value)  # a mask; numbers are boxes
                if t.dim() != 2:
                    raise AttnGuideError(f"annotations of image {image}: an avoid mask must be "
                                         f"(H, W) bool, got shape {tuple(t.shape)}")
            else:
                width = {"boxes": 5, "points": 3, "avoid": 4}[kind]
                t = _as_rows(value, width, kind, image)
                if kind == "boxes":
                    _check_classes(t[:, 0], kind, image)
                    _check_boxes(t[:, 1:], kind, image, None)
                elif kind == "points":
                    _check_classes(t[:, 0], kind, image)
                else:
                    _check_boxes(t, kind, image, None)
                if len(t) == 0:
                    continue
            out[kind] = t
        return out

    # ------------------------------------------------------------------ batch API

    @classmethod
    def collate(cls, items: Sequence[Mapping[str, Any] | None]) -> Annotations:
        """The batch of a list of per-image dicts (a DataLoader's ``collate_fn`` helper)."""
        return cls(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return self.items[index]

    def __repr__(self) -> str:
        counts = {k: sum(k in item for item in self.items) for k in KINDS}
        said = ", ".join(f"{n} {k}" for k, n in counts.items() if n)
        return f"Annotations({len(self)} images: {said or 'none annotated'})"

    def kinds(self) -> frozenset[str]:
        """The kinds some image of the batch carries."""
        return frozenset(k for item in self.items for k in item)

    def has(self, kind: str) -> Tensor:
        """(B,) bool: which images carry ``kind``."""
        return torch.tensor([kind in item for item in self.items], dtype=torch.bool)

    def only(self, kinds: Iterable[str]) -> Annotations:
        """A copy keeping these kinds (what ``--annotations`` chooses)."""
        keep = set(kinds)
        return Annotations([{k: v for k, v in item.items() if k in keep} for item in self.items])

    def select(self, index: Sequence[int] | Tensor) -> Annotations:
        """The annotations of images ``index`` (in that order)."""
        index = index.tolist() if isinstance(index, Tensor) else list(index)
        return Annotations([self.items[i] for i in index])

    def check(self, size: tuple[int, int], num_classes: int | None = None) -> None:
        """Raise when a coordinate lies outside the (H, W) images, a label map has another
        size, or a class index is not below ``num_classes``."""
        h, w = size
        for i, item in enumerate(self.items):
            for kind, t in item.items():
                if t.dim() == 2 and (kind in LABEL_MAP_KINDS or t.dtype == torch.bool):
                    if tuple(t.shape) != (h, w):
                        raise AttnGuideError(f"annotations of image {i}: the {kind} map is "
                                             f"{t.shape[1]}x{t.shape[0]} (WxH) but the images are "
                                             f"{w}x{h}; give it the images' size")
                    continue
                if kind == "boxes":
                    _check_boxes(t[:, 1:], kind, i, (h, w))
                elif kind == "avoid":
                    _check_boxes(t, kind, i, (h, w))
                elif kind == "points":
                    out = (t[:, 1] < 0) | (t[:, 1] >= w) | (t[:, 2] < 0) | (t[:, 2] >= h)
                    if bool(out.any()):
                        row = t[int(out.nonzero()[0])].tolist()
                        raise AttnGuideError(f"annotations of image {i}: point {row} lies outside "
                                             f"the {w}x{h} image (0 <= x < {w}, 0 <= y < {h})")
                if num_classes is not None and kind in ("boxes", "points"):
                    big = t[:, 0] >= num_classes
                    if bool(big.any()):
                        raise AttnGuideError(f"annotations of image {i}: {kind} name class "
                                             f"{int(t[int(big.nonzero()[0]), 0])}, but the model "
                                             f"has {num_classes} classes (0..{num_classes - 1})")

    # ------------------------------------------------------------------ dense targets

    def label_maps(self, size: tuple[int, int], device: torch.device | str | None = None,
                   ) -> Tensor | None:
        """(B, H, W) int64 masks for the pixel-mask terms: each image's ``mask``, where it
        is 255 its ``scribble``, 255 elsewhere; None when no image has either."""
        if not self.kinds() & set(LABEL_MAP_KINDS):
            return None
        out = torch.full((len(self), *size), IGNORE, dtype=torch.int64)
        for i, item in enumerate(self.items):
            for kind in ("scribble", "mask"):  # the mask is written last: it wins
                if kind in item:
                    m = item[kind]
                    if tuple(m.shape) != tuple(size):
                        raise AttnGuideError(f"annotations of image {i}: the {kind} map is "
                                             f"{tuple(m.shape)} but the images are {tuple(size)}")
                    out[i] = torch.where(m != IGNORE, m, out[i])
        return out.to(device) if device is not None else out

    def box_targets(self, num_classes: int, size: tuple[int, int],
                    image_size: tuple[int, int] | None = None,
                    device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
        """``(inside (B, C, H, W) bool, has (B, C) bool)``: the pixels inside the boxes of
        each class, at resolution ``size`` (coordinates scaled from ``image_size``, default
        ``size``); ``has[b, c]``: image b has a box of class c."""
        inside = torch.zeros(len(self), num_classes, *size, dtype=torch.bool)
        for i, item in enumerate(self.items):
            for cls, *xyxy in item.get("boxes", torch.zeros(0, 5)).tolist():
                inside[i, int(cls)] |= box_raster(xyxy, size, image_size)
        has = inside.flatten(2).any(2)
        return _to(inside, device), _to(has, device)

    def point_targets(self, num_classes: int, size: tuple[int, int], sigma: float,
                      image_size: tuple[int, int] | None = None,
                      device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
        """``(heat (B, C, H, W) float32, has (B, C) bool)``: for each class a Gaussian of
        standard deviation ``sigma`` (pixels of ``size``) around each of its clicks, the
        maximum where they overlap (1 at a click)."""
        heat = torch.zeros(len(self), num_classes, *size, dtype=torch.float32)
        has = torch.zeros(len(self), num_classes, dtype=torch.bool)
        sy, sx = _scale(size, image_size)
        ys = torch.arange(size[0], dtype=torch.float32) + 0.5
        xs = torch.arange(size[1], dtype=torch.float32) + 0.5
        for i, item in enumerate(self.items):
            for cls, x, y in item.get("points", torch.zeros(0, 3)).tolist():
                # the click's pixel centre, at the target's resolution
                cx, cy = (math.floor(x) + 0.5) * sx, (math.floor(y) + 0.5) * sy
                g = torch.exp(-((ys[:, None] - cy) ** 2 + (xs[None, :] - cx) ** 2) / (2 * sigma**2))
                heat[i, int(cls)] = torch.maximum(heat[i, int(cls)], g / g.max())
                has[i, int(cls)] = True
        return _to(heat, device), _to(has, device)

    def avoid_masks(self, size: tuple[int, int], image_size: tuple[int, int] | None = None,
                    device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
        """``(region (B, H, W) bool, has (B,) bool)``: where no class may look."""
        region = torch.zeros(len(self), *size, dtype=torch.bool)
        for i, item in enumerate(self.items):
            t = item.get("avoid")
            if t is None:
                continue
            if t.dtype == torch.bool:
                if tuple(t.shape) != tuple(size):  # nearest resize to the target's grid
                    t = torch.nn.functional.interpolate(t[None, None].float(), size=size,
                                                        mode="nearest")[0, 0] > 0
                region[i] = t
            else:
                for xyxy in t.tolist():
                    region[i] |= box_raster(xyxy, size, image_size)
        has = region.flatten(1).any(1)
        return _to(region, device), _to(has, device)


def _check_classes(classes: Tensor, kind: str, image: int) -> None:
    bad = (classes < 0) | (classes != classes.round())
    if bool(bad.any()):
        raise AttnGuideError(f"annotations of image {image}: {kind} class "
                             f"{float(classes[int(bad.nonzero()[0])])} is not an index >= 0")


def _scale(size: tuple[int, int], image_size: tuple[int, int] | None) -> tuple[float, float]:
    if image_size is None:
        return 1.0, 1.0
    return size[0] / image_size[0], size[1] / image_size[1]


def box_raster(xyxy: Sequence[float], size: tuple[int, int],
                image_size: tuple[int, int] | None) -> Tensor:
    """(H, W) bool: pixels whose centre lies in the box; a box thinner than a pixel keeps
    the pixel holding its centre, so no box vanishes at a coarse resolution."""
    sy, sx = _scale(size, image_size)
    x0, y0, x1, y1 = xyxy[0] * sx, xyxy[1] * sy, xyxy[2] * sx, xyxy[3] * sy
    h, w = size

    def span(a: float, b: float, n: int) -> tuple[int, int]:
        lo, hi = math.ceil(a - 0.5), math.ceil(b - 0.5)  # centres k + 0.5 in [a, b)
        if hi <= lo:
            lo = min(max(int(math.floor((a + b) / 2)), 0), n - 1)
            hi = lo + 1
        return max(lo, 0), min(hi, n)

    (r0, r1), (c0, c1) = span(y0, y1, h), span(x0, x1, w)
    out = torch.zeros(size, dtype=torch.bool)
    out[r0:r1, c0:c1] = True
    return out


def _to(t: Tensor, device: torch.device | str | None) -> Tensor:
    return t if device is None else t.to(device)


# ---------------------------------------------------------------------- pure losses
# attention (P, H, W) in [0, 1] of each (image, class) pair; the targets of the same pairs.


def energy_loss(attention: Tensor, inside: Tensor, eps: float = 1e-8) -> Tensor:
    """Energy loss of Rao, Böhle et al., "Studying How to Efficiently and Effectively Guide
    Models with Explanations" (ICCV 2023): ``1 - sum_{p in box} A_p / sum_p A_p``, the share of
    the class's (positive) attention that falls outside its boxes, averaged over pairs.

    attention (P, H, W) >= 0, inside (P, H, W) bool; 0 when P = 0. A map of zeros counts as
    all outside (loss 1), so a class cannot escape the loss by attending nowhere.
    """
    if attention.shape[0] == 0:
        return attention.new_zeros(()).float()
    a = attention.float().clamp_min(0).flatten(1)
    inner = (a * inside.flatten(1)).sum(1)
    return (1 - inner / (a.sum(1) + eps)).mean()


def outside_l1_loss(attention: Tensor, inside: Tensor) -> Tensor:
    """The L1 localisation loss of Rao, Böhle et al. (ICCV 2023): the mean absolute attention
    outside the class's boxes, ``sum_{p not in box} |A_p| / (H W)``, averaged over pairs
    (attention normalised to [0, 1] per map, as in the paper). 0 when P = 0."""
    if attention.shape[0] == 0:
        return attention.new_zeros(()).float()
    a = attention.float().abs()
    return (a * (~inside)).flatten(1).mean(1).mean()


def point_loss(attention: Tensor, heat: Tensor, eps: float = 1e-6) -> Tensor:
    """Point supervision after Bearman et al., "What's the Point: Semantic Segmentation with
    Point Supervision" (ECCV 2016): their loss is the cross-entropy of the clicked pixel's
    class; on an attention map in [0, 1] that is ``-log A`` at the click. Here it is spread
    over the click's Gaussian ``G`` (its weight): ``-sum_p G_p log A_p / sum_p G_p``, so the
    attention peak must sit near the click; nothing is said about the other pixels (a click
    does not tell the object's extent). attention, heat (P, H, W); 0 when P = 0."""
    if attention.shape[0] == 0:
        return attention.new_zeros(()).float()
    a = attention.float().clamp(eps, 1.0).flatten(1)
    g = heat.float().flatten(1)
    return (-(g * a.log()).sum(1) / g.sum(1).clamp_min(eps)).mean()


def avoid_loss(attention: Tensor, region: Tensor, eps: float = 1e-8) -> Tensor:
    """The share of attention inside the avoid region, averaged over maps: "do not look
    here", the attention form of the "Right for the Right Reasons" penalty (Ross et al.,
    IJCAI 2017). attention (N, H, W) >= 0 (one map per image and class), region (N, H, W)
    bool; 0 when N = 0."""
    if attention.shape[0] == 0:
        return attention.new_zeros(()).float()
    a = attention.float().clamp_min(0).flatten(1)
    return ((a * region.flatten(1)).sum(1) / (a.sum(1) + eps)).mean()
