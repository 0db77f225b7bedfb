"""The core: GuidedAttention, CAM methods, mask functions, losses, hooks and layer
resolution. Depends on torch and timm only; nothing else in attnguide is imported here."""

from __future__ import annotations

from attnguide.core.cams import CAM_METHODS
from attnguide.core.guide import (
    GuidedAttention,
    GuideOutput,
    extract_logits,
    normalize_maps,
    upsample_maps,
)
from attnguide.core.hooks import ActivationCapture, eval_mode, frozen_batchnorm
from attnguide.core.masks import MASKS, HardThreshold, SoftThreshold, hard_threshold, soft_threshold

__all__ = [
    "CAM_METHODS",
    "MASKS",
    "ActivationCapture",
    "GuideOutput",
    "GuidedAttention",
    "HardThreshold",
    "SoftThreshold",
    "eval_mode",
    "extract_logits",
    "frozen_batchnorm",
    "hard_threshold",
    "normalize_maps",
    "soft_threshold",
    "upsample_maps",
]
