"""What each command does, as functions: ``train``, ``pseudo-label``, ``segment``,
``predict``, ``evaluate`` and the demo. The CLI (:mod:`attnguide.cli`) only parses
options and calls these.

    classifier run ──pseudo_label──▶ label PNGs (+ CRF) ──segment──▶ segmenter run
                                                   ▲                      │
             data set split (GT masks) ──evaluate──┴──────── predict ◀────┘

Modules (loaded on first use):
    training      train a guided classifier (the engine's Trainer with snapshot callbacks)
    pseudo_labels CAMs of a trained classifier → pseudo-label PNGs, CRF, mIoU
    segmentation  train a segmenter (smp or DeepLab-LargeFOV) on label PNGs
    prediction    a trained segmenter's masks and overlays for images or a split
    evaluate      mIoU of a prediction folder against a split or a GT folder
    demo          the built-in end-to-end demo

Example:
    >>> from attnguide.tasks import PseudoLabelConfig, pseudo_label     # doctest: +SKIP
    >>> result = pseudo_label(PseudoLabelConfig(run="runs/ext", data="data/scenes",
    ...                                         out="pseudo/ext", crf=True))
    >>> result.metrics.miou, result.crf_metrics.miou
"""

from __future__ import annotations

from attnguide._lazy import lazy_exports

_EXPORTS = {
    "PseudoLabelConfig": "pseudo_labels",
    "PseudoLabelResult": "pseudo_labels",
    "pseudo_label": "pseudo_labels",
    "SegmentConfig": "segmentation",
    "SegmentResult": "segmentation",
    "SegmentTrainer": "segmentation",
    "segment": "segmentation",
    "Segmenter": "prediction",
    "load_segmenter": "prediction",
    "predict": "prediction",
    "predict_logits": "prediction",
    "evaluate_predictions": "evaluate",
    "run_demo": "demo",
    "train": "training",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
