"""DeepLab-LargeFOV shape/stride and LR split, VGG16 weight loading, smp models via create_segmenter."""

from __future__ import annotations

import sys

import pytest
import timm
import torch
import torchvision

from attnguide.errors import AttnGuideError
from attnguide.models.segmenters import DeepLabLargeFOV, create_segmenter, load_vgg16_weights


@pytest.fixture(scope="module")
def largefov() -> DeepLabLargeFOV:
    torch.manual_seed(0)
    return DeepLabLargeFOV(num_classes=21).eval()


def test_largefov_output_size_and_stride(largefov):
    x = torch.randn(1, 3, 65, 65)
    with torch.no_grad():
        features = largefov.forward_features(x)
        logits = largefov(x)
        small = largefov.classifier(features)
    assert features.shape == (1, 1024, 9, 9)  # ceil(65 / 8)
    assert small.shape == (1, 21, 9, 9)
    assert logits.shape == (1, 21, 65, 65)  # upsampled back to the input
    assert largefov.output_stride == 8
    with torch.no_grad():
        assert largefov.forward_features(torch.zeros(1, 3, 64, 48)).shape[-2:] == (8, 6)


def test_largefov_layers(largefov):
    convs = [m for m in largefov.features if isinstance(m, torch.nn.Conv2d)]
    pools = [m for m in largefov.features if isinstance(m, torch.nn.MaxPool2d)]
    assert len(convs) == 13 and all(c.dilation == (2, 2) for c in convs[10:])
    assert [p.stride for p in pools] == [2, 2, 2, 1, 1]
    assert all(p.kernel_size == 3 and p.padding == 1 for p in pools)
    assert largefov.fc6.dilation == (12, 12) and largefov.fc6.out_channels == 1024
    assert largefov.fc7.out_channels == 1024 and largefov.classifier.kernel_size == (1, 1)


def test_head_lr_split(largefov):
    groups = largefov.param_groups(lr=1e-3)
    assert [g["lr"] for g in groups] == [1e-3, pytest.approx(1e-2)]
    head = {id(p) for p in groups[1]["params"]}
    assert head == {id(largefov.classifier.weight), id(largefov.classifier.bias)}
    assert len(groups[0]["params"]) + 2 == len(list(largefov.parameters()))
    torch.optim.SGD(groups, lr=1e-3, momentum=0.9)  # accepted as is


def test_conv_names_match_torchvision_and_timm_vgg16(largefov):
    ours = {f"features.{k}": v.shape for k, v in largefov.features.state_dict().items()}
    with torch.device("meta"):
        tv = torchvision.models.vgg16().state_dict()
        tm = timm.create_model("vgg16").state_dict()
    for reference in (tv, tm):
        assert {k: v.shape for k, v in reference.items() if k.startswith("features.")} == ours


def test_load_vgg16_weights(tmp_path, largefov):
    state = {
        f"features.{k}": torch.full_like(v, 0.5) for k, v in largefov.features.state_dict().items()
    }
    state["classifier.0.weight"] = torch.zeros(2, 2)  # torchvision's fc6, not used
    path = tmp_path / "vgg16.pth"
    torch.save(state, path)
    model = DeepLabLargeFOV(num_classes=3)
    report = load_vgg16_weights(model, path)
    assert len(report.loaded) == 26 and report.missing == []
    assert report.unexpected == ["classifier.0.weight"]
    assert (model.features[28].bias == 0.5).all()

    del state["features.28.bias"]
    torch.save({"state_dict": state}, path)  # wrapped checkpoints are unwrapped
    assert load_vgg16_weights(DeepLabLargeFOV(num_classes=3), path).missing == ["features.28.bias"]

    torch.save({"layer1.weight": torch.zeros(1)}, path)
    with pytest.raises(AttnGuideError, match="none of the expected parameter names"):
        load_vgg16_weights(model, path)
    torch.save({"features.0.weight": torch.zeros(1)}, path)
    with pytest.raises(AttnGuideError, match="wrong shape"):
        load_vgg16_weights(model, path)
    with pytest.raises(FileNotFoundError):
        load_vgg16_weights(model, tmp_path / "missing.pth")


def test_create_segmenter_largefov_rejects_other_encoders():
    with pytest.raises(AttnGuideError, match="fixed VGG16 encoder"):
        create_segmenter("deeplab-largefov", "resnet18", 21)


@pytest.mark.parametrize("encoder", ["resnet18", "tu-resnet18"])
def test_create_smp_unet(encoder):
    model = create_segmenter("unet", encoder, num_classes=5).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 5, 64, 64)


def test_smp_encoder_weights_from_a_local_file(tmp_path):
    tv = torchvision.models.resnet18()
    torch.nn.init.constant_(tv.conv1.weight, 0.25)
    torch.save(tv.state_dict(), tmp_path / "r18.pth")  # includes fc.*, which the encoder lacks
    model = create_segmenter("unet", "resnet18", 5, encoder_weights_path=tmp_path / "r18.pth")
    assert (model.encoder.conv1.weight == 0.25).all()

    tm = timm.create_model("resnet18")
    torch.nn.init.constant_(tm.conv1.weight, 0.75)
    from safetensors.torch import save_file

    save_file(tm.state_dict(), tmp_path / "r18.safetensors")
    model = create_segmenter(
        "unet", "tu-resnet18", 5, encoder_weights_path=tmp_path / "r18.safetensors"
    )
    assert (model.encoder.model.conv1.weight == 0.75).all()

    partial = {k: v for k, v in tv.state_dict().items() if not k.startswith("layer4")}
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.warns(UserWarning, match="initial values"):
        create_segmenter("unet", "resnet18", 5, encoder_weights_path=tmp_path / "partial.pth")


def test_smp_name_errors_list_valid_names():
    with pytest.raises(
        AttnGuideError, match=r"unknown segmenter arch 'unett'.*'unet'.*deeplab-largefov"
    ):
        create_segmenter("unett", "resnet18", 21)
    with pytest.raises(AttnGuideError, match=r"unknown encoder 'resnet19'.*resnet18.*tu-<name>"):
        create_segmenter("unet", "resnet19", 21)
    with pytest.raises(AttnGuideError, match=r"unknown timm encoder 'tu-resnet19'"):
        create_segmenter("unet", "tu-resnet19", 21)
    with pytest.raises(AttnGuideError, match=r"smp cannot build 'dpt'"):
        create_segmenter("dpt", "resnet18", 21)


def test_missing_smp_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "segmentation_models_pytorch", None)
    with pytest.raises(AttnGuideError, match=r"pip install 'attnguide\[seg\]'"):
        create_segmenter("unet", "resnet18", 21)
    assert isinstance(create_segmenter("deeplab-largefov", None, 2), DeepLabLargeFOV)


def test_decoder_channels_set_the_smp_decoder_width():
    narrow = create_segmenter("unet", "resnet18", 5, decoder_channels=(64, 32, 16, 8, 4))
    assert narrow.segmentation_head[0].in_channels == 4
    assert sum(p.numel() for p in narrow.decoder.parameters()) < sum(
        p.numel() for p in create_segmenter("unet", "resnet18", 5).decoder.parameters()) / 4
    with torch.no_grad():
        assert narrow.eval()(torch.zeros(1, 3, 64, 64)).shape == (1, 5, 64, 64)
    assert create_segmenter("deeplabv3plus", "resnet18", 5, decoder_channels=64).segmentation_head[0].in_channels == 64


@pytest.mark.parametrize("arch, widths, match", [
    ("unet", (64, 32, 16, 8), r"decoder_channels \(64, 32, 16, 8\).*one width per decoder stage"),
    ("unet", 64, "one width per decoder stage for unet"),
    ("fpn", 64, "smp.s .fpn. has no decoder_channels setting"),
    ("deeplabv3plus", (64, 32), "one number for deeplabv3"),
    ("deeplab-largefov", 64, "fixed decoder"),
])
def test_decoder_channels_errors_name_the_setting(arch, widths, match):
    with pytest.raises(AttnGuideError, match=match):
        create_segmenter(arch, "resnet18" if arch != "deeplab-largefov" else None, 5, decoder_channels=widths)
