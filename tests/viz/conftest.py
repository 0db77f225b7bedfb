"""Fixtures of the picture tests: tiny scenes (48 px) and two one-epoch runs of
timm's ``test_resnet``, an unguided baseline and GAIN_ext, built once per test process."""

from __future__ import annotations

from pathlib import Path

import pytest

LAYER = "layer3"  # 3x3 maps at 48 px: coarse, but these tests check files, not quality



@pytest.fixture(scope="session")
def scenes(tmp_path_factory) -> Path:
    from attnguide.data import make_scenes

    return make_scenes(tmp_path_factory.mktemp("viz") / "scenes", n_train=24, n_val=8, n_test=8,
                       image_size=48, seed=0)


def _train(scenes: Path, out: Path, **kw):
    from attnguide.engine import TrainConfig
    from attnguide.tasks.training import train

    base = dict(data=str(scenes), model="test_resnet", image_size=48, epochs=1, batch_size=8,
                out=str(out), layer=LAYER, quiet=True, device="cpu", checkpoint_every=0)
    base.update(kw)
    return train(TrainConfig(**base))


@pytest.fixture(scope="session")
def runs(scenes, tmp_path_factory) -> dict[str, Path]:
    """{"baseline": unguided run, "ext": GAIN_ext run guided from the first epoch};
    both with the default per-epoch snapshots."""
    root = tmp_path_factory.mktemp("viz_runs")
    _train(scenes, root / "baseline", guidance="none")
    _train(scenes, root / "ext", guidance="ext", warmup_epochs=0)
    return {"baseline": root / "baseline", "ext": root / "ext"}


@pytest.fixture
def train_run():
    """``train_run(scenes, out, **TrainConfig overrides)``: one tiny training run."""
    return _train
