"""Work sent to :class:`~attnguide.wsss.crf.CRFPool` worker processes.

Module-level functions (picklable under ``spawn``) that need numpy and
pydensecrf only: the CAMs are computed in the main process, the CRF and the
PNG writing happen in the workers.
"""

from __future__ import annotations

import os

import numpy as np

from attnguide.io.labels import save_label_png
from attnguide.wsss.crf import CRFParams, dense_crf


def refine_scores(image: np.ndarray, scores: np.ndarray, values: np.ndarray,
                  params: CRFParams, path: str | os.PathLike | None = None) -> np.ndarray:
    """Dense CRF on per-label scores, then argmax, then label values.

    Args:
        image: ``uint8 (H, W, 3)`` RGB.
        scores: ``float32 (L, H, W)`` scores, e.g. ``[bg, CAM_1, ..., CAM_K]`` or softmax.
        values: ``(L,)`` label value of each score channel (``[0, c_1 + 1, ...]``).
        params: CRF settings.
        path: where to write the refined map as a VOC-palette PNG (atomically), or None.

    Returns:
        ``uint8 (H, W)`` label map.
    """
    values = np.asarray(values, dtype=np.uint8)
    if scores.shape[0] == 1:  # one label: nothing to decide
        label = np.full(scores.shape[1:], values[0], dtype=np.uint8)
    else:
        q = dense_crf(image, scores, params)  # (L, H, W)
        label = values[q.argmax(axis=0)]
    if path is not None:
        save_label_png(path, label)
    return label
