"""Tiny model factories for the core tests (no weights are downloaded)."""

from __future__ import annotations

import timm
import torch
from torch import nn


def tiny_swin(num_classes: int = 6) -> nn.Module:
    return timm.create_model(
        "swin_tiny_patch4_window7_224", embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1),
        img_size=64, window_size=4, num_classes=num_classes,
    )


def tiny_vgg(num_classes: int = 6) -> nn.Module:
    """timm's VGG class with a small configuration (VGG11 shape, narrow channels)."""
    from timm.models.vgg import VGG

    return VGG([8, "M", 16, "M", 32, 32, "M", 32, 32, "M"], num_classes=num_classes, mlp_ratio=1 / 64)


# name -> (factory, image size). Every family of the brief: resnet, vgg, efficientnet,
# convnext, vit, swin, plus nfnet.
ARCHS = {
    "resnet18": (lambda n: timm.create_model("resnet18", num_classes=n), 64),
    "vgg": (tiny_vgg, 64),
    "test_efficientnet": (lambda n: timm.create_model("test_efficientnet", num_classes=n), 64),
    "test_convnext": (lambda n: timm.create_model("test_convnext", num_classes=n), 64),
    "test_vit": (lambda n: timm.create_model("test_vit", num_classes=n, img_size=64), 64),
    "swin": (tiny_swin, 64),
    "test_nfnet": (lambda n: timm.create_model("test_nfnet", num_classes=n), 64),
}


class TinyNet(nn.Module):
    """conv(3->4) -> BN -> ReLU -> conv(4->4, 'features') -> ReLU -> GAP -> linear(4->3)."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.features = nn.Conv2d(4, 4, 3, padding=1, stride=2)
        self.act = nn.ReLU(inplace=True)
        self.fc = nn.Linear(4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.features(self.stem(x)))
        return self.fc(x.mean(dim=(2, 3)))
