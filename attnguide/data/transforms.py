"""Joint image/mask transforms on torchvision.transforms.v2 tensors.

The image travels as a `tv_tensors.Image` (3, H, W) uint8 and the mask as a
`tv_tensors.Mask` (H, W) uint8, so one call applies the same geometry to both;
masks are resized with nearest neighbour and stay integer, 255 included.
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
