"""``attnguide segment``: train a segmenter on pseudo labels (or on the ground truth).

What one run does is :class:`attnguide.engine.segmenter.SegmentTrainer`'s (the
pseudo-label and SEC modes, the DeepLab optimisation, evaluation, resume); the
training sets are :mod:`attnguide.data.segmentation`'s: each training image and its
label map (``labels/<name>.png`` written by ``attnguide pseudo-label``, or the data
set's masks with ``labels="gt"``, the upper bound) get the same random geometry
(torchvision.transforms.v2 on an ``Image`` and a ``Mask``): scale by a factor drawn
from ``scale_range`` (bilinear / nearest), random ``crop_size`` crop padded with the
mean colour and label 255, horizontal flip.

The run folder holds ``segment.yaml`` (the resolved options), ``metrics.jsonl``,
``last.pt`` and ``best.pt``; a folder that already holds a run is refused unless
``resume`` or ``overwrite`` is given. Under ``torchrun`` the global batch is split
over processes (DistributedDataParallel, the engine's process-group set-up).
"""

from __future__ import annotations

from attnguide.data.segmentation import SegmentationSet, cams_folder  # noqa: F401 - re-exported
from attnguide.engine.progress import Reporter
from attnguide.engine.segment_config import (  # noqa: F401 - re-exported
    DEEPLAB,
    MODES,
    SEC_PARTS,
    SegmentConfig,
    config_from_options,
)
from attnguide.engine.segmenter import (  # noqa: F401 - re-exported
    CueSet,
    SegmentResult,
    SegmentTrainer,
    evaluate_segmenter,
    lr_factor,
    to_uint8_images,
)


def segment(cfg: SegmentConfig, reporter: Reporter | None = None) -> SegmentResult:
    """Train a segmenter as ``cfg`` says; see :class:`SegmentConfig`.

    Example:
        >>> res = segment(SegmentConfig(data="data/scenes", labels="pseudo/ext", arch="unet",  # doctest: +SKIP
        ...                             encoder="resnet18", crop_size=96, epochs=20, out="runs/seg"))
        >>> res.history[-1]["val_miou"]
    """
    return SegmentTrainer(cfg, reporter).fit()
