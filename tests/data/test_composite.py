"""make_composite / `attnguide data composite`: tiny generated cut-outs on tiny photos."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from attnguide.cli.main import main
from attnguide.data import open_dataset
from attnguide.data.composite import make_composite
from attnguide.data.groups import dataset_groups, read_groups
from attnguide.errors import AttnGuideError
from attnguide.io.labels import load_label_png

COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}
POOLS = {"dark": 30, "mid": 128, "light": 220}


def _cutout(path: Path, colour, radius: int, opaque: bool = False, rgb: bool = False) -> None:
    yy, xx = np.mgrid[:24, :24]
    inside = (yy - 12) ** 2 + (xx - 12) ** 2 <= radius ** 2
    rgba = np.zeros((24, 24, 4), np.uint8)
    rgba[..., :3] = colour
    rgba[..., 3] = 255 if opaque else np.where(inside, 255, 0)
    image = Image.fromarray(rgba, "RGBA")
    (image.convert("RGB") if rgb else image).save(path)


def _inputs(root: Path, per_class: int = 3, pools=POOLS, classes=COLOURS) -> tuple[Path, Path]:
    objects, backgrounds = root / "objects", root / "backgrounds"
    for name, colour in classes.items():
        (objects / name).mkdir(parents=True)
        for i in range(per_class):
            _cutout(objects / name / f"{name}{i}.png", colour, 6 + 2 * i)
    rng = np.random.default_rng(0)
    for name, grey in pools.items():
        (backgrounds / name).mkdir(parents=True)
        for i in range(2):
            noise = rng.integers(-10, 11, (40, 50, 3))
            Image.fromarray(np.clip(grey + noise, 0, 255).astype(np.uint8)).save(
                backgrounds / name / f"{name}{i}.jpg")
    return objects, backgrounds


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, Path]:
    return _inputs(tmp_path_factory.mktemp("composite_inputs"))


def _build(inputs, out: Path, **kw) -> Path:
    objects, backgrounds = inputs
    args = dict(n_train=40, n_val=12, n_test=12, image_size=32, seed=3)
    args.update(kw)
    return make_composite(out, objects=objects, backgrounds=backgrounds, **args)


def _rows(root: Path, split: str) -> list[dict[str, str]]:
    with (root / f"{split}.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def single(inputs, tmp_path_factory) -> Path:
    return _build(inputs, tmp_path_factory.mktemp("c") / "single", bias=1.0)


def test_writes_a_folder_data_set_with_exact_masks(single):
    assert (single / "classes.txt").read_text().split() == ["blue", "green", "red"]
    for split in ("train", "val", "test", "train_unbiased"):
        ds = open_dataset(single, split, image_size=32, train=False)
        assert not ds.multilabel and len(ds) == {"val": 12, "test": 12}.get(split, 40)
    ds = open_dataset(single, "train", image_size=32, train=False)
    for i in range(10):
        image, mask = ds.load_raw(i)
        (label,) = ds.samples[i].labels
        colour = np.array(COLOURS[ds.class_names[label]])
        on = mask == label + 1
        assert on.sum() >= 16 and set(np.unique(mask)) <= {0, label + 1}
        # the object's pixels are its colour; the background (grey) is not
        assert np.abs(image[on].astype(int) - colour).max(axis=1).mean() < 40
        far = np.abs(image[~on].astype(int) - colour).max(axis=1)
        assert (far < 40).mean() < 0.02


def test_bias_one_ties_each_class_to_its_pool_in_train_only(single):
    pools = sorted(POOLS)
    classes = sorted(COLOURS)
    for row in _rows(single, "train"):
        assert row["background"] == pools[classes.index(row["labels"]) % len(pools)]
    val_follow = [row["background"] == pools[classes.index(row["labels"]) % len(pools)]
                  for row in _rows(single, "val") + _rows(single, "test")]
    assert 0 < sum(val_follow) < len(val_follow)  # uniform pools: some follow, most do not


def test_object_files_disjoint_between_train_and_test(single):
    def used(splits):
        return {name for s in splits for row in _rows(single, s) for name in row["objects"].split()}
    train, held = used(["train", "train_unbiased"]), used(["val", "test"])
    assert train and held and not train & held


def test_groups_csv_one_row_per_image_and_read_back(single):
    ds = open_dataset(single, "test", image_size=32, train=False)
    groups = dataset_groups(ds)
    assert groups.bias_names == sorted(POOLS) and len(groups) == len(ds)
    rows = _rows(single, "test")
    for i, c, b in zip(groups.index.tolist(), groups.classes.tolist(), groups.bias.tolist(), strict=True):
        assert ds.class_names[c] == rows[i]["labels"] and groups.bias_names[b] == rows[i]["background"]
    assert read_groups(single, "val") is not None


def test_same_seed_same_bytes_other_seed_other_images(inputs, tmp_path):
    def digest(root: Path) -> str:
        h = hashlib.sha256()
        for path in sorted(root.rglob("*")):
            if path.is_file():
                h.update(path.relative_to(root).as_posix().encode() + path.read_bytes())
        return h.hexdigest()
    a, b = _build(inputs, tmp_path / "a"), _build(inputs, tmp_path / "b")
    assert digest(a) == digest(b)
    c = _build(inputs, tmp_path / "c", seed=4)
    assert (a / "images/train_00000.png").read_bytes() != (c / "images/train_00000.png").read_bytes()


def test_multi_label_objects_and_mask_classes(inputs, tmp_path):
    root = _build(inputs, tmp_path / "multi", min_objects=1, max_objects=3, object_scale=(0.3, 0.5))
    ds = open_dataset(root, "train", image_size=32, train=False)
    assert ds.multilabel
    counts = [len(s.labels) for s in ds.samples]
    assert max(counts) >= 2
    for sample in ds.samples:
        present = set(np.unique(load_label_png(sample.mask_path))) - {0}
        assert present == {c + 1 for c in sample.labels}
    groups = dataset_groups(ds)
    assert len(groups) == sum(counts)  # one pair per (image, visible class)
    for sample in ds.samples:  # boxes and clicks of the exact masks, for --annotations
        mask = load_label_png(sample.mask_path)
        assert {b[0] for b in sample.boxes} == {p[0] for p in sample.points} == set(sample.labels)
        for c, x0, y0, x1, y1 in sample.boxes:
            ys, xs = np.nonzero(mask == c + 1)
            assert (x0, y0, x1, y1) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        for c, x, y in sample.points:
            assert mask[int(y), int(x)] == c + 1


def test_reuse_and_overwrite(inputs, tmp_path):
    out = _build(inputs, tmp_path / "r")
    stamp = (out / "train.csv").stat().st_mtime_ns
    _build(inputs, out)  # same settings: nothing written
    assert (out / "train.csv").stat().st_mtime_ns == stamp
    with pytest.raises(AttnGuideError, match="other settings.*bias"):
        _build(inputs, out, bias=0.5)
    _build(inputs, out, bias=0.5, overwrite=True)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("x")
    with pytest.raises(AttnGuideError, match="not a composite folder"):
        _build(inputs, tmp_path / "other")


@pytest.mark.parametrize("case, match", [
    ("rgb", "no alpha channel"),
    ("opaque", "no transparent pixel"),
    ("empty_class", "holds no cut-out"),
    ("one_file", "holds one cut-out"),
    ("one_pool", "at least two pools"),
    ("empty_pool", "holds no image"),
    ("jpeg_objects", "formats without alpha"),
])
def test_bad_inputs_get_one_clear_error(tmp_path, case, match):
    objects, backgrounds = _inputs(tmp_path, pools={"a": 50, "b": 200} if case != "one_pool" else {"a": 50})
    if case == "rgb":
        _cutout(objects / "red" / "red0.png", COLOURS["red"], 6, rgb=True)
    elif case == "opaque":
        _cutout(objects / "red" / "red0.png", COLOURS["red"], 6, opaque=True)
    elif case == "empty_class":
        (objects / "yellow").mkdir()
    elif case == "one_file":
        for path in list((objects / "red").iterdir())[1:]:
            path.unlink()
    elif case == "empty_pool":
        (backgrounds / "c").mkdir()
    elif case == "jpeg_objects":
        (objects / "yellow").mkdir()
        Image.new("RGB", (8, 8)).save(objects / "yellow" / "y.jpg")
    with pytest.raises(AttnGuideError, match=match):
        make_composite(tmp_path / "out", objects=objects, backgrounds=backgrounds, n_train=4,
                       n_val=2, n_test=2, image_size=32)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kw, match", [
    ({"bias": 1.5}, "bias must be a number in"),
    ({"max_objects": 4}, "max_objects must be an int in 1..3"),
    ({"max_objects": 3, "min_objects": 1, "object_scale": (0.5, 0.2)}, "object_scale"),
    ({"image_size": 8}, "image_size"),
])
def test_bad_parameters(inputs, tmp_path, kw, match):
    with pytest.raises(AttnGuideError, match=match):
        _build(inputs, tmp_path / "out", **kw)


def test_too_many_objects_for_the_classes(tmp_path):
    objects, backgrounds = _inputs(tmp_path, classes={"red": COLOURS["red"], "blue": COLOURS["blue"]})
    with pytest.raises(AttnGuideError, match="max_objects 3 needs as many classes"):
        make_composite(tmp_path / "out", objects=objects, backgrounds=backgrounds, max_objects=3)


def test_cli_builds_and_refuses_bad_input(inputs, tmp_path, capsys):
    objects, backgrounds = inputs
    out = tmp_path / "cli"
    code = main(["data", "composite", str(out), "--objects", str(objects), "--backgrounds",
                 str(backgrounds), "--n-train", "6", "--n-val", "3", "--n-test", "3",
                 "--image-size", "32", "--bias", "0.9", "--object-scale", "0.3", "0.6"])
    captured = capsys.readouterr()
    assert code == 0 and "composite data set written" in captured.out + captured.err
    assert len(_rows(out, "train")) == 6 and (out / "groups.csv").is_file()
    code = main(["data", "composite", str(tmp_path / "bad"), "--objects", str(tmp_path / "nowhere"),
                 "--backgrounds", str(backgrounds)])
    captured = capsys.readouterr()
    assert code == 2 and "objects folder" in captured.out + captured.err
