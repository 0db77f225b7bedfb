"""Boxes filled and clicks grown by a dense CRF: the seeds, the masks, and `attnguide data
box-masks` / `data point-masks`."""

from __future__ import annotations

import csv
import warnings

import numpy as np
import pytest

from attnguide.cli.main import main
from attnguide.constants import IGNORE
from attnguide.data import make_scenes, open_dataset
from attnguide.errors import AttnGuideError
from attnguide.io.labels import load_label_png
from attnguide.tasks.annotation_masks import make_box_masks, make_point_masks
from attnguide.wsss.box_masks import box_mask, box_seeds
from attnguide.wsss.point_masks import point_mask, point_seeds

pytest.importorskip("pydensecrf.densecrf")


def _squares() -> np.ndarray:
    """A grey 32x32 image with a red square (class 0) and a blue one (class 1)."""
    image = np.full((32, 32, 3), 128, np.uint8)
    image[4:14, 4:14] = (220, 20, 20)
    image[18:28, 16:30] = (20, 20, 220)
    return image


def test_seeds_centre_is_the_class_the_rest_of_the_box_open_outside_background():
    seeds, allowed, owner = box_seeds([(1, 8, 8, 24, 24)], (32, 32), inner=0.5)
    assert seeds[0, 0] == 0 and seeds[16, 16] == 2 and seeds[9, 9] == IGNORE
    assert (seeds == 2).sum() == 8 * 8 and (seeds == IGNORE).sum() == 16 * 16 - 8 * 8
    assert allowed.shape == (32, 32, 3) and allowed[..., 0].all()
    assert allowed[9, 9, 2] and not allowed[0, 0, 2] and not allowed[..., 1].any()
    assert owner[9, 9] == 2 and owner[16, 16] == 2 and owner[0, 0] == 0


def test_smaller_boxes_are_drawn_over_larger_ones():
    seeds, allowed, owner = box_seeds([(0, 0, 0, 32, 32), (1, 10, 10, 20, 20)], (32, 32), inner=1.0)
    assert seeds[15, 15] == 2 and seeds[2, 2] == 1
    assert owner[15, 15] == 2 and owner[2, 2] == 1
    assert allowed[15, 15, 1] and allowed[15, 15, 2]


def test_mask_follows_the_objects_inside_loose_boxes():
    image = _squares()
    truth = np.zeros((32, 32), np.uint8)
    truth[4:14, 4:14] = 1
    truth[18:28, 16:30] = 2
    boxes = [(0, 1, 1, 17, 17), (1, 13, 15, 32, 31)]  # loose: background inside each box
    mask = box_mask(image, boxes, num_classes=2)
    assert (mask == truth).mean() > 0.97
    # a pixel only ever gets background or the class of a box that holds it
    assert set(np.unique(mask[:, :13])) <= {0, 1} and (mask[17:, :] != 1).all()


def test_mask_without_boxes_is_background_and_bad_classes_are_named():
    assert not box_mask(_squares(), [], num_classes=2).any()
    with pytest.raises(AttnGuideError, match=r"box classes must lie in 0..1, got \[5\]"):
        box_mask(_squares(), [(5, 0, 0, 8, 8)], num_classes=2)
    with pytest.raises(AttnGuideError, match="inner must lie in"):
        box_seeds([(0, 0, 0, 8, 8)], (32, 32), inner=0)


def test_click_seeds_a_disc_its_class_far_pixels_background_and_between_open():
    seeds, allowed = point_seeds([(1, 16, 16)], (32, 32), radius=0.1, reach=0.5)
    # distances from (16, 16) to pixel centres: the disc holds those within 3.2 px, reach 16 px
    assert seeds[16, 16] == 2 and seeds[16, 18] == 2 and seeds[16, 20] == IGNORE
    assert seeds[0, 0] == 0 and seeds[16, 31] == IGNORE and seeds[31, 31] == 0
    assert allowed.shape == (32, 32, 3) and allowed[..., 0].all() and not allowed[..., 1].any()
    assert allowed[16, 30, 2] and not allowed[0, 0, 2]
    # overlapping discs: the nearest click's class
    seeds, _ = point_seeds([(0, 10, 16), (1, 14, 16)], (32, 32), radius=0.2, reach=0.5)
    assert seeds[15, 9] == 1 and seeds[15, 14] == 2


def test_click_mask_grows_each_click_over_its_object():
    image = _squares()
    truth = np.zeros((32, 32), np.uint8)
    truth[4:14, 4:14] = 1
    truth[18:28, 16:30] = 2
    mask = point_mask(image, [(0, 9, 9), (1, 23, 23)], num_classes=2, radius=0.1, reach=0.4)
    assert (mask == truth).mean() > 0.97
    assert not point_mask(image, [], num_classes=2).any()
    with pytest.raises(AttnGuideError, match=r"click classes must lie in 0..1, got \[3\]"):
        point_mask(image, [(3, 9, 9)], num_classes=2)
    with pytest.raises(AttnGuideError, match="click radius must lie in"):
        point_seeds([(0, 9, 9)], (32, 32), radius=0.6, reach=0.5)


@pytest.fixture()
def scenes(tmp_path):
    return make_scenes(tmp_path / "scenes", n_train=12, n_val=4, n_test=4, image_size=48, seed=0)


def test_task_writes_masks_and_a_split_that_trains(scenes, tmp_path):
    res = make_box_masks(scenes, "train", replace_masks=True, quiet=True)
    assert (res.split, res.written, res.reused) == ("train_box_masks", 12, 0)
    assert res.miou > 0.9  # the scenes' objects stand out from their backgrounds
    ds = open_dataset(scenes, "train_box_masks", train=False)
    own = open_dataset(scenes, "train", train=False)
    assert [s.name for s in ds.samples] == [s.name for s in own.samples]
    assert all(s.mask_path.parent.parent.name == "train" and "box_masks" in s.mask_path.parts
               for s in ds.samples)
    assert [s.boxes for s in ds.samples] == [s.boxes for s in own.samples]  # other columns kept
    label = load_label_png(ds.samples[0].mask_path)
    assert label.shape == (48, 48) and set(np.unique(label)) - {0} <= {c + 1 for c in ds.samples[0].labels}

    again = make_box_masks(scenes, "train", replace_masks=True, quiet=True)
    assert (again.written, again.reused, again.miou) == (0, 12, pytest.approx(res.miou))
    # a killed run: some masks gone, settings.json still there -> only those are made again
    for path in sorted((scenes / "box_masks" / "train").rglob("*.png"))[:5]:
        path.unlink()
    resumed = make_box_masks(scenes, "train", replace_masks=True, quiet=True)
    assert (resumed.written, resumed.reused, resumed.miou) == (5, 7, pytest.approx(res.miou))
    with pytest.raises(AttnGuideError, match=r"other options \(inner\); pass --overwrite"):
        make_box_masks(scenes, "train", replace_masks=True, inner=0.3, quiet=True)
    redone = make_box_masks(scenes, "train", replace_masks=True, inner=0.3, overwrite=True, quiet=True)
    assert redone.written == 12

    from attnguide.engine import TrainConfig
    from attnguide.tasks.training import train

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train(TrainConfig(data=str(scenes), train_split="train_box_masks", pixel_labels="100%",
                          guidance="auto", model="test_resnet", image_size=48, epochs=1, warmup_epochs=0,
                          batch_size=4, layer="layer3", device="cpu", quiet=True, out=str(tmp_path / "run")))
    assert (tmp_path / "run" / "last.pt").is_file()


def test_images_with_their_own_mask_keep_it(scenes):
    res = make_box_masks(scenes, "train", quiet=True)  # every scene has a mask
    assert (res.written, res.kept, res.miou) == (0, 12, None)
    with open(scenes / "train_box_masks.csv", newline="") as f:
        assert [r["mask"] for r in csv.DictReader(f)] == [
            r["mask"] for r in csv.DictReader(open(scenes / "train.csv", newline=""))]


def test_bad_input_is_named(scenes, tmp_path):
    with pytest.raises(AttnGuideError, match="not a folder data set"):
        make_box_masks(tmp_path, "train")
    rows = list(csv.DictReader(open(scenes / "val.csv", newline="")))
    with open(scenes / "val.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**r, "boxes": ""} for r in rows)
    with pytest.raises(AttnGuideError, match=r"no image of .*val.csv has a box"):
        make_box_masks(scenes, "val")


def test_cli_one_line_result_and_one_line_error(scenes, capsys):
    assert main(["data", "box-masks", str(scenes), "--replace-masks", "--split", "test"]) == 0
    out = capsys.readouterr()
    assert "split test_box_masks written" in out.out + out.err and "mIoU against" in out.out + out.err
    assert main(["data", "box-masks", str(scenes), "--inner", "1.5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --inner must lie in (0, 1]") and "\n" not in err


def test_point_masks_task_and_cli(scenes, tmp_path, capsys):
    res = make_point_masks(scenes, "train", replace_masks=True, quiet=True)
    assert (res.split, res.written, res.without) == ("train_point_masks", 12, 0)
    assert res.miou > 0.8  # the scenes' objects stand out from their backgrounds
    ds = open_dataset(scenes, "train_point_masks", train=False)
    assert all("point_masks" in s.mask_path.parts for s in ds.samples)
    # the masks' folder is a labels folder `segment --labels` reads, one file per image
    from attnguide.data.segmentation import SegmentationSet

    seg = SegmentationSet(open_dataset(scenes, "train", train=False), scenes / "point_masks" / "train", 32, (1.0, 1.0))
    assert len(seg) == 12 and seg[0]["label"].shape == (32, 32)
    again = make_point_masks(scenes, "train", replace_masks=True, quiet=True)
    assert (again.written, again.reused) == (0, 12)
    with pytest.raises(AttnGuideError, match=r"other options \(reach\); pass --overwrite"):
        make_point_masks(scenes, "train", replace_masks=True, reach=0.3, quiet=True)
    with pytest.raises(AttnGuideError, match="0 < radius < reach"):
        make_point_masks(scenes, "train", radius=0.5, reach=0.4)
    assert main(["data", "point-masks", str(scenes), "--replace-masks", "--split", "test"]) == 0
    out = capsys.readouterr()
    assert "split test_point_masks written" in out.out + out.err and "click masks made" in out.out + out.err
    assert main(["data", "point-masks", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "not a folder data set" in err and "\n" not in err
