"""Boxes, clicks, avoid regions and scribbles from folder CSVs, VOC XML and the built-in
scenes: parsing, bad input naming the CSV line, augmentation that keeps them aligned, the
loader's Annotations, and training through the CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from attnguide.core.annotations import Annotations
from attnguide.data import make_scenes, make_tiny_voc, open_dataset
from attnguide.data.dataset import collate
from attnguide.data.scenes import mask_boxes, mask_points
from attnguide.data.transforms import apply_sample, joint_transform
from attnguide.errors import AttnGuideError
from attnguide.io.labels import save_label_png


def write_folder(root: Path, rows: list[dict], size=(40, 30)) -> Path:
    """A folder data set of len(rows) images (W x H = size), classes cat, dog; each image has
    a cat rectangle at columns 4..19, rows 5..14 in its mask."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("cat\ndog\n")
    w, h = size
    columns = ["image", "labels", "mask", "boxes", "points", "avoid", "scribble"]
    with (root / "train.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        for i, row in enumerate(rows):
            image = np.zeros((h, w, 3), np.uint8)
            image[5:15, 4:20] = 200
            Image.fromarray(image).save(root / "images" / f"{i}.png")
            mask = np.zeros((h, w), np.uint8)
            mask[5:15, 4:20] = 1
            save_label_png(root / "images" / f"{i}_mask.png", mask)
            writer.writerow({"image": f"images/{i}.png", "labels": "cat", "mask": f"images/{i}_mask.png",
                             **row})
    return root


def test_csv_columns_parse_into_samples_and_items(tmp_path):
    scribble = np.full((30, 40), 255, np.uint8)
    scribble[8:11, 6:12] = 1  # 3 rows: a 1-px line may fall between the rows nearest resizing keeps
    save_label_png(tmp_path / "scribble.png", scribble)
    region = np.zeros((30, 40), np.uint8)
    region[:4, :4] = 1
    save_label_png(tmp_path / "region.png", region)
    root = write_folder(tmp_path, [
        {"boxes": "cat:4,5,20,15", "points": "cat:10,9", "avoid": "30,0,40,10"},
        {"avoid": "region.png", "scribble": "scribble.png"},
        {},
    ])
    ds = open_dataset(root, "train", image_size=20, train=False, annotations="auto")
    assert ds.samples[0].boxes == ((0, 4.0, 5.0, 20.0, 15.0),) and ds.samples[0].points == ((0, 10.0, 9.0),)
    assert ds.available_kinds() == {"mask", "boxes", "points", "avoid", "scribble"}
    assert ds.pixel_labelled == {0, 1, 2}  # every row has a mask
    item = ds[0]["annotations"]  # resized 40x30 -> 20x20: x / 2, y * 2 / 3
    assert torch.allclose(item["boxes"], torch.tensor([[0, 2, 10 / 3, 10, 10]]), atol=1e-4)
    assert torch.allclose(item["points"], torch.tensor([[0, 5.25, 9.5 * 2 / 3]]), atol=1e-4)
    assert item["avoid"][:6, 15:].all() and not item["avoid"][10:].any()
    second = ds[1]["annotations"]
    assert second["avoid"][:2, :2].all() and (second["scribble"] != 255).sum() > 0
    assert ds[2]["annotations"] == {}
    batch = collate([ds[0], ds[1], ds[2]])
    assert isinstance(batch["annotations"], Annotations) and batch["image"].shape == (3, 3, 20, 20)
    assert batch["annotations"].kinds() == {"boxes", "points", "avoid", "scribble"}
    # the default stays masks only: items as before, no annotations key
    assert "annotations" not in open_dataset(root, "train", image_size=20, train=False)[0]


def test_boxes_only_select_among_images_with_boxes(tmp_path):
    root = write_folder(tmp_path, [{"boxes": "cat:4,5,20,15"}, {}, {"boxes": "cat:0,0,5,5"}])
    ds = open_dataset(root, "train", image_size=20, annotations="boxes", pixel_labels="all")
    assert ds.pixel_labelled == {0, 2} and not bool(ds[0]["pixel_label"])  # the mask is not used
    assert open_dataset(root, "train", image_size=20, annotations="boxes",
                        pixel_labels=1, seed=0).pixel_labelled <= {0, 2}


@pytest.mark.parametrize("row, message", [
    ({"boxes": "cat:20,5,4,15"}, r"train.csv line 2: boxes box 'cat:20,5,4,15' has x1 <= x0"),
    ({"boxes": "cow:1,1,5,5"}, r"train.csv line 2: boxes entry .* names class 'cow', which is not in classes.txt"),
    ({"boxes": "cat:1,1,5"}, r"train.csv line 2: boxes entry 'cat:1,1,5' is not understood"),
    ({"boxes": "dog:1,1,5,5"}, r"train.csv line 2: the boxes name \['dog'\], but the row's labels"),
    ({"points": "cat:3"}, r"train.csv line 2: points entry"),
    ({"boxes": "cat:4,5,50,15"}, r"train.csv line 2: boxes box 4,5,50,15 lies outside the image 0.png \(40x30\)"),
    ({"points": "cat:40,3"}, r"train.csv line 2: point cat:40,3 lies outside the image"),
    ({"avoid": "0,0,10,31"}, r"train.csv line 2: avoid box 0,0,10,31 lies outside"),
])
def test_bad_annotation_cells_name_the_csv_line(tmp_path, row, message):
    root = write_folder(tmp_path, [row])
    with pytest.raises(AttnGuideError, match=message):
        open_dataset(root, "train", image_size=20, annotations="auto")


def test_asking_for_a_kind_the_split_lacks(tmp_path):
    root = write_folder(tmp_path, [{}])
    with pytest.raises(AttnGuideError, match="annotations points were asked for, but no image"):
        open_dataset(root, "train", annotations="points")


def test_augmentation_keeps_boxes_and_clicks_on_the_object():
    """Random crops and flips through one v2 call: the moved box is the tight box of the moved
    mask (within a pixel of resampling) and the moved click stays on the object."""
    rng = np.random.default_rng(0)
    transform = joint_transform(32, train=True)
    for trial in range(30):
        h, w = 48, 64
        mask = np.zeros((h, w), np.uint8)
        x0, y0 = int(rng.integers(0, 30)), int(rng.integers(0, 20))
        x1, y1 = x0 + int(rng.integers(10, 30)), y0 + int(rng.integers(10, 25))
        mask[y0:y1, x0:x1] = 2
        image = np.zeros((h, w, 3), np.uint8)
        click = (1, (x0 + x1) // 2, (y0 + y1) // 2)
        torch.manual_seed(trial)
        _, m, extra = apply_sample(transform, image, mask, {
            "boxes": np.array([[1, x0, y0, x1, y1]]), "points": np.array([click])})
        if not (m == 2).any():
            assert len(extra["boxes"]) == 0
            continue
        ys, xs = (m == 2).nonzero(as_tuple=True)
        tight = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()
        assert len(extra["boxes"]) == 1 and extra["boxes"][0, 0] == 1
        assert (extra["boxes"][0, 1:] - tight).abs().max() <= 1.5, (trial, extra["boxes"], tight)
        for cls, x, y in extra["points"].tolist():
            assert cls == 1 and m[int(y), int(x)] == 2


def test_voc_xml_boxes_with_annotations_boxes(tmp_path):
    root = make_tiny_voc(tmp_path / "voc", n_train=3, n_val=1)
    plain = open_dataset(root, "train", image_size=32)
    assert all(not s.boxes for s in plain.samples)
    ds = open_dataset(root, "train", image_size=32, annotations="boxes")
    for sample in ds.samples:
        assert sample.boxes and {b[0] for b in sample.boxes} <= set(sample.labels)
        mask = np.asarray(Image.open(sample.mask_path))
        for cls, x0, y0, x1, y1 in sample.boxes:  # the drawn object lies inside its box
            ys, xs = np.nonzero(mask == cls + 1)
            assert x0 <= xs.min() and xs.max() < x1 and y0 <= ys.min() and ys.max() < y1
    assert "boxes" in ds[0]["annotations"]


def test_scenes_csv_has_boxes_and_points_of_the_true_masks(tmp_path):
    root = make_scenes(tmp_path / "scenes", n_train=6, n_val=2, n_test=2, image_size=48)
    ds = open_dataset(root, "train", image_size=32, train=False, annotations="auto")
    for sample in ds.samples:
        mask = np.asarray(Image.open(sample.mask_path))
        assert [tuple(float(v) for v in b) for b in mask_boxes(mask)] == [
            tuple(float(v) for v in b) for b in sample.boxes]
        for cls, x, y in mask_points(mask):
            assert mask[y, x] == cls + 1
        assert {b[0] for b in sample.boxes} == set(sample.labels)


def _train(cli_args) -> int:
    from attnguide.cli.main import main

    return main(["train", *cli_args])


def test_training_on_boxes_through_the_cli(tmp_path, capsys):
    root = make_scenes(tmp_path / "scenes", n_train=16, n_val=4, n_test=2, image_size=48)
    common = ["--data", str(root), "--model", "test_resnet.r160_in1k", "--image-size", "32",
              "--batch-size", "8", "--epochs", "1", "--warmup-epochs", "0", "--snapshots", "0",
              "--quiet", "--device", "cpu"]
    result = _train([*common, "--out", str(tmp_path / "run"), "--annotations", "boxes",
                     "--guidance", "auto", "--pixel-labels", "50%", "--labelled-share", "0.5"])
    assert result == 0, capsys.readouterr()
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["guidance"] == "self+energy+box_swap"
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["train_loss_energy"] > 0 and record["train_loss_box_swap"] > 0
    bad = _train([*common, "--out", str(tmp_path / "bad"), "--annotations", "boxes",
                  "--guidance", "ext"])
    assert bad == 2 and "boxes feed --guidance energy or box_l1 or box_swap" in capsys.readouterr().err
    lacking = _train([*common, "--out", str(tmp_path / "bad2"), "--guidance", "self+avoid"])
    assert lacking == 2 and "uses avoid (avoid), but no selected image" in capsys.readouterr().err


def test_annotated_draws_boxes_apart_from_the_masks(tmp_path):
    """200 masks beside every image's boxes, in small: --pixel-labels 1 --annotated all."""
    root = write_folder(tmp_path, [{"boxes": "cat:4,5,20,15"}] * 4)
    ds = open_dataset(root, "train", image_size=20, annotations="masks,boxes", pixel_labels=1,
                      annotated="all")
    assert len(ds.mask_labelled) == 1 and ds.box_labelled == {0, 1, 2, 3}
    items = [ds[i] for i in range(4)]
    assert sum(bool(it["pixel_label"]) for it in items) == 1
    assert all(len(it["annotations"]["boxes"]) == 1 for it in items)
    same = open_dataset(root, "train", image_size=20, annotations="masks,boxes", pixel_labels=1)
    assert same.mask_labelled == same.box_labelled and len(same.pixel_labelled) == 1
