"""The public contract of GuidedAttention."""

from __future__ import annotations

import timm
import torch
import torch.nn.functional as F
from core_models import TinyNet

from attnguide import ActivationCapture, GuidedAttention, HardThreshold, SoftThreshold


def data(n=4, c=3, size=16):
    images = torch.randn(n, 3, size, size)
    labels = torch.zeros(n, c)
    labels[torch.arange(n), torch.arange(n) % c] = 1
    return images, labels


def test_no_labels_gives_plain_logits():
    model = TinyNet().eval()
    guide = GuidedAttention(model, layer="features")
    images, _ = data()
    assert torch.equal(guide(images), model(images))


def test_guidance_off_is_a_plain_classification_step(monkeypatch):
    images, labels = data()
    model, ref = TinyNet(), TinyNet()
    ref.load_state_dict(model.state_dict())
    calls = []
    monkeypatch.setattr(ActivationCapture, "__enter__", lambda self: calls.append(1) or self)
    out = GuidedAttention(model, layer="features")(images, labels, guidance=False)
    out.loss.backward()
    F.binary_cross_entropy_with_logits(ref(images), labels).backward()
    assert calls == [] and out.attention is None
    for p, q in zip(model.parameters(), ref.parameters()):
        assert torch.allclose(p.grad, q.grad)


def test_single_label_uses_cross_entropy_and_softmax():
    images, labels = data()
    targets = labels.argmax(1)
    model = TinyNet()
    out = GuidedAttention(model, layer="features")(images, targets)
    assert torch.allclose(out.losses["cls"], F.cross_entropy(out.logits, targets))
    assert out.pairs.tolist() == [[i, int(t)] for i, t in enumerate(targets)]
    assert 0 < out.losses["am"] < 1


def test_batches_mix_images_with_and_without_masks():
    images, labels = data(2)
    masks = torch.randint(0, 4, (2, 16, 16))
    model = TinyNet().eval()
    guide = GuidedAttention(model, layer="features", alpha=0)
    both = guide(images, labels, masks).losses["ext"]
    masks_one = masks.clone()
    masks_one[1] = 255
    only_first = guide(images, labels, masks_one).losses["ext"]
    alone = guide(images[:1], labels[:1], masks[:1]).losses["ext"]
    assert torch.allclose(only_first, alone)
    assert not torch.allclose(both, alone)


def test_cap_on_pairs_per_image():
    images = torch.randn(3, 3, 16, 16)
    labels = torch.ones(3, 3)
    out = GuidedAttention(TinyNet(), layer="features", max_pairs_per_image=2)(images, labels)
    assert out.pairs.shape == (6, 2)
    assert torch.bincount(out.pairs[:, 0]).tolist() == [2, 2, 2]


def test_state_dict_is_the_bare_models():
    model = timm.create_model("test_resnet", num_classes=3)
    guide = GuidedAttention(model)
    fresh = timm.create_model("test_resnet", num_classes=3)
    fresh.load_state_dict(guide.state_dict())
    guide.load_state_dict(fresh.state_dict())
    assert list(guide.state_dict()) == list(model.state_dict())


def test_probe_finds_last_spatial_layer_of_a_plain_model():
    guide = GuidedAttention(TinyNet())
    assert guide.layer_name is None
    guide(*data())
    assert guide.layer_name == "act"


def test_captured_activation_survives_inplace_ops():
    """TinyNet applies ReLU(inplace=True) right after 'features': the map must use
    the conv output, not the rectified one."""
    model = TinyNet().eval()
    images, _ = data()
    guide = GuidedAttention(model, layer="features", cam="hirescam")
    maps = guide.attention(images, torch.tensor([0, 1, 2, 0]))
    pre = model.features(model.stem(images))
    grads = model.fc.weight[[0, 1, 2, 0]][:, :, None, None] / 64 * (pre > 0)
    assert torch.allclose(maps[:, 0], F.relu((grads * pre).sum(1)), atol=1e-6)


def test_mask_functions():
    att = torch.tensor([[0.2, 0.5, 0.9]])
    soft = SoftThreshold(0.5, 10)(att)
    assert torch.allclose(soft, torch.sigmoid(10 * (att - 0.5)))
    att.requires_grad_(True)
    hard = HardThreshold(0.5)(att)
    assert torch.allclose(hard, torch.tensor([[0.0, 0.0, 1.0]]))
    hard.sum().backward()
    assert torch.allclose(att.grad, 10 * soft * (1 - soft))  # straight-through: soft's gradient
    guide = GuidedAttention(TinyNet(), layer="features", mask=SoftThreshold(0.3, 20), fill=1.0)
    erased = guide.erase(torch.zeros(1, 3, 2, 2), torch.ones(1, 2, 2))
    assert torch.equal(erased, torch.ones(1, 3, 2, 2))


def test_custom_cam_callable_and_validation_under_no_grad():
    images, labels = data()
    seen = []

    def mine(acts, grads):
        seen.append(acts.shape)
        return F.relu((acts * grads).sum(1))

    guide = GuidedAttention(TinyNet(), layer="features", cam=mine)
    with torch.no_grad():
        out = guide(images, labels)  # a validation loss: works, keeps no graph
    assert not out.loss.requires_grad and seen[0] == (4, 4, 8, 8)
