"""Joint image/mask/annotation transforms on torchvision.transforms.v2 tensors.

The image travels as a `tv_tensors.Image` (3, H, W) uint8 and the mask as a
`tv_tensors.Mask` (H, W) uint8, so one call applies the same geometry to both;
masks are resized with nearest neighbour and stay integer, 255 included. Boxes travel
as `tv_tensors.BoundingBoxes` (XYXY), clicks as `tv_tensors.KeyPoints` (as degenerate
boxes on a torchvision without them), scribbles and avoid regions as more `Mask`s:
the same call moves every one of them (`apply_sample`), no geometry is written by hand.
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from attnguide.constants import IGNORE, IMAGENET_MEAN, IMAGENET_STD

TRAIN_SCALE = (0.5, 1.0)
"""Fraction of the image area kept by the training crop."""
TRAIN_RATIO = (3 / 4, 4 / 3)
"""Aspect-ratio range of the training crop (kept near 1)."""


def joint_transform(image_size: int, train: bool) -> v2.Compose:
    """Transform `(Image, Mask)` pairs to a normalised (3, S, S) float image and an (S, S) mask.

    train=True: random resized crop (area `TRAIN_SCALE`, aspect `TRAIN_RATIO`)
    to S x S and a horizontal flip with probability 0.5. train=False: plain
    resize to S x S. Neither pads; any geometry added later must pad masks
    with 255 (`fill={tv_tensors.Mask: 255, "others": 0}`).
    """
    size = (image_size, image_size)
    if train:
        geometry = [
            v2.RandomResizedCrop(size, scale=TRAIN_SCALE, ratio=TRAIN_RATIO, antialias=True),
            v2.RandomHorizontalFlip(p=0.5),
        ]
    else:
        geometry = [v2.Resize(size, antialias=True)]
    return v2.Compose(
        [
            *geometry,
            v2.ToDtype(torch.float32, scale=True),  # images only; masks keep their dtype
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def apply_joint(
    transform: v2.Transform, image: np.ndarray, mask: np.ndarray | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run `transform` on an (H, W, 3) uint8 image and its (H, W) uint8 mask.

    A missing mask becomes all `IGNORE`, so it follows the same geometry.

    Returns:
        image (3, S, S) float32 and mask (S, S) int64, as plain tensors.
    """
    height, width = image.shape[:2]
    if mask is None:
        mask = np.full((height, width), IGNORE, dtype=np.uint8)
    image_t = tv_tensors.Image(torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1))
    mask_t = tv_tensors.Mask(torch.from_numpy(np.array(mask, copy=True)))
    image_out, mask_out = transform(image_t, mask_t)
    return image_out.as_subclass(torch.Tensor), mask_out.as_subclass(torch.Tensor).long()


HAS_KEYPOINTS = hasattr(tv_tensors, "KeyPoints")
"""Whether this torchvision moves clicks as `tv_tensors.KeyPoints` (else as boxes of size 0)."""


def apply_sample(
    transform: v2.Transform, image: np.ndarray, mask: np.ndarray | None,
    annotations: dict[str, np.ndarray] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """`apply_joint` with annotations moved by the same call.

    Args:
        annotations: any of ``boxes`` (N, 5) ``(class, x0, y0, x1, y1)``, ``points`` (N, 3)
            ``(class, x, y)`` (x, y: the clicked pixel's column and row), ``scribble`` (H, W)
            uint8 label map, ``avoid`` (H, W) bool, in pixels of ``image``.

    Returns:
        image (3, S, S) float32, mask (S, S) int64 and the annotations at the output size:
        ``boxes`` (N', 5) float32 without the boxes the crop removed, ``points`` (N', 3)
        float32 without the clicks outside it (each at its pixel's centre), ``scribble``
        (S, S) int64, ``avoid`` (S, S) bool.
    """
    annotations = annotations or {}
    height, width = image.shape[:2]
    if mask is None:
        mask = np.full((height, width), IGNORE, dtype=np.uint8)
    canvas = (height, width)
    inputs: dict[str, object] = {
        "image": tv_tensors.Image(torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1)),
        "mask": tv_tensors.Mask(torch.from_numpy(np.array(mask, copy=True))),
    }
    boxes = np.asarray(annotations.get("boxes", np.zeros((0, 5))), dtype=np.float32).reshape(-1, 5)
    points = np.asarray(annotations.get("points", np.zeros((0, 3))), dtype=np.float32).reshape(-1, 3)
    if "boxes" in annotations:
        inputs["boxes"] = tv_tensors.BoundingBoxes(torch.from_numpy(boxes[:, 1:].copy()),
                                                   format="XYXY", canvas_size=canvas)
    if "points" in annotations:
        centres = np.floor(points[:, 1:]) + 0.5  # the clicked pixel's centre
        if HAS_KEYPOINTS:
            inputs["points"] = tv_tensors.KeyPoints(torch.from_numpy(centres), canvas_size=canvas)
        else:  # a box of size 0 at the click
            inputs["points"] = tv_tensors.BoundingBoxes(
                torch.from_numpy(np.concatenate([centres, centres], 1)), format="XYXY",
                canvas_size=canvas, clamping_mode="none")
    for kind in ("scribble", "avoid"):
        if kind in annotations:
            inputs[kind] = tv_tensors.Mask(torch.from_numpy(
                np.asarray(annotations[kind]).astype(np.uint8)))
    out = transform(inputs)
    image_out = out["image"].as_subclass(torch.Tensor)
    size = tuple(image_out.shape[-2:])
    extra: dict[str, torch.Tensor] = {}
    if "boxes" in out:
        xyxy = out["boxes"].as_subclass(torch.Tensor).float()
        xyxy[:, 0::2] = xyxy[:, 0::2].clamp(0, size[1])  # rounding past the edge
        xyxy[:, 1::2] = xyxy[:, 1::2].clamp(0, size[0])
        keep = ((xyxy[:, 2] - xyxy[:, 0]) >= 0.5) & ((xyxy[:, 3] - xyxy[:, 1]) >= 0.5)
        classes = torch.from_numpy(boxes[:, :1]).float()
        extra["boxes"] = torch.cat([classes, xyxy], 1)[keep]
    if "points" in out:
        xy = out["points"].as_subclass(torch.Tensor).float().reshape(-1, 2 if HAS_KEYPOINTS else 4)[:, :2]
        keep = (xy[:, 0] >= 0) & (xy[:, 0] < size[1]) & (xy[:, 1] >= 0) & (xy[:, 1] < size[0])
        extra["points"] = torch.cat([torch.from_numpy(points[:, :1]).float(), xy], 1)[keep]
    if "scribble" in out:
        extra["scribble"] = out["scribble"].as_subclass(torch.Tensor).long()
    if "avoid" in out:
        extra["avoid"] = out["avoid"].as_subclass(torch.Tensor) > 0
    return image_out, out["mask"].as_subclass(torch.Tensor).long(), extra
