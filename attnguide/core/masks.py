"""Mask functions T(A): attention in [0, 1] -> soft erasing mask in [0, 1].

A mask function maps normalised attention ``(P, H, W)`` to a mask of the same
shape; the erased image is ``I* = I - T(A) * (I - fill)`` (``fill=0`` gives the
paper's ``I - T(A) * I``). Pass a name, an instance (``SoftThreshold(0.4, 20)``)
or any callable to ``GuidedAttention(mask=...)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnguide.core.registry import Registry

MASKS = Registry("mask function")


class SoftThreshold:
    """The paper's ``T(A) = sigmoid(sharpness * (A - threshold))``.

    GAIN gives no numbers; ``threshold=0.5, sharpness=10`` are what the public
    ports use. (The paper names the sharpness omega, a name it also gives the
    weight of L_e; attnguide keeps the two apart.)
    """

    def __init__(self, threshold: float = 0.5, sharpness: float = 10.0) -> None:
        self.threshold = float(threshold)
        self.sharpness = float(sharpness)

    def __call__(self, attention: Tensor) -> Tensor:
        return torch.sigmoid(self.sharpness * (attention - self.threshold))

    def __repr__(self) -> str:
        return f"SoftThreshold(threshold={self.threshold}, sharpness={self.sharpness})"


class HardThreshold(SoftThreshold):
    """A binary mask ``A > threshold`` in the forward pass, with the gradient of
    the soft threshold in the backward pass (straight-through estimator)."""

    def __call__(self, attention: Tensor) -> Tensor:
        soft = super().__call__(attention)
        hard = (attention > self.threshold).to(soft.dtype)
        return hard + soft - soft.detach()

    def __repr__(self) -> str:
        return f"HardThreshold(threshold={self.threshold}, sharpness={self.sharpness})"


soft_threshold = MASKS.register("soft_threshold")(SoftThreshold)
hard_threshold = MASKS.register("hard_threshold")(HardThreshold)


def resolve_mask(mask):
    """A name or a class gives a default instance; any other callable is used as is."""
    if isinstance(mask, str):
        return MASKS.get(mask)()
    if isinstance(mask, type):
        return mask()
    return MASKS.get(mask)
