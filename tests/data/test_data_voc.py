"""VOC 2012 (+SBD) round trip through make_tiny_voc: roots, splits, labels from masks and XML."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from attnguide.data import VOC_CLASSES, VOC_PALETTE, make_tiny_voc, open_dataset, write_label_png
from attnguide.errors import AttnGuideError


@pytest.fixture
def voc(tmp_path) -> Path:
    return make_tiny_voc(tmp_path, n_train=6, n_val=4, image_size=(64, 80), seed=0)


def xml_labels(voc: Path, image_id: str) -> tuple[int, ...]:
    root = ET.parse(voc / "Annotations" / f"{image_id}.xml").getroot()
    return tuple(sorted({VOC_CLASSES.index(obj.findtext("name")) for obj in root.iter("object")}))


def test_builder_writes_real_voc_files(voc):
    assert voc.parts[-2:] == ("VOCdevkit", "VOC2012")
    sizes = set()
    for mask_path in (voc / "SegmentationClass").glob("*.png"):
        with Image.open(mask_path) as mask_file:
            assert mask_file.mode == "P"
            assert np.array_equal(np.reshape(mask_file.getpalette(), (-1, 3)), VOC_PALETTE)
            mask = np.array(mask_file)
        assert 255 in mask and 0 in mask
        with Image.open(voc / "JPEGImages" / f"{mask_path.stem}.jpg") as image_file:
            assert image_file.size == mask.shape[::-1]
            sizes.add(image_file.size)
    assert len(sizes) > 1  # sizes vary, as in real VOC
    difficult = [
        d.text for p in (voc / "Annotations").glob("*.xml") for d in ET.parse(p).iter("difficult")
    ]
    assert "1" in difficult


def test_any_of_the_usual_roots_opens_the_same_data(voc):
    for root in (voc, voc.parent, voc.parent.parent):
        ds = open_dataset(root, "train", image_size=32)
        assert ds.root == voc and len(ds) == 6
    assert len(open_dataset(voc, "val")) == 4


def test_labels_come_from_masks_and_agree_with_the_annotations(voc):
    ds = open_dataset(voc, "val", image_size=32, train=False)
    assert ds.multilabel and ds.class_names == list(VOC_CLASSES)
    for i, sample in enumerate(ds.samples):
        assert sample.mask_path.parent.name == "SegmentationClass"
        assert sample.labels == xml_labels(voc, sample.name)
        _, mask = ds.load_raw(i)
        assert set(np.unique(mask)) == {0, 255, *(k + 1 for k in sample.labels)}
        item = ds[i]
        assert item["labels"].nonzero().flatten().tolist() == list(sample.labels)
        assert 255 in item["mask"] and bool(item["pixel_label"])


def test_train_aug_uses_sbd_masks_for_sbd_only_images(voc):
    ds = open_dataset(voc, "train_aug", image_size=32)
    assert len(ds) == 12
    sbd_only = [s for s in ds.samples if s.name.startswith("2008_")]
    assert len(sbd_only) == 6
    for sample in sbd_only:
        assert sample.mask_path.parent.name == "SegmentationClassAug"
        with Image.open(sample.mask_path) as mask_file:
            assert mask_file.mode == "L"
        assert sample.labels == xml_labels(voc, sample.name)
    assert ds.pixel_labelled == set(range(12))
    assert not {s.name for s in ds.samples} & {s.name for s in open_dataset(voc, "val").samples}


def test_images_without_masks_take_their_labels_from_xml(voc):
    (voc / "SegmentationClassAug" / "2008_000002.png").unlink()
    ds = open_dataset(voc, "train_aug", image_size=32)
    index = [s.name for s in ds.samples].index("2008_000002")
    sample = ds.samples[index]
    assert sample.mask_path is None and sample.labels == xml_labels(voc, sample.name)
    assert index not in ds.pixel_labelled
    item = ds[index]
    assert (item["mask"] == 255).all() and not item["pixel_label"]
    assert item["labels"].sum() == len(sample.labels)

    xml = voc / "Annotations" / "2008_000002.xml"
    xml.write_text(
        xml.read_text().replace(
            f"<name>{VOC_CLASSES[sample.labels[0]]}</name>", "<name>dragon</name>"
        )
    )
    with pytest.raises(AttnGuideError, match=r"2008_000002\.xml.*'dragon'.*'aeroplane'"):
        open_dataset(voc, "train_aug")
    xml.unlink()
    with pytest.raises(FileNotFoundError, match="2008_000002.*no mask.*no annotation"):
        open_dataset(voc, "train_aug")


def test_missing_sbd_and_unknown_splits_say_what_to_add(tmp_path):
    voc = make_tiny_voc(tmp_path, sbd=False)
    assert not (voc / "SegmentationClassAug").exists()
    with pytest.raises(FileNotFoundError, match="train_aug.*Add SBD"):
        open_dataset(voc, "train_aug")
    with pytest.raises(FileNotFoundError, match=r"'test'.*\['train', 'trainval', 'val'\]"):
        open_dataset(voc, "test")


def test_deeplab_style_lists_and_bad_masks(voc):
    deeplab = voc / "ImageSets" / "SegmentationAug"
    deeplab.mkdir(parents=True)
    lines = [
        f"/JPEGImages/{i}.jpg /SegmentationClassAug/{i}.png" for i in ("2007_000001", "2008_000003")
    ]
    (deeplab / "pairs.txt").write_text("\n".join(lines) + "\n")
    assert [s.name for s in open_dataset(voc, "pairs").samples] == ["2007_000001", "2008_000003"]

    mask = np.zeros((64, 80), dtype=np.uint8)
    mask[10:20, 10:20] = 40
    write_label_png(voc / "SegmentationClass" / "2007_000001.png", mask)
    with pytest.raises(AttnGuideError, match=r"2007_000001\.png.*\[40\].*20 classes"):
        open_dataset(voc, "train")
