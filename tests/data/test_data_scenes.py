"""make_scenes: files, exact masks, the shortcuts it plants, determinism, atomic writes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from attnguide.data import SHAPES, TEXTURES, make_scenes, open_dataset
from attnguide.data import scenes as scenes_module
from attnguide.data.scene_drawing import (
    CUE_COLOURS,
    CUE_OFFSET,
    CUE_REGION,
    CUE_SIZE,
    TEXTURE_PAINTERS,
)
from attnguide.data.scenes import draw_scene_labels
from attnguide.errors import AttnGuideError

SPLITS = ("train", "val", "test", "train_unbiased")
SMALL = dict(n_train=6, n_val=2, n_test=2, image_size=44)


def read_rows(root: Path, split: str) -> list[dict[str, str]]:
    with (root / f"{split}.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    """120 biased train images (both shortcuts), 120 decorrelated test images, 48 px."""
    out = tmp_path_factory.mktemp("scenes") / "both"
    return make_scenes(out, n_train=120, n_val=10, n_test=120, image_size=48, bias="both", seed=0)


def test_writes_a_documented_folder_data_set(scenes):
    assert (scenes / "classes.txt").read_text().split() == list(SHAPES[:5])
    params = json.loads((scenes / "scenes.json").read_text())
    assert params["bias"] == "both" and params["n_train"] == 120
    assert "bias_strength" in (scenes / "README.md").read_text()
    sizes = {split: len(read_rows(scenes, split)) for split in SPLITS}
    assert sizes == {"train": 120, "val": 10, "test": 120, "train_unbiased": 120}
    assert not list(scenes.parent.glob(".*partial*"))


def test_masks_are_exact_label_maps_that_match_the_labels(scenes):
    names = (scenes / "classes.txt").read_text().split()
    for split in SPLITS:
        for row in read_rows(scenes, split):
            with Image.open(scenes / row["mask"]) as mask_file:
                assert mask_file.mode == "P"
                mask = np.array(mask_file)
            with Image.open(scenes / row["image"]) as image_file:
                assert image_file.size == (48, 48) and image_file.mode == "RGB"
            expected = {names.index(name) + 1 for name in row["labels"].split()}
            assert set(np.unique(mask)) - {0} == expected, row  # every shape stays visible
            assert not mask[:CUE_REGION, :CUE_REGION].any(), "shapes must avoid the cue corner"


def test_cue_pixels_name_the_recorded_class(scenes):
    names = (scenes / "classes.txt").read_text().split()
    inner = slice(CUE_OFFSET + 1, CUE_OFFSET + CUE_SIZE - 1)
    for row in read_rows(scenes, "test")[:30]:
        with Image.open(scenes / row["image"]) as image_file:
            patch = np.asarray(image_file, dtype=np.float32)[inner, inner]
        expected = CUE_COLOURS[names.index(row["cue"])]
        assert np.abs(patch.mean((0, 1)) - expected).max() < 6, row


def test_background_pixels_show_the_recorded_texture(scenes):
    rng = np.random.default_rng(123)
    reference = {
        name: np.mean([paint(rng, 48).mean((0, 1)) for _ in range(20)], axis=0)
        for name, paint in TEXTURE_PAINTERS.items()
    }
    for row in read_rows(scenes, "train")[:40]:
        with (
            Image.open(scenes / row["image"]) as image_file,
            Image.open(scenes / row["mask"]) as mask_file,
        ):
            image, mask = np.asarray(image_file, np.float32), np.array(mask_file)
        mask[:CUE_REGION, :CUE_REGION] = 255  # leave the cue out
        colour = image[mask == 0].mean(0)
        nearest = min(reference, key=lambda name: np.linalg.norm(reference[name] - colour))
        assert nearest == row["background"], row


def phi(a: np.ndarray, b: np.ndarray) -> float:
    """Correlation of two boolean arrays."""
    return float(np.corrcoef(a.astype(float), b.astype(float))[0, 1])


def test_shortcuts_correlate_with_labels_in_train_only(scenes):
    for split, low, high in (
        ("train", 0.7, 1.0),
        ("test", -0.3, 0.3),
        ("train_unbiased", -0.3, 0.3),
    ):
        rows = read_rows(scenes, split)
        has_boat = np.array(["boat" in row["labels"].split() for row in rows])
        on_water = np.array([row["background"] == "water" for row in rows])
        assert low <= phi(has_boat, on_water) <= high, split
        cue_present = np.mean([row["cue"] in row["labels"].split() for row in rows])
        assert (cue_present > 0.85) == (split == "train"), (split, cue_present)


def test_bias_probabilities_follow_the_documented_formula():
    params = {
        "num_classes": 5,
        "min_objects": 1,
        "max_objects": 3,
        "bias": "both",
        "bias_strength": 0.8,
    }
    draws = [
        draw_scene_labels(np.random.default_rng([7, i]), params, biased=True) for i in range(4000)
    ]
    boat = np.array([0 in classes for classes, _, _ in draws])
    water = np.array([texture == 0 for _, texture, _ in draws])
    t = len(TEXTURES)
    assert water[boat].mean() == pytest.approx(0.8 + 0.2 / t, abs=0.03)
    assert water[~boat].mean() == pytest.approx(0.2 / t, abs=0.02)
    unbiased = [
        draw_scene_labels(np.random.default_rng([7, i]), params, biased=False) for i in range(4000)
    ]
    boat = np.array([0 in classes for classes, _, _ in unbiased])
    water = np.array([texture == 0 for _, texture, _ in unbiased])
    assert water[boat].mean() == pytest.approx(1 / t, abs=0.03)
    assert water[~boat].mean() == pytest.approx(1 / t, abs=0.03)


def test_no_bias_means_no_cue_and_uniform_textures(tmp_path):
    root = make_scenes(tmp_path / "none", **SMALL, bias="none")
    rows = read_rows(root, "train")
    assert all(row["cue"] == "" for row in rows)
    params = {
        "num_classes": 5,
        "min_objects": 1,
        "max_objects": 3,
        "bias": "none",
        "bias_strength": 1.0,
    }
    draws = [draw_scene_labels(np.random.default_rng(i), params, biased=True) for i in range(2000)]
    boat = np.array([0 in classes for classes, _, _ in draws])
    water = np.array([texture == 0 for _, texture, _ in draws])
    assert abs(water[boat].mean() - water[~boat].mean()) < 0.06


def test_open_in_multi_and_single_label_modes(scenes, tmp_path):
    multi = open_dataset(scenes, "train", image_size=32)
    assert multi.multilabel and multi.class_names == list(SHAPES[:5])
    with pytest.raises(AttnGuideError, match=r"train\.csv line \d+"):
        open_dataset(scenes, "train", mode="single")

    single_root = make_scenes(tmp_path / "single", **SMALL, min_objects=1, max_objects=1)
    single = open_dataset(single_root, "test", train=False, image_size=32)
    assert not single.multilabel
    assert open_dataset(single_root, "test", mode="multi").multilabel
    assert all(len(sample.labels) == 1 for sample in single.samples)

    batch = next(iter(DataLoader(multi, batch_size=5, shuffle=False)))
    assert batch["image"].shape == (5, 3, 32, 32) and batch["image"].dtype == torch.float32
    assert batch["labels"].shape == (5, 5) and batch["labels"].dtype == torch.float32
    assert batch["mask"].shape == (5, 32, 32) and batch["mask"].dtype == torch.int64
    assert batch["pixel_label"].dtype == torch.bool and batch["pixel_label"].all()
    assert batch["index"].tolist() == [0, 1, 2, 3, 4]
    for labels, mask in zip(batch["labels"], batch["mask"], strict=True):
        assert set(mask.unique().tolist()) <= {0, *(int(k) + 1 for k in labels.nonzero())}


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_same_bytes_other_seed_other_images(tmp_path):
    first = tree_bytes(make_scenes(tmp_path / "a", **SMALL, bias="both", seed=3))
    again = tree_bytes(make_scenes(tmp_path / "b", **SMALL, bias="both", seed=3))
    other = tree_bytes(make_scenes(tmp_path / "c", **SMALL, bias="both", seed=4))
    assert first == again
    images = [name for name in first if name.startswith("images/")]
    assert len(images) == 16
    assert all(first[name] != other[name] for name in images)


def test_existing_folder_is_reused_replaced_or_refused(tmp_path):
    out = make_scenes(tmp_path / "s", **SMALL)
    stamp = (out / "scenes.json").stat().st_mtime_ns
    assert make_scenes(out, **SMALL) == out
    assert (out / "scenes.json").stat().st_mtime_ns == stamp  # not regenerated

    with pytest.raises(AttnGuideError, match="overwrite=True"):
        make_scenes(out, **SMALL, seed=1)
    make_scenes(out, **SMALL, seed=1, overwrite=True)
    assert json.loads((out / "scenes.json").read_text())["seed"] == 1

    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    for overwrite in (False, True):
        with pytest.raises(AttnGuideError, match="not a scenes folder"):
            make_scenes(other, **SMALL, overwrite=overwrite)
    assert (other / "notes.txt").read_text() == "keep me"

    empty = tmp_path / "empty"
    empty.mkdir()
    assert (make_scenes(empty, **SMALL) / "scenes.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "mine", "s"]


def test_failed_run_leaves_no_folder(tmp_path, monkeypatch):
    calls = []

    def failing_render(*args):
        calls.append(1)
        if len(calls) > 3:
            raise KeyboardInterrupt
        return real_render(*args)

    real_render = scenes_module.render_scene
    monkeypatch.setattr(scenes_module, "render_scene", failing_render)
    with pytest.raises(KeyboardInterrupt):
        make_scenes(tmp_path / "s", **SMALL)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"num_classes": 9}, "num_classes"),
        ({"max_objects": 6}, "max_objects"),
        ({"min_objects": 4, "max_objects": 3}, "min_objects"),
        ({"bias": "colour"}, "bias"),
        ({"bias_strength": 1.5}, "bias_strength"),
        ({"image_size": 20}, "image_size"),
        ({"n_train": 0}, "n_train"),
    ],
)
def test_bad_parameters_are_named(tmp_path, change, named):
    with pytest.raises(AttnGuideError, match=named):
        make_scenes(tmp_path / "s", **{**SMALL, **change})
    assert not (tmp_path / "s").exists()
