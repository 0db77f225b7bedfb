"""Models: timm classifiers and segmenters.

- :mod:`~attnguide.models.classifiers`: :func:`create_model` (any timm model, local or hub weights)
- :mod:`~attnguide.models.weights`: :func:`read_state_dict`, :func:`load_weights` (one loader,
  the shape policy a parameter), :class:`LoadReport`
- :mod:`~attnguide.models.trained`: :func:`load_model` (a run of ``attnguide train``),
  :class:`TrainedModel`
- :mod:`~attnguide.models.segmenters`: DeepLab-LargeFOV and smp models (smp is optional:
  ``attnguide[seg]``); not imported here
"""

from __future__ import annotations

from attnguide.models.classifiers import create_model
from attnguide.models.trained import TrainedModel, load_model
from attnguide.models.weights import LoadReport, load_weights, read_state_dict

__all__ = ["LoadReport", "TrainedModel", "create_model", "load_model", "load_weights",
           "read_state_dict"]
