"""Label-map PNG round trips, the VOC palette and the not-a-label-map errors."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from attnguide.errors import AttnGuideError
from attnguide.io.labels import (
    VOC_PALETTE,
    load_label_png,
    save_label_png,
    save_overlay,
    voc_palette,
)


def test_voc_palette_known_entries():
    palette = voc_palette()
    assert palette.shape == (256, 3) and palette.dtype == np.uint8
    assert palette[0].tolist() == [0, 0, 0]
    assert palette[1].tolist() == [128, 0, 0]
    assert palette[2].tolist() == [0, 128, 0]
    assert palette[15].tolist() == [192, 128, 128]  # VOC "person"
    assert palette[255].tolist() == [224, 224, 192]  # VOC "void" outline colour


def test_round_trip_is_exact_palette_png(tmp_path):
    label = np.random.default_rng(0).integers(0, 21, size=(7, 5)).astype(np.uint8)
    label[0, 0] = 255
    path = tmp_path / "sub" / "a.png"
    save_label_png(path, label)
    with Image.open(path) as image:
        assert image.mode == "P"
        assert image.getpalette()[3:6] == [128, 0, 0]
    np.testing.assert_array_equal(load_label_png(path), label)
    assert os.listdir(path.parent) == ["a.png"]  # no temporary file left
    (tmp_path / "plain").write_bytes(b"")
    assert path.stat().st_mode == (tmp_path / "plain").stat().st_mode  # umask, not 0600


def test_greyscale_png_is_read(tmp_path):
    label = np.array([[0, 3], [255, 1]], dtype=np.uint8)
    Image.fromarray(label).save(tmp_path / "g.png")
    np.testing.assert_array_equal(load_label_png(tmp_path / "g.png"), label)


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "a.png"
    save_label_png(path, np.zeros((2, 2), dtype=np.uint8))
    with pytest.raises(AttnGuideError, match="2-D"):
        save_label_png(path, np.zeros((2, 2, 3), dtype=np.uint8))
    with pytest.raises(AttnGuideError, match="integer"):
        save_label_png(path, np.zeros((2, 2), dtype=np.float32))
    assert os.listdir(tmp_path) == ["a.png"]
    np.testing.assert_array_equal(load_label_png(path), np.zeros((2, 2)))


def test_rgb_png_is_rejected_with_file_name(tmp_path):
    path = tmp_path / "colour.png"
    Image.fromarray(np.full((3, 3, 3), 7, dtype=np.uint8)).save(path)  # not a VOC colour
    with pytest.raises(AttnGuideError, match=r"colour\.png.*not a label map.*'RGB'"):
        load_label_png(path)


def test_voc_coloured_rgb_png_is_read_as_indices(tmp_path):
    label = np.random.default_rng(1).integers(0, 21, size=(6, 9)).astype(np.uint8)
    label[0] = 255
    Image.fromarray(voc_palette()[label]).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(load_label_png(tmp_path / "rgb.png"), label)
    rgba = np.concatenate([voc_palette()[label], np.full((6, 9, 1), 255, np.uint8)], axis=2)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(load_label_png(tmp_path / "rgba.png"), label)
    odd = voc_palette()[label]
    odd[2, 3] = (1, 2, 3)
    Image.fromarray(odd).save(tmp_path / "odd.png")
    with pytest.raises(AttnGuideError, match=r"odd\.png.*\(1, 2, 3\).*not VOC palette colours"):
        load_label_png(tmp_path / "odd.png")


def test_sixteen_bit_and_other_modes(tmp_path):
    label = np.array([[0, 3], [255, 1]], dtype=np.uint16)
    Image.fromarray(label).save(tmp_path / "i16.png")
    np.testing.assert_array_equal(load_label_png(tmp_path / "i16.png"), label)
    Image.fromarray(label * 300).save(tmp_path / "big.png")
    with pytest.raises(AttnGuideError, match=r"big\.png.*outside 0\.\.255"):
        load_label_png(tmp_path / "big.png")
    Image.fromarray(np.zeros((2, 2), dtype=np.uint8)).convert("LA").save(tmp_path / "la.png")
    with pytest.raises(AttnGuideError, match=r"la\.png.*not a label map.*'LA'"):
        load_label_png(tmp_path / "la.png", source="list.txt line 2")


def test_greyscale_write_and_palette_constant(tmp_path):
    label = np.array([[0, 3], [255, 1]], dtype=np.int64)
    save_label_png(tmp_path / "g.png", label, palette=False)
    with Image.open(tmp_path / "g.png") as image:
        assert image.mode == "L"
    np.testing.assert_array_equal(load_label_png(tmp_path / "g.png"), label)
    assert not VOC_PALETTE.flags.writeable
    np.testing.assert_array_equal(VOC_PALETTE, voc_palette())


def test_jpeg_and_non_images_and_missing_files(tmp_path):
    Image.fromarray(np.zeros((3, 3), dtype=np.uint8)).save(tmp_path / "x.jpg")
    with pytest.raises(AttnGuideError, match=r"x\.jpg.*JPEG"):
        load_label_png(tmp_path / "x.jpg")
    (tmp_path / "text.png").write_text("hello")
    with pytest.raises(AttnGuideError, match=r"text\.png.*not an image"):
        load_label_png(tmp_path / "text.png")
    with pytest.raises(FileNotFoundError, match="nope.png"):
        load_label_png(tmp_path / "nope.png")


def test_overlay_blends_foreground_only(tmp_path):
    image = np.full((2, 2, 3), 100, dtype=np.uint8)
    label = np.array([[0, 1], [0, 0]], dtype=np.uint8)
    save_overlay(tmp_path / "o.png", image, label, alpha=0.5)
    out = np.asarray(Image.open(tmp_path / "o.png"))
    assert out[0, 0].tolist() == [100, 100, 100]
    assert out[0, 1].tolist() == [114, 50, 50]  # (100 + 128) / 2, 100 / 2
    with pytest.raises(AttnGuideError, match="resize the label map"):
        save_overlay(tmp_path / "o.png", image, np.zeros((3, 3), dtype=np.uint8))
