"""Models: timm classifiers (factory, local weights, trained runs) and segmenters
(smp and DeepLab-LargeFOV behind one registry; smp is optional: ``attnguide[seg]``)."""

from __future__ import annotations

from attnguide.models.classifiers import (
    LoadReport,
    TrainedModel,
    create_model,
    load_model,
    load_weights,
    read_state_dict,
)

__all__ = ["LoadReport", "TrainedModel", "create_model", "load_model", "load_weights",
           "read_state_dict"]
