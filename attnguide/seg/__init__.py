"""Weakly-supervised segmentation: CAMs → pseudo labels → dense CRF → segmenter → mIoU.

Submodules:
    labels_io  VOC palette PNG label maps, written atomically
    pseudo     multi-scale CAM fusion, background rules, pseudo labels, SEC cues
    crf        dense CRF (pydensecrf, optional: ``attnguide[crf]``) and a process pool
    evaluate   confusion matrix, IoU, mIoU, folder evaluation
    deeplab    DeepLab-LargeFOV and smp segmenters (smp optional: ``attnguide[seg]``)
    sec        SEC's seeding, expansion and constrain losses

Names are loaded on first use (PEP 562): ``import attnguide.seg`` loads no
submodule, and a CRF worker process imports only ``attnguide.seg.crf``.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "voc_palette": "labels_io",
    "save_label_png": "labels_io",
    "load_label_png": "labels_io",
    "save_overlay": "labels_io",
    "CRFParams": "crf",
    "dense_crf": "crf",
    "crf_from_labels": "crf",
    "CRFPool": "crf",
    "crf_throughput": "crf",
    "confusion_matrix": "evaluate",
    "iou_from_confusion": "evaluate",
    "ConfusionMatrix": "evaluate",
    "SegMetrics": "evaluate",
    "evaluate_folders": "evaluate",
    "fuse_cams": "pseudo",
    "multiscale_cams": "pseudo",
    "BackgroundRule": "pseudo",
    "background_rule": "pseudo",
    "cams_to_labels": "pseudo",
    "seed_cues": "pseudo",
    "DeepLabLargeFOV": "deeplab",
    "LoadReport": "deeplab",
    "load_vgg16_weights": "deeplab",
    "create_segmenter": "deeplab",
    "segmenter_names": "deeplab",
    "seeding_loss": "sec",
    "global_weighted_rank_pooling": "sec",
    "expansion_loss": "sec",
    "constrain_loss": "sec",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'attnguide.seg' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
