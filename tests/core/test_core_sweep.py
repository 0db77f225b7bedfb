"""One guided step on a tiny model of every timm family, layer chosen automatically."""

from __future__ import annotations

import pytest
import torch
from core_models import ARCHS

from attnguide import GuidedAttention

EXPECTED_LAYER = {
    "resnet18": "layer4",
    "test_vit": "blocks.5.norm1",  # class-token ViT: the last block's patch tokens get no gradient
    "swin": "layers.3",
}


@pytest.mark.parametrize("arch", list(ARCHS))
def test_guided_step(arch):
    factory, size = ARCHS[arch]
    model = factory(4).train()
    guide = GuidedAttention(model)
    if arch in EXPECTED_LAYER:
        assert guide.layer_name == EXPECTED_LAYER[arch]
    images = torch.randn(2, 3, size, size)
    labels = torch.tensor([[1.0, 0, 1, 0], [0, 1, 0, 0]])
    masks = torch.full((2, size, size), 255)
    masks[0, : size // 2] = 0
    masks[0, size // 2 :] = 1
    out = guide(images, labels, masks)
    assert torch.isfinite(out.loss)
    assert out.attention.shape == (3, size, size)
    assert 0 <= out.attention.min() and out.attention.max() <= 1
    assert out.losses["ext"] > 0 and out.losses["am"] > 0
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    assert model.get_classifier().weight.grad.abs().sum() > 0
    maps = guide.eval().attention(images, labels.argmax(1)[:, None], resize=True, normalize=True)
    assert maps.shape == (2, 1, size, size)
