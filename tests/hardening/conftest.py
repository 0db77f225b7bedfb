"""Fixtures of the hardening tests: a tiny scenes data set (32 px) copied per test so that
a test may break its files, one classifier run and one segmenter run (built once), and
helpers that run the CLI in-process and snapshot folders."""

from __future__ import annotations

import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

SIZE = 48



@pytest.fixture(scope="session")
def scenes(tmp_path_factory) -> Path:
    from attnguide.data import make_scenes

    return make_scenes(tmp_path_factory.mktemp("hardening") / "scenes", n_train=8, n_val=4,
                       n_test=4, image_size=SIZE, seed=0)


@pytest.fixture
def data(scenes, tmp_path) -> Path:
    """A private copy of the scenes, free to break."""
    return Path(shutil.copytree(scenes, tmp_path / "data"))


@pytest.fixture(scope="session")
def classifier_run(scenes, tmp_path_factory) -> Path:
    """`attnguide train` run folder: test_resnet, 1 epoch, no guidance."""
    from attnguide.engine import TrainConfig
    from attnguide.tasks.training import train

    out = tmp_path_factory.mktemp("hardening") / "classifier"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train(TrainConfig(data=str(scenes), model="test_resnet", image_size=SIZE, epochs=1,
                          batch_size=4, guidance="none", layer="layer2", val_split="",
                          device="cpu", quiet=True, snapshots=0, out=str(out)))
    return out


@pytest.fixture(scope="session")
def segmenter_run(scenes, tmp_path_factory) -> Path:
    """`attnguide segment` run folder: a U-Net on the ground truth, 1 iteration."""
    from attnguide.tasks.segmentation import SegmentConfig, segment

    out = tmp_path_factory.mktemp("hardening") / "segmenter"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        segment(SegmentConfig(data=str(scenes), labels="gt", arch="unet", encoder="resnet18",
                              crop_size=SIZE, batch_size=2, iterations=1, val_split="",
                              device="cpu", quiet=True, out=str(out)))
    return out


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


@pytest.fixture
def cli(capfd):
    """``cli(*args) -> Result``: ``attnguide.cli.main.main`` in this process."""
    from attnguide.cli.main import main

    def run(*args) -> Result:
        capfd.readouterr()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            code = main([str(a) for a in args])
        captured = capfd.readouterr()
        return Result(code, captured.out, captured.err)

    return run
