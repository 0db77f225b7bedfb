"""create_model / load_weights / load_model: timm names, local weights files, trained runs."""

from __future__ import annotations

import logging

import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file

from attnguide.engine import TrainConfig
from attnguide.errors import AttnGuideError
from attnguide.io.checkpoints import save_checkpoint
from attnguide.models.classifiers import create_model
from attnguide.models.trained import load_model
from attnguide.models.weights import load_weights


def test_unknown_model_lists_close_timm_names():
    with pytest.raises(AttnGuideError, match=r"unknown timm model 'resnet81'.*resnet18"):
        create_model("resnet81", num_classes=3)


def test_torchvision_state_dict_loads_with_the_classifier_resized(tmp_path, caplog):
    tv = torchvision.models.resnet18(num_classes=1000)
    path = tmp_path / "resnet18-torchvision.pth"
    torch.save(tv.state_dict(), path)
    with caplog.at_level(logging.INFO, logger="attnguide"):
        model = create_model("resnet18", num_classes=3, weights=path)
    assert model.get_classifier().out_features == 3
    assert torch.equal(model.conv1.weight, tv.conv1.weight)
    assert torch.equal(model.layer4[1].bn2.running_var, tv.layer4[1].bn2.running_var)
    assert "fc.weight: (1000, 512) -> (3, 512)" in caplog.text  # the re-sized classifier is reported


def test_safetensors_nested_prefixed_and_missing_unexpected_report(tmp_path):
    src = timm.create_model("test_resnet", num_classes=7)
    state = {k: v.clone() for k, v in src.state_dict().items()}
    state.pop("layer1.0.conv1.weight")  # missing in the file
    state["extra.head.weight"] = torch.zeros(2)  # unexpected
    save_file(state, str(tmp_path / "w.safetensors"))
    model = timm.create_model("test_resnet", num_classes=3)
    report = load_weights(model, tmp_path / "w.safetensors")
    assert report.missing == ["layer1.0.conv1.weight"]
    assert report.unexpected == ["extra.head.weight"]
    assert sorted(d.split(":")[0] for d in report.dropped) == ["fc.bias", "fc.weight"]
    assert torch.equal(model.layer4[0].conv2.weight, src.layer4[0].conv2.weight)
    text = report.summary()
    assert "missing in the file" in text and "unexpected in the file" in text

    # a training script's {"state_dict": {"module.<key>": ...}} is unwrapped
    nested = {"epoch": 3, "state_dict": {"module." + k: v for k, v in src.state_dict().items()}}
    torch.save(nested, tmp_path / "ddp.pt")
    report = load_weights(timm.create_model("test_resnet", num_classes=7), tmp_path / "ddp.pt")
    assert report.prefix == "module." and not report.missing and not report.dropped


def test_weights_of_another_architecture_or_no_file(tmp_path):
    torch.save({"encoder.weight": torch.ones(2)}, tmp_path / "other.pt")
    with pytest.raises(AttnGuideError, match="another architecture"):
        create_model("test_resnet", num_classes=2, weights=tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        create_model("test_resnet", num_classes=2, weights=tmp_path / "missing.pt")


def test_pretrained_offline_fails_at_once_with_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(AttnGuideError) as info:
        create_model("resnet18", num_classes=3, pretrained=True)
    message = str(info.value)
    assert "\n" not in message and "--weights" in message


def test_load_model_from_a_run_folder(tmp_path):
    model = timm.create_model("test_resnet", num_classes=2)
    cfg = TrainConfig(data="d", model="test_resnet", cam="gradcampp", alpha=0.5, image_size=64)
    save_checkpoint({"model": model.state_dict(), "model_name": "test_resnet",
                     "class_names": ["cat", "dog"], "multilabel": False, "layer": "layer3",
                     "image_size": 64, "config": cfg.to_dict()}, tmp_path / "best.pt")
    trained = load_model(tmp_path)
    assert trained.class_names == ["cat", "dog"] and not trained.multilabel
    assert not trained.model.training and trained.image_size == 64
    assert torch.equal(trained.model.fc.weight, model.fc.weight)
    guide = trained.guide()
    assert guide.layer_name == "layer3" and guide.alpha == 0.5
    assert trained.guide(layer="layer4").layer_name == "layer4"
    images = torch.randn(2, 3, 112, 112)  # layer3 of test_resnet: a 7x7 map
    probs = trained.predict(images)
    assert probs.shape == (2, 2) and torch.allclose(probs.sum(1), torch.ones(2))
    maps = guide.attention(images, resize=True, normalize=True)
    assert maps.shape == (2, 1, 112, 112)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no best.pt or last.pt"):
        load_model(tmp_path / "empty")


def test_one_loader_with_the_shape_policy_as_a_parameter():
    src = timm.create_model("test_resnet", num_classes=7)
    model = timm.create_model("test_resnet", num_classes=3)
    report = load_weights(model, src.state_dict(), on_mismatch="drop", report=False)
    assert report.path == "<state dict>" and len(report.dropped) == 2
    assert report.loaded[0] == next(iter(model.state_dict()))  # the model's order
    with pytest.raises(AttnGuideError, match=r"encoder file has tensors of the wrong shape: "
                                             r"fc\.weight: file \(7, 96\) vs model \(3, 96\)"):
        load_weights(model, src.state_dict(), on_mismatch="raise", source="encoder file")
    with pytest.raises(AttnGuideError, match="on_mismatch"):
        load_weights(model, src.state_dict(), on_mismatch="ignore")
