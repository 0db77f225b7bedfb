"""The weakly-supervised segmentation pipeline behind ``attnguide pseudo-label``,
``segment``, ``evaluate`` and ``predict``.

    classifier run ──pseudo_label──▶ label PNGs (+ CRF) ──segment──▶ segmenter run
                                                   ▲                      │
             data set split (GT masks) ──evaluate──┴──────── predict ◀────┘

Modules (loaded on first use, like :mod:`attnguide.seg`):
    pseudo_labels  CAMs of a trained classifier → pseudo-label PNGs, CRF, mIoU
    segmentation   train a segmenter (smp or DeepLab-LargeFOV) on label PNGs
    inference      a trained segmenter's masks and overlays for images or a split
    evaluate_cmd   mIoU of a prediction folder against a split or a GT folder
    crf_jobs       the CRF work sent to worker processes (imports no model code)

Example:
    >>> from attnguide.pipeline import PseudoLabelConfig, pseudo_label     # doctest: +SKIP
    >>> result = pseudo_label(PseudoLabelConfig(run="runs/ext", data="data/scenes",
    ...                                         out="pseudo/ext", crf=True))
    >>> result.metrics.miou, result.crf_metrics.miou
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "PseudoLabelConfig": "pseudo_labels",
    "PseudoLabelResult": "pseudo_labels",
    "pseudo_label": "pseudo_labels",
    "SegmentConfig": "segmentation",
    "SegmentResult": "segmentation",
    "SegmentTrainer": "segmentation",
    "segment": "segmentation",
    "Segmenter": "inference",
    "load_segmenter": "inference",
    "predict": "inference",
    "predict_logits": "inference",
    "evaluate_predictions": "evaluate_cmd",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'attnguide.pipeline' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
