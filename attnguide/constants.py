"""Values every layer of attnguide agrees on; defined here once."""

IGNORE = 255
"""Label-map value of pixels that carry no label (VOC's object borders, padding, unsure
pseudo labels); every loss and metric skips it."""
BACKGROUND = "background"
"""Name of label 0 in label maps: label ``c + 1`` is the data set's class ``c``."""
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
"""Input normalisation of timm's and torchvision's ImageNet weights, used for training
and saved in every checkpoint."""
