"""Data sets for attnguide: folder data sets, VOC 2012 (+SBD), and built-in synthetic data.

For users of earlier versions the label-map helpers of :mod:`attnguide.io.labels` and the
constants of :mod:`attnguide.constants` are re-exported here under their old names:
``read_label_map`` is ``load_label_png``, ``write_label_png`` is ``save_label_png``,
``IGNORE_INDEX`` is ``IGNORE``.

>>> from attnguide.data import open_dataset, make_scenes
>>> ds = open_dataset(make_scenes("data/scenes"), "train", image_size=96)
>>> item = ds[0]  # image (3, 96, 96) float32, labels (C,), mask (96, 96) int64, ...
"""

from attnguide.constants import IGNORE as IGNORE_INDEX
from attnguide.constants import IMAGENET_MEAN, IMAGENET_STD
from attnguide.data.composite import make_composite
from attnguide.data.dataset import ImageLabelDataset, open_dataset, select_pixel_labelled
from attnguide.data.io import read_rgb
from attnguide.data.sample import Sample
from attnguide.data.scene_drawing import SHAPES, TEXTURES
from attnguide.data.scenes import make_scenes
from attnguide.data.synthetic import make_tiny_voc
from attnguide.data.transforms import joint_transform
from attnguide.data.voc import VOC_CLASSES
from attnguide.io.labels import VOC_PALETTE
from attnguide.io.labels import load_label_png as read_label_map
from attnguide.io.labels import save_label_png as write_label_png

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
    "make_composite",
    "make_scenes",
    "make_tiny_voc",
    "open_dataset",
    "read_label_map",
    "read_rgb",
    "select_pixel_labelled",
    "write_label_png",
]
