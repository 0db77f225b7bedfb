"""Input-gradient (RRR) supervision, automatic layer choice and the coarse-map warning."""

from __future__ import annotations

import warnings

import pytest
import timm
import torch
import torch.nn.functional as F
from core_models import TinyNet

from attnguide import ActivationCapture, GuidedAttention
from attnguide.core.losses import input_gradient_loss


def test_input_gradient_loss_by_hand():
    grads = torch.zeros(2, 3, 2, 2)
    grads[0, 0] = torch.tensor([[1.0, 2.0], [0.0, 1.0]])  # energy 1, 4, 0, 1
    grads[1, 1] = 1.0
    masks = torch.tensor([[[0, 1], [0, 255]], [[255, 255], [255, 255]]])
    # image 0: background pixels (0, 0) and (1, 0) hold 1 + 0 of 6; image 1 has no label
    assert input_gradient_loss(grads, masks).item() == pytest.approx(1 / 6)


def test_rrr_term_trains_and_leaves_user_tensors_alone(monkeypatch):
    images = torch.randn(4, 3, 16, 16)
    labels = torch.eye(3)[[0, 1, 2, 0]]
    masks = torch.zeros(4, 16, 16, dtype=torch.long)
    masks[:, 4:12, 4:12] = (labels.argmax(1) + 1)[:, None, None]
    model = TinyNet()
    calls = []
    monkeypatch.setattr(ActivationCapture, "__enter__", lambda self: calls.append(1) or self)
    guide = GuidedAttention(model, layer="features", alpha=0, omega=0, rrr_weight=1.0)
    out = guide(images, labels, masks)
    assert calls == []  # RRR alone needs no CAM
    assert 0 < out.losses["rrr"].item() < 1
    assert torch.allclose(out.loss, out.losses["cls"] + out.losses["rrr"])
    out.loss.backward()
    assert model.stem[0].weight.grad.abs().sum() > 0
    assert not images.requires_grad and images.grad is None
    # and combined with GAIN_ext
    monkeypatch.undo()
    out = GuidedAttention(model, layer="features", rrr_weight=2.0)(images, labels, masks)
    assert out.losses["rrr"] > 0 and out.losses["ext"] > 0 and out.losses["am"] > 0
    expected = (out.losses["cls"] + out.losses["am"] + 10 * out.losses["ext"]
                + 2 * out.losses["rrr"])
    assert torch.allclose(out.loss, expected)


def test_rrr_gradient_pushes_input_gradient_off_the_background():
    """A few SGD steps on the RRR term alone lower the background share."""
    torch.manual_seed(0)
    images = torch.randn(8, 3, 16, 16)
    labels = torch.eye(3)[torch.arange(8) % 3]
    masks = torch.zeros(8, 16, 16, dtype=torch.long)
    masks[:, 4:12, 4:12] = 1
    model = TinyNet()
    guide = GuidedAttention(model, layer="features", alpha=0, omega=0, rrr_weight=1.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    first = None
    for _ in range(15):
        out = guide(images, labels, masks)
        first = out.losses["rrr"].item() if first is None else first
        opt.zero_grad()
        out.losses["rrr"].backward()
        opt.step()
    assert guide(images, labels, masks).losses["rrr"].item() < first


@pytest.mark.parametrize("size, expected", [(224, "layer4"), (128, "layer3"), (96, "layer2")])
def test_auto_layer_is_fine_enough_for_the_image_size(size, expected):
    model = timm.create_model("resnet18", num_classes=3)
    guide = GuidedAttention(model, layer="auto")
    assert guide.layer_name is None
    guide.attention(torch.randn(1, 3, size, size))
    assert guide.layer_name == expected


def test_coarse_map_warns_once():
    guide = GuidedAttention(timm.create_model("resnet18", num_classes=3), layer="layer4")
    images = torch.randn(2, 3, 64, 64)
    with pytest.warns(UserWarning, match=r"2x2 attention map.*layer='auto'"):
        guide.attention(images)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        guide.attention(images)


def test_batchnorm_after_the_layer_does_not_mix_images():
    """Train-mode BN after layer2: an image's attention must not depend on the other
    images' labels (it does when the batch statistics pass gradient between images)."""
    model = timm.create_model("resnet18", num_classes=5).train()
    images = torch.randn(6, 3, 64, 64)
    labels = torch.eye(5)[[0, 1, 2, 3, 4, 0]]
    masks = torch.full((6, 64, 64), 255)
    others = labels.clone()
    others[1:] = labels[1:].roll(1, dims=1)
    got = {}
    for isolate in (True, False):
        guide = GuidedAttention(model, layer="layer2", isolate_batchnorm=isolate, alpha=0, omega=1)
        a, b = guide(images, labels, masks), guide(images, others, masks)
        got[isolate] = (a.attention[0] - b.attention[0]).abs().max().item()
        assert torch.allclose(a.losses["cls"], F.binary_cross_entropy_with_logits(a.logits, labels))
    assert got[True] < 1e-6 < 1e-2 < got[False]


def test_attention_is_float32_under_autocast():
    model = timm.create_model("resnet18", num_classes=3)
    guide = GuidedAttention(model, layer="layer3")
    images = torch.randn(2, 3, 64, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = guide(images, torch.eye(3)[[0, 2]])
        maps = guide.attention(images, resize=True, normalize=True)
    assert out.attention.dtype == torch.float32 and maps.dtype == torch.float32


def test_guided_step_under_inference_mode_is_a_clear_error():
    from attnguide import AttnGuideError

    guide = GuidedAttention(TinyNet(), layer="features")
    with pytest.raises(AttnGuideError, match="inference_mode"), torch.inference_mode():
        guide(torch.randn(2, 3, 16, 16), torch.eye(3)[[0, 1]])
