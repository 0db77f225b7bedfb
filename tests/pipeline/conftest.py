"""Fixtures of the pipeline tests: a tiny scenes data set and a classifier
trained on it for one epoch (timm ``test_resnet``, 48 px), built once per module."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

# The CAM layer of the tiny classifier: layer3 has stride 16, so even the 0.5
# scale of a 48 px image gives a 2x2 map (layer4 would give 1x1).
LAYER = "layer3"



@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    from attnguide.data import make_scenes

    return make_scenes(tmp_path_factory.mktemp("pipeline") / "scenes", n_train=24, n_val=8, n_test=8,
                       image_size=48, seed=0)


@pytest.fixture(scope="module")
def classifier(scenes, tmp_path_factory) -> Path:
    """A run folder of `attnguide train` (1 epoch, plain classifier)."""
    from attnguide.engine import TrainConfig
    from attnguide.tasks.training import train

    out = tmp_path_factory.mktemp("pipeline") / "classifier"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train(TrainConfig(data=str(scenes), model="test_resnet", image_size=48, epochs=1, batch_size=8,
                          guidance="none", layer=LAYER, lr=0.05, device="cpu", quiet=True, out=str(out)))
    return out


@pytest.fixture(scope="module")
def pseudo(classifier, scenes, tmp_path_factory) -> Path:
    """Pseudo labels of the train split, with CRF (OUT/crf/)."""
    from attnguide.tasks.pseudo_labels import PseudoLabelConfig, pseudo_label

    out = tmp_path_factory.mktemp("pipeline") / "pseudo"
    pseudo_label(PseudoLabelConfig(run=str(classifier), data=str(scenes), out=str(out), crf=True,
                                   scales=(1.0, 0.5, 1.5), device="cpu", quiet=True))
    return out
