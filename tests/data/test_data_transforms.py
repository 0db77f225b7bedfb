"""Joint transforms: image and mask move together, masks stay integer, 255 survives."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attnguide.data import IMAGENET_MEAN, IMAGENET_STD, joint_transform
from attnguide.data.transforms import apply_joint

HEIGHT, WIDTH = 60, 80
TOP, BOTTOM, LEFT, RIGHT = 10, 34, 4, 28  # a red square in the left part of the image


def square_scene() -> tuple[np.ndarray, np.ndarray]:
    """Grey (60, 80, 3) image with a red square; mask 1 inside, 255 on a 3 px band at its edge."""
    image = np.full((HEIGHT, WIDTH, 3), 128, dtype=np.uint8)
    image[TOP:BOTTOM, LEFT:RIGHT] = (230, 20, 20)
    mask = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    mask[TOP - 3 : BOTTOM + 3, LEFT - 3 : RIGHT + 3] = 255
    mask[TOP + 3 : BOTTOM - 3, LEFT + 3 : RIGHT - 3] = 1
    return image, mask


def denormalise(image: torch.Tensor) -> torch.Tensor:
    """(3, S, S) normalised -> (3, S, S) in 0..1."""
    mean, std = (
        torch.tensor(IMAGENET_MEAN)[:, None, None],
        torch.tensor(IMAGENET_STD)[:, None, None],
    )
    return image * std + mean


def test_random_crops_and_flips_keep_image_and_mask_aligned():
    image, mask = square_scene()
    transform = joint_transform(32, train=True)
    sides = set()
    for seed in range(30):
        torch.manual_seed(seed)
        out_image, out_mask = apply_joint(transform, image, mask)
        assert out_image.shape == (3, 32, 32) and out_image.dtype == torch.float32
        assert out_mask.shape == (32, 32) and out_mask.dtype == torch.int64
        assert set(out_mask.unique().tolist()) <= {0, 1, 255}
        red = denormalise(out_image)
        is_red = (red[0] > 0.6) & (red[1] < 0.35)
        assert is_red[out_mask == 1].all(), seed  # the object's pixels show the object
        assert not is_red[out_mask == 0].any(), seed  # background pixels do not
        if (out_mask == 1).any():
            columns = (out_mask == 1).nonzero()[:, 1].float()
            sides.add(bool(columns.mean() > 16))
    assert sides == {False, True}  # flips happen, and the mask follows


def test_ignore_band_survives_resizing():
    image, mask = square_scene()
    for train in (False, True):
        torch.manual_seed(0)
        _, out_mask = apply_joint(joint_transform(48, train=train), image, mask)
        assert (out_mask == 255).any() and (out_mask == 1).any()


def test_eval_transform_is_a_deterministic_resize():
    image, mask = square_scene()
    transform = joint_transform(40, train=False)
    first, first_mask = apply_joint(transform, image, mask)
    second, second_mask = apply_joint(transform, image, mask)
    assert torch.equal(first, second) and torch.equal(first_mask, second_mask)
    rows, cols = (first_mask == 1).nonzero().float().mean(0)
    assert rows == pytest.approx((TOP + BOTTOM) / 2 * 40 / HEIGHT, abs=1)
    assert cols == pytest.approx((LEFT + RIGHT) / 2 * 40 / WIDTH, abs=1)


def test_missing_mask_becomes_all_ignore_and_normalisation_centres_the_mean():
    mean_colour = np.round(np.array(IMAGENET_MEAN) * 255).astype(np.uint8)
    image = np.broadcast_to(mean_colour, (HEIGHT, WIDTH, 3)).copy()
    out_image, out_mask = apply_joint(joint_transform(16, train=True), image, None)
    assert (out_mask == 255).all() and out_mask.dtype == torch.int64
    assert out_image.abs().max() < 0.02
