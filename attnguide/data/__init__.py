"""Data sets for attnguide: folder data sets, VOC 2012 (+SBD), and built-in synthetic data.

>>> from attnguide.data import open_dataset, make_scenes
>>> ds = open_dataset(make_scenes("data/scenes"), "train", image_size=96)
>>> item = ds[0]  # image (3, 96, 96) float32, labels (C,), mask (96, 96) int64, ...
"""

from attnguide.data.dataset import ImageLabelDataset, open_dataset, select_pixel_labelled
from attnguide.data.io import IGNORE_INDEX, VOC_PALETTE, read_label_map, read_rgb, write_label_png
from attnguide.data.sample import Sample
from attnguide.data.scene_drawing import SHAPES, TEXTURES
from attnguide.data.scenes import make_scenes
from attnguide.data.synthetic import make_tiny_voc
from attnguide.data.transforms import IMAGENET_MEAN, IMAGENET_STD, joint_transform
from attnguide.data.voc import VOC_CLASSES

__all__ = [
    "IGNORE_INDEX",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SHAPES",
    "TEXTURES",
    "VOC_CLASSES",
    "VOC_PALETTE",
    "ImageLabelDataset",
    "Sample",
    "joint_transform",
    "make_scenes",
    "make_tiny_voc",
    "open_dataset",
    "read_label_map",
    "read_rgb",
    "select_pixel_labelled",
    "write_label_png",
]
