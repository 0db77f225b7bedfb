"""`attention_grid`: pixel size for one and two runs, tensors of images, the
model's train/eval flags, and bad input."""

from __future__ import annotations

import csv
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from attnguide import viz
from attnguide.data import open_dataset
from attnguide.errors import AttnGuideError
from attnguide.models.trained import load_model

pytest.importorskip("matplotlib")
pytestmark = pytest.mark.filterwarnings("ignore:layer 'layer3' gives")


def _labels_per_image(scenes, split="val") -> list[int]:
    with open(scenes / f"{split}.csv", newline="") as f:
        return [len(row["labels"].split()) for row in csv.DictReader(f)]


def _size(path) -> tuple[int, int]:
    with Image.open(path) as im:
        return im.size


@pytest.mark.parametrize("which", [["ext"], ["baseline", "ext"]], ids=["one run", "two runs"])
def test_grid_has_one_row_per_image_and_the_expected_columns(runs, scenes, tmp_path, which):
    indices = [0, 1, 5]
    k = max(_labels_per_image(scenes)[i] for i in indices)
    out = viz.attention_grid([runs[name] for name in which], scenes, indices=indices,
                             out_png=tmp_path / "sub" / "grid.png")
    assert out == tmp_path / "sub" / "grid.png" and out.is_file()
    columns = 1 + 1 + k * 2 * len(which)  # image, mask, per class: attention and I* per run
    assert _size(out) == viz.grid_size(len(indices), columns)
    assert _size(out) == (columns * viz.CELL_PX, len(indices) * 200 + 80)
    assert not list(out.parent.glob(".*.tmp"))  # written atomically


def test_grid_draws_something_other_than_white(runs, scenes, tmp_path):
    out = viz.attention_grid(runs["ext"], scenes, indices=[2], out_png=tmp_path / "g.png",
                             cell_px=100)
    pixels = np.asarray(Image.open(out).convert("RGB"), dtype=np.float32)
    assert pixels.shape == (int(100 * 1.25) + 50, 100 * (2 + 2 * _labels_per_image(scenes)[2]), 3)
    image_area = pixels[50 + 25 + 4:50 + 125 - 4, 4:96]  # the first cell's image
    assert image_area.std() > 5 and image_area.mean() < 250


def test_checkpoint_files_trained_models_and_default_indices(runs, scenes, tmp_path):
    trained = load_model(runs["baseline"])
    out = viz.attention_grid([trained, runs["ext"] / "last.pt"], scenes, out_png=tmp_path / "g.png",
                             images=2, max_classes=1, names=["before", "after"])
    assert _size(out) == viz.grid_size(2, 1 + 1 + 1 * 2 * 2)


def test_tensor_images_without_labels_draw_the_predicted_class(runs, scenes, tmp_path):
    ds = open_dataset(scenes, "val", 48, train=False)
    images = torch.stack([ds[i]["image"] for i in range(3)])  # (3, 3, 48, 48)
    out = viz.attention_grid([runs["ext"]], images, out_png=tmp_path / "t.png")
    assert _size(out) == viz.grid_size(3, 1 + 2)  # no mask column, one class per image
    out = viz.attention_grid([runs["ext"]], images, indices=[0, 2], labels=[["disc", "cross"], [1]],
                             out_png=tmp_path / "t2.png")
    assert _size(out) == viz.grid_size(2, 1 + 2 * 2)


def test_the_model_keeps_its_train_mode_and_no_graph(runs, scenes, tmp_path):
    trained = load_model(runs["ext"])
    trained.model.train()
    viz.attention_grid([trained], scenes, indices=[0], out_png=tmp_path / "g.png")
    assert all(m.training for m in trained.model.modules())
    assert all(p.grad is None for p in trained.model.parameters())


def test_pick_indices_spreads_over_the_split():
    assert viz.pick_indices(100, 4) == [0, 33, 66, 99]
    assert viz.pick_indices(3, 8) == [0, 1, 2]
    assert viz.pick_indices(0, 8) == []


def test_bad_input_names_the_fix(runs, scenes, tmp_path):
    from attnguide.data import make_scenes

    other = make_scenes(tmp_path / "three", n_train=4, n_val=2, n_test=2, image_size=48,
                        num_classes=3)
    with pytest.raises(AttnGuideError, match="trained on classes .* pass the data set"):
        viz.attention_grid([runs["ext"]], other, indices=[0], out_png=tmp_path / "x.png")
    with pytest.raises(AttnGuideError, match="index 8 is out of range.*8 images"):
        viz.attention_grid([runs["ext"]], scenes, indices=[0, 8], out_png=tmp_path / "x.png")
    with pytest.raises(AttnGuideError, match="unknown class 'boot'"):
        viz.attention_grid([runs["ext"]], scenes, indices=[0], labels=[["boot"]],
                           out_png=tmp_path / "x.png")
    trained = load_model(runs["baseline"])
    trained.class_names = ["a", "b", "c", "d", "e"]
    with pytest.raises(AttnGuideError, match="different classes"):
        viz.attention_grid([runs["ext"], trained], scenes, indices=[0], out_png=tmp_path / "x.png")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        viz.attention_grid([tmp_path / "missing"], scenes, indices=[0], out_png=tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_without_matplotlib_the_error_names_the_extra(runs, scenes, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(AttnGuideError, match=r"pip install 'attnguide\[viz\]'"):
        viz.attention_grid([runs["ext"]], scenes, indices=[0], out_png=tmp_path / "x.png")
    with pytest.raises(AttnGuideError, match=r"pip install 'attnguide\[viz\]'"):
        viz.plot_curves([runs["ext"]], tmp_path / "c.png")
