"""Bad input gets one clear error that says what was wrong and how to fix it."""

from __future__ import annotations

import pytest
import timm
import torch
from core_models import TinyNet
from torch import nn

from attnguide import AttnGuideError, GuidedAttention


def data(n=2):
    return torch.randn(n, 3, 16, 16), torch.tensor([[1.0, 0, 0], [0, 1, 1]])[:n]


def test_unknown_layer_lists_close_names():
    with pytest.raises(AttnGuideError, match=r"no layer 'layer44'.*layer4"):
        GuidedAttention(timm.create_model("resnet18", num_classes=3), layer="layer44")


def test_foreign_module_as_layer():
    with pytest.raises(AttnGuideError, match="not part of the model"):
        GuidedAttention(TinyNet(), layer=nn.Conv2d(1, 1, 1))


def test_non_spatial_layer():
    guide = GuidedAttention(TinyNet(), layer="fc")
    with pytest.raises(AttnGuideError, match="spatial map"):
        guide(*data())


def test_layer_off_the_forward_path():
    model = TinyNet()
    model.unused = nn.Conv2d(3, 3, 1)
    with pytest.raises(AttnGuideError, match="was not called"):
        GuidedAttention(model, layer="unused")(*data())


def test_unknown_cam_and_mask_list_valid_names():
    with pytest.raises(AttnGuideError, match="gradcam"):
        GuidedAttention(TinyNet(), layer="features", cam="gradcam2")
    with pytest.raises(AttnGuideError, match="soft_threshold"):
        GuidedAttention(TinyNet(), layer="features", mask="soft")


@pytest.mark.parametrize(
    "labels, match",
    [
        (torch.ones(3, 3), r"B = 2"),
        (torch.ones(2, 3, 1), r"\(B, C\) multi-hot"),
        (torch.tensor([0.0, 1.0]), "int64 class indices"),
        (torch.tensor([[2.0, 0, 0], [0, 1, 0]]), r"\[0, 1\]"),
        (torch.ones(2, 4), "4 classes but the model outputs 3"),
        (torch.tensor([0, 3]), r"\[0, 2\]"),
    ],
)
def test_bad_labels(labels, match):
    guide = GuidedAttention(TinyNet(), layer="features")
    with pytest.raises(AttnGuideError, match=match):
        guide(data()[0], labels)


def test_masks_of_wrong_size_name_the_expected_shape():
    guide = GuidedAttention(TinyNet(), layer="features")
    with pytest.raises(AttnGuideError, match=r"\(2, 16, 16\).*\(2, 8, 8\)"):
        guide(*data(), masks=torch.zeros(2, 8, 8, dtype=torch.long))
    with pytest.raises(AttnGuideError, match="integer"):
        guide(*data(), masks=torch.zeros(2, 16, 16))
    with pytest.raises(AttnGuideError, match="found 7"):
        guide(*data(), masks=torch.full((2, 16, 16), 7))


def test_rows_without_positive_class_give_zero_not_nan():
    guide = GuidedAttention(TinyNet(), layer="features")
    images, _ = data()
    out = guide(images, torch.zeros(2, 3))
    assert out.losses["am"].item() == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    labels = torch.tensor([[0.0, 0, 0], [0, 1, 0]])  # one row empty, one not
    out = guide(images, labels, masks=torch.full((2, 16, 16), 255))
    assert out.pairs.tolist() == [[1, 1]] and out.losses["ext"].item() == 0


def test_outputs_that_are_not_logits():
    class DictNet(TinyNet):
        def forward(self, x):
            return {"features": super().forward(x)}

    class TupleNet(TinyNet):
        def forward(self, x):
            return (super().forward(x), None)

    with pytest.raises(AttnGuideError, match="not logits"):
        GuidedAttention(DictNet(), layer="features")(*data())
    out = GuidedAttention(TupleNet(), layer="features")(*data())  # (logits, aux) is fine
    assert out.logits.shape == (2, 3)


def test_non_finite_loss_names_the_terms():
    guide = GuidedAttention(TinyNet(), layer="features")
    images, labels = data()
    with torch.no_grad():  # NaN images are refused before the forward (tests/hardening)
        guide.model.fc.bias[0] = float("nan")
    with pytest.raises(FloatingPointError, match="cls=nan"):
        guide(images, labels)


def test_bad_images_and_options():
    guide = GuidedAttention(TinyNet(), layer="features")
    with pytest.raises(AttnGuideError, match=r"\(B, 3, H, W\)"):
        guide(torch.randn(3, 16, 16), torch.ones(3, 3))
    with pytest.raises(AttnGuideError, match="am_score"):
        GuidedAttention(TinyNet(), am_score="prob")
    with pytest.raises(AttnGuideError, match="alpha"):
        GuidedAttention(TinyNet(), alpha=-1)
    with pytest.raises(AttnGuideError, match="DDP"):
        GuidedAttention(nn.DataParallel(TinyNet()))
    with pytest.raises(AttnGuideError, match="inference_mode"), torch.inference_mode():
        guide.attention(torch.randn(1, 3, 16, 16))
