"""Folder data sets: item format, label modes, pixel-label subsets and every bad-input message."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from attnguide.data import VOC_PALETTE, open_dataset, write_label_png
from attnguide.errors import AttnGuideError

CLASSES = ("cat", "dog", "bird")
HEIGHT, WIDTH = 20, 24


def write_image(path: Path, value: int = 100, size: tuple[int, int] = (HEIGHT, WIDTH)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*size, 3), value, dtype=np.uint8)).save(path)


def write_mask(path: Path, label: int, size: tuple[int, int] = (HEIGHT, WIDTH)) -> None:
    """A label map with `label` in the middle and a 255 frame around it."""
    mask = np.zeros(size, dtype=np.uint8)
    mask[4:-4, 4:-4] = 255
    mask[6:-6, 6:-6] = label
    path.parent.mkdir(parents=True, exist_ok=True)
    write_label_png(path, mask)


def make_folder(root: Path, rows: list[tuple[str, str, str]], split: str = "train") -> Path:
    """Write classes.txt and `split`.csv; create every image and mask the rows name."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    lines = ["image,labels,mask"]
    for image, labels, mask in rows:
        write_image(root / image)
        if mask:
            first = labels.split()[0]
            write_mask(root / mask, CLASSES.index(first) + 1)
        lines.append(f"{image},{labels},{mask}")
    (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return root


def ten_rows(single: bool = True) -> list[tuple[str, str, str]]:
    """Ten images, eight with masks (the last two have none)."""
    rows = []
    for i in range(10):
        labels = CLASSES[i % 3] if single or i % 2 else f"{CLASSES[i % 3]} {CLASSES[(i + 1) % 3]}"
        rows.append((f"images/{i}.png", labels, f"masks/{i}.png" if i < 8 else ""))
    return rows


@pytest.fixture
def folder(tmp_path) -> Path:
    return make_folder(tmp_path / "ds", ten_rows())


def test_items_have_the_documented_format(folder):
    ds = open_dataset(folder, "train", image_size=16, train=False)
    assert (ds.class_names, ds.num_classes, ds.multilabel, len(ds)) == (list(CLASSES), 3, False, 10)
    assert ds.samples[0].name == "images/0" and ds.samples[0].labels == (0,)
    assert ds.samples[9].mask_path is None and ds.sources[1] == "train.csv line 3"
    item = ds[0]
    assert item["image"].shape == (3, 16, 16) and item["image"].dtype == torch.float32
    assert item["labels"].tolist() == [1.0, 0.0, 0.0]
    assert item["mask"].dtype == torch.int64 and set(item["mask"].unique().tolist()) == {0, 1, 255}
    assert item["pixel_label"].item() is True and item["index"] == 0
    unmasked = ds[9]
    assert (unmasked["mask"] == 255).all() and unmasked["pixel_label"].item() is False

    image, mask = ds.load_raw(0)
    assert image.shape == (HEIGHT, WIDTH, 3) and image.dtype == np.uint8
    assert mask.shape == (HEIGHT, WIDTH) and mask.dtype == np.int64
    assert ds.load_raw(9)[1] is None


def test_auto_mode_turns_multi_label_when_a_row_has_several_labels(tmp_path):
    root = make_folder(tmp_path / "multi", ten_rows(single=False))
    ds = open_dataset(root)
    assert ds.multilabel and ds[0]["labels"].tolist() == [1.0, 1.0, 0.0]
    with pytest.raises(AttnGuideError, match=r"mode='single'.*train\.csv line 2"):
        open_dataset(root, mode="single")
    assert not open_dataset(make_folder(tmp_path / "single", ten_rows()), mode="auto").multilabel


def test_pixel_label_subsets_are_seeded_nested_and_counted(folder):
    with_mask = set(range(8))
    assert open_dataset(folder).pixel_labelled == with_mask
    four = open_dataset(folder, pixel_labels=4, seed=0).pixel_labelled
    assert len(four) == 4 and four <= with_mask
    assert open_dataset(folder, pixel_labels=4, seed=0).pixel_labelled == four
    assert four <= open_dataset(folder, pixel_labels=6, seed=0).pixel_labelled
    assert (
        len(
            {
                frozenset(open_dataset(folder, pixel_labels=4, seed=s).pixel_labelled)
                for s in range(6)
            }
        )
        > 1
    )
    assert len(open_dataset(folder, pixel_labels="50%").pixel_labelled) == 5
    assert len(open_dataset(folder, pixel_labels="25%").pixel_labelled) == 3  # 2.5 rounds up
    assert open_dataset(folder, pixel_labels=0).pixel_labelled == set()
    assert open_dataset(folder, pixel_labels="all").pixel_labelled == open_dataset(folder).pixel_labelled  # as the CLI

    ds = open_dataset(folder, pixel_labels=2, seed=1)
    flags = [bool(ds[i]["pixel_label"]) for i in range(len(ds))]
    assert {i for i, flag in enumerate(flags) if flag} == ds.pixel_labelled


@pytest.mark.parametrize("bad", [9, "90%", -1, "ten", "150%", True, 0.5])
def test_bad_pixel_label_requests_are_explained(folder, bad):
    with pytest.raises(AttnGuideError, match="pixel_labels"):
        open_dataset(folder, pixel_labels=bad)


def test_too_many_pixel_labels_says_how_many_masks_exist(folder):
    with pytest.raises(AttnGuideError, match="only 8 of the split's 10 images have a mask"):
        open_dataset(folder, pixel_labels=9)


def test_missing_folder_split_and_files_are_named(tmp_path, folder):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        open_dataset(tmp_path / "nowhere")
    (tmp_path / "plain").mkdir()
    with pytest.raises(AttnGuideError, match=r"classes\.txt.*JPEGImages"):
        open_dataset(tmp_path / "plain")
    with pytest.raises(FileNotFoundError, match=r"val\.csv.*splits found.*\['train'\]"):
        open_dataset(folder, "val")
    (folder / "images" / "3.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"train\.csv line 5: image .*3\.png"):
        open_dataset(folder)
    write_image(folder / "images" / "3.png")
    (folder / "masks" / "1.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"train\.csv line 3: mask .*1\.png"):
        open_dataset(folder)


def test_unknown_class_lists_the_known_ones(tmp_path):
    rows = [("images/0.png", "cat", ""), ("images/1.png", "dog zebra", "")]
    root = make_folder(tmp_path / "ds", rows)
    with pytest.raises(AttnGuideError, match=r"line 3.*'zebra'.*\['cat', 'dog', 'bird'\]"):
        open_dataset(root)


def test_corrupt_image_names_file_and_row_when_read(folder):
    (folder / "images" / "2.png").write_bytes(b"not a png at all")
    ds = open_dataset(folder, check_files=False)  # cheap checks only at open time
    with pytest.raises(AttnGuideError, match=r"2\.png.*train\.csv line 4"):
        ds[2]


def test_mask_size_mismatch_names_both_sizes_and_the_file(folder):
    write_mask(folder / "masks" / "4.png", 2, size=(10, 12))
    with pytest.raises(AttnGuideError, match=r"4\.png is 12x10.*is 24x20.*train\.csv line 6"):
        open_dataset(folder)[4]


def test_rgb_mask_is_decoded_with_the_voc_palette_or_refused(folder):
    mask = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    mask[5:15, 5:15] = 1  # cat, the row's label (a mask may only show the row's classes)
    mask[0, :] = 255
    Image.fromarray(VOC_PALETTE[mask]).save(folder / "masks" / "0.png")
    _, decoded = open_dataset(folder).load_raw(0)
    assert np.array_equal(decoded, mask)

    odd = VOC_PALETTE[mask].copy()
    odd[0, 0] = (1, 2, 3)
    Image.fromarray(odd).save(folder / "masks" / "0.png")
    with pytest.raises(AttnGuideError, match=r"0\.png.*\(1, 2, 3\).*not a label map"):
        open_dataset(folder)[0]


def test_out_of_range_mask_values_are_named(folder):
    write_mask(folder / "masks" / "5.png", 7)
    with pytest.raises(AttnGuideError, match=r"5\.png.*\[7\].*3 classes"):
        open_dataset(folder)[5]


def test_empty_split_and_malformed_files_are_reported(folder):
    (folder / "val.csv").write_text("image,labels,mask\n")
    with pytest.raises(AttnGuideError, match="'val'.*lists no image"):
        open_dataset(folder, "val")
    (folder / "val.csv").write_text("file,classes\nimages/0.png,cat\n")
    with pytest.raises(AttnGuideError, match=r"lacks column.*'image'"):
        open_dataset(folder, "val")
    (folder / "val.csv").write_text("image,labels,mask\nimages/0.png,cat,\nimages/0.png,dog,\n")
    with pytest.raises(AttnGuideError, match="already listed at val.csv line 2"):
        open_dataset(folder, "val")
    (folder / "classes.txt").write_text("background\ncat\n")
    with pytest.raises(AttnGuideError, match="leave background out"):
        open_dataset(folder)
    (folder / "classes.txt").write_text("cat\ndog\ncat\n")
    with pytest.raises(AttnGuideError, match=r"\['cat'\] more than once"):
        open_dataset(folder)


@pytest.mark.parametrize(
    ("kwargs", "named"), [({"mode": "both"}, "mode"), ({"image_size": 0}, "image_size")]
)
def test_bad_arguments_are_named(folder, kwargs, named):
    with pytest.raises(AttnGuideError, match=named):
        open_dataset(folder, **kwargs)
