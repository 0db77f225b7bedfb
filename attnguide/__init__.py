"""attnguide: trainable attention for any timm classifier (GAIN, CVPR 2018),
and the pipeline that turns guided attention into segmentation."""

from __future__ import annotations

from attnguide.core import (
    CAM_METHODS,
    MASKS,
    ActivationCapture,
    GuidedAttention,
    GuideOutput,
    HardThreshold,
    SoftThreshold,
    eval_mode,
    extract_logits,
    frozen_batchnorm,
    hard_threshold,
    normalize_maps,
    soft_threshold,
    upsample_maps,
)
from attnguide.errors import AttnGuideError

__version__ = "0.1.0"

__all__ = [
    "CAM_METHODS",
    "MASKS",
    "ActivationCapture",
    "AttnGuideError",
    "GuideOutput",
    "GuidedAttention",
    "HardThreshold",
    "SoftThreshold",
    "eval_mode",
    "extract_logits",
    "frozen_batchnorm",
    "hard_threshold",
    "load_model",
    "normalize_maps",
    "soft_threshold",
    "upsample_maps",
]


def __getattr__(name: str):
    # load_model pulls in the training engine; import it only when asked for.
    if name == "load_model":
        from attnguide.models import load_model

        return load_model
    raise AttributeError(f"module 'attnguide' has no attribute {name!r}")
