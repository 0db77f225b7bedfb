"""The core: GuidedAttention, CAM methods, mask functions, losses, hooks and layer
resolution. Depends on torch and timm only; nothing else in attnguide is imported here.

Reading order: `checks` (inputs) -> `capture` (the watched layer) -> `maps` (CAM
maths, erasing) -> `step` and `terms` (what is added to L_cl) -> `guide`
(`GuidedAttention`, which runs them in order)."""

from __future__ import annotations

from attnguide.core.cams import CAM_METHODS
from attnguide.core.checks import extract_logits
from attnguide.core.guide import GuidedAttention
from attnguide.core.hooks import ActivationCapture, eval_mode, frozen_batchnorm
from attnguide.core.maps import normalize_maps, upsample_maps
from attnguide.core.masks import MASKS, HardThreshold, SoftThreshold, hard_threshold, soft_threshold
from attnguide.core.step import GuideOutput, Step, StepContext
from attnguide.core.terms import TERMS, Term

__all__ = [
    "CAM_METHODS",
    "MASKS",
    "TERMS",
    "ActivationCapture",
    "GuideOutput",
    "GuidedAttention",
    "HardThreshold",
    "SoftThreshold",
    "Step",
    "StepContext",
    "Term",
    "eval_mode",
    "extract_logits",
    "frozen_batchnorm",
    "hard_threshold",
    "normalize_maps",
    "soft_threshold",
    "upsample_maps",
]
