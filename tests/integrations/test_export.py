"""`attnguide export RUN DIR`: a Hub-style model folder (config.json, model.safetensors, README.md
model card, the attention picture) that load_model reads back with the run's maps."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from attnguide.cli.main import main
from attnguide.data import make_scenes
from attnguide.errors import AttnGuideError
from attnguide.models.export import read_model_folder
from attnguide.models.trained import load_model


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("export")
    data = make_scenes(base / "scenes", n_train=16, n_val=4, n_test=4, image_size=48, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main(["train", "--data", str(data), "--model", "test_resnet", "--image-size", "48",
                     "--batch-size", "8", "--epochs", "2", "--warmup-epochs", "1", "--guidance", "ext",
                     "--snapshots", "2", "--device", "cpu", "--quiet", "--out", str(base / "run")])
    assert code == 0
    return base / "run"


def test_export_round_trip_gives_the_runs_maps(run, tmp_path):
    out = tmp_path / "model"
    assert main(["export", str(run), str(out)]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "README.md"} <= names
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "test_resnet" and config["guidance"] == "ext"
    assert config["image_size"] == 48 and len(config["classes"]) == 5 and config["layer"]
    assert config["normalize"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    card = (out / "README.md").read_text()
    record = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    assert "library_name: attnguide" in card and f"{record['val_map']:.4g}" in card
    if (run / "snapshots").is_dir():  # matplotlib installed: the attention picture travels along
        assert "attention.png" in names and "](attention.png)" in card

    original, loaded = load_model(run), load_model(out)
    assert loaded.class_names == original.class_names and loaded.layer == original.layer
    assert loaded.multilabel == original.multilabel and loaded.image_size == original.image_size
    images = torch.rand(3, 3, 48, 48)
    classes = torch.tensor([0, 2, 4])
    a = original.guide().attention(images, classes, resize=True, normalize=True)
    b = loaded.guide().attention(images, classes, resize=True, normalize=True)
    assert a.shape == (3, 1, 48, 48) and torch.equal(a, b)
    assert torch.equal(original.predict(images), loaded.predict(images))


def test_export_refuses_a_full_folder_and_a_bad_folder_is_named(run, tmp_path, capsys):
    out = tmp_path / "model"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["export", str(run), str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["export", str(run), str(out), "--overwrite", "--prefer", "last"]) == 0
    (out / "config.json").write_text('{"format": "something-else"}')
    with pytest.raises(AttnGuideError, match="not an attnguide model config"):
        read_model_folder(out)
