"""Weakly-supervised segmentation algorithms: CAMs -> pseudo labels -> dense CRF,
SEC's losses, and mIoU. Pure functions and small classes; the commands that run
them on a data set live in :mod:`attnguide.tasks`.

Submodules:
    pseudo     multi-scale CAM fusion, background rules, pseudo labels (within boxes),
               SEC cues
    crf        dense CRF (pydensecrf, optional: ``attnguide[crf]``) and a process pool
    crf_jobs   the CRF work sent to worker processes (imports no model code)
    evaluate   confusion matrix, IoU, mIoU, folder evaluation
    sec        SEC's seeding, expansion and constrain losses

Names are loaded on first use (PEP 562): ``import attnguide.wsss`` loads no
submodule, and a CRF worker process imports only ``attnguide.wsss.crf``.
"""

from __future__ import annotations

from attnguide._lazy import lazy_exports

_EXPORTS = {
    "CRFParams": "crf",
    "dense_crf": "crf",
    "crf_from_labels": "crf",
    "CRFPool": "crf",
    "confusion_matrix": "evaluate",
    "iou_from_confusion": "evaluate",
    "ConfusionMatrix": "evaluate",
    "SegMetrics": "evaluate",
    "evaluate_folders": "evaluate",
    "fuse_cams": "pseudo",
    "multiscale_cams": "pseudo",
    "multiscale_cams_batch": "pseudo",
    "BackgroundRule": "pseudo",
    "background_rule": "pseudo",
    "cams_to_labels": "pseudo",
    "restrict_to_boxes": "pseudo",
    "seed_cues": "pseudo",
    "seeding_loss": "sec",
    "global_weighted_rank_pooling": "sec",
    "expansion_loss": "sec",
    "constrain_loss": "sec",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
