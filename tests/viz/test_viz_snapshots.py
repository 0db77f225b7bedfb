"""Per-epoch attention snapshots written by the training loop (``snapshots``)."""

from __future__ import annotations

import sys

import pytest
import torch
from PIL import Image

from attnguide import viz

pytestmark = pytest.mark.filterwarnings("ignore:layer 'layer3' gives")


def test_each_epoch_writes_a_snapshot_of_fixed_val_images(runs, scenes):
    pytest.importorskip("matplotlib")
    for name in ("baseline", "ext"):
        files = sorted(p.name for p in (runs[name] / "snapshots").iterdir())
        assert files == ["epoch_001.png"]
    with Image.open(runs["ext"] / "snapshots" / "epoch_001.png") as im:
        rows = 8  # the default: 8 val images (the whole val split here)
        assert im.size[1] == viz.grid_size(rows, 1)[1]


def test_two_epochs_two_snapshots_and_three_images(scenes, train_run, tmp_path):
    pytest.importorskip("matplotlib")
    train_run(scenes, tmp_path / "run", epochs=2, snapshots=3)
    files = sorted(p.name for p in (tmp_path / "run" / "snapshots").iterdir())
    assert files == ["epoch_001.png", "epoch_002.png"]
    with Image.open(tmp_path / "run" / "snapshots" / "epoch_002.png") as im:
        assert im.size[1] == viz.grid_size(3, 1)[1]


def test_no_snapshots_when_off_or_without_val_split(scenes, train_run, tmp_path):
    train_run(scenes, tmp_path / "off", snapshots=0)
    train_run(scenes, tmp_path / "noval", val_split="")
    assert not (tmp_path / "off" / "snapshots").exists()
    assert not (tmp_path / "noval" / "snapshots").exists()
    assert (tmp_path / "off" / "last.pt").is_file()


def test_without_matplotlib_training_warns_once_and_goes_on(scenes, train_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    result = train_run(scenes, tmp_path / "run", epochs=2)
    assert len(result.history) == 2 and not (tmp_path / "run" / "snapshots").exists()
    err = " ".join(capsys.readouterr().err.split())
    assert err.count("no attention snapshots") == 1 and "pip install 'attnguide[viz]'" in err


def test_a_snapshot_leaves_the_random_state_and_train_mode_alone(scenes, tmp_path):
    pytest.importorskip("matplotlib")
    from attnguide.engine import TrainConfig, Trainer

    trainer = Trainer(TrainConfig(data=str(scenes), model="test_resnet", image_size=48, batch_size=8,
                                  out=str(tmp_path / "run"), layer="layer3", quiet=True, device="cpu",
                                  snapshots=2))
    trainer.model.train()
    state = torch.get_rng_state()
    path = viz.training_snapshot(trainer, {"epoch": 7, "guided": True})
    assert path == tmp_path / "run" / "snapshots" / "epoch_007.png" and path.is_file()
    assert torch.equal(torch.get_rng_state(), state)
    assert all(m.training for m in trainer.model.modules())


def test_the_callback_keeps_its_own_warned_flag(monkeypatch):
    from types import SimpleNamespace

    warnings = []
    trainer = SimpleNamespace(val_ds=[0], reporter=SimpleNamespace(warn=warnings.append))
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    callback = viz.AttentionSnapshots(2)
    assert callback.on_epoch_end(trainer, {"epoch": 1}) is None
    assert callback.on_epoch_end(trainer, {"epoch": 2}) is None
    assert len(warnings) == 1 and callback.warned
    assert sorted(vars(trainer)) == ["reporter", "val_ds"]  # nothing set on the trainer
    assert viz.AttentionSnapshots(0).on_epoch_end(trainer, {"epoch": 1}) is None
