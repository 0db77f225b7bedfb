"""Checkpoints: atomic writes, weights_only reading, RNG capture, resume checks."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

from attnguide.engine import state as ck
from attnguide.errors import AttnGuideError
from attnguide.io import checkpoints as ckio


def _leftovers(folder):
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_failed_write_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    ckio.save_checkpoint({"step": 1, "w": torch.ones(3)}, path)

    def torn_replace(src, dst):  # the kill lands after the temp file is written
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", torn_replace)
    with pytest.raises(KeyboardInterrupt):
        ckio.save_checkpoint({"step": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    state = ckio.read_checkpoint(path)
    assert state["step"] == 1 and torch.equal(state["w"], torch.ones(3))
    assert _leftovers(tmp_path) == []


def test_partial_temp_file_never_replaces_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    ckio.save_checkpoint({"step": 1}, path)
    real_fsync = os.fsync

    def dies_in_fsync(fd):  # half of the bytes are on disk, then the process dies
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", dies_in_fsync)
    with pytest.raises(OSError, match="disk full"):
        ckio.save_checkpoint({"step": 2, "big": torch.zeros(10_000)}, path)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert ckio.read_checkpoint(path)["step"] == 1
    assert _leftovers(tmp_path) == []


def test_checkpoint_is_weights_only_readable_with_rng_state(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    state = ck.rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(2))
    ckio.save_checkpoint({"rng": state, "step": 0}, tmp_path / "c.pt")
    loaded = torch.load(tmp_path / "c.pt", weights_only=True)  # plain types only
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    ck.set_rng_state(loaded["rng"])
    got = (random.random(), np.random.rand(), torch.rand(2))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])


def test_not_a_checkpoint_is_named(tmp_path):
    torch.save({"conv.weight": torch.ones(1)}, tmp_path / "weights.pt")
    with pytest.raises(AttnGuideError, match="not an attnguide training checkpoint.*--weights"):
        ckio.read_checkpoint(tmp_path / "weights.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a zip")
    with pytest.raises(AttnGuideError, match="could not read checkpoint"):
        ckio.read_checkpoint(tmp_path / "junk.pt")


def test_resume_from_another_model_or_class_list_fails_clearly():
    state = {"model_name": "resnet18", "class_names": ["cat", "dog"], "multilabel": True}
    ck.check_compatible(state, "run/last.pt", model_name="resnet18", class_names=["cat", "dog"],
                        multilabel=True)
    with pytest.raises(AttnGuideError, match="--model resnet18, not test_resnet"):
        ck.check_compatible(state, "run/last.pt", model_name="test_resnet",
                            class_names=["cat", "dog"], multilabel=True)
    with pytest.raises(AttnGuideError, match=r"classes \[cat, dog\] differ.*\[cat, cow\]"):
        ck.check_compatible(state, "run/last.pt", model_name="resnet18",
                            class_names=["cat", "cow"], multilabel=True)
