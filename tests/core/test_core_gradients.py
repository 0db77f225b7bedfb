"""Gradients flow where the method says they flow."""

from __future__ import annotations

import timm
import torch
from core_models import TinyNet

from attnguide import GuidedAttention


def batch():
    images = torch.randn(4, 3, 16, 16)
    labels = torch.tensor([[1.0, 0, 1], [0, 1, 0], [1, 1, 1], [0, 0, 1]])
    masks = torch.randint(0, 4, (4, 16, 16))
    return images, labels, masks


def grads_of(loss, params):
    return torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)


def test_ext_loss_reaches_classifier_only_through_cam_weights():
    """L_e depends on the head's weights only through the Grad-CAM weights
    d s_c / d A = W_c / (h w): second order when differentiable, nothing when detached."""
    images, labels, masks = batch()
    model = TinyNet()
    for detach, expect_grad in [(False, True), (True, False)]:
        guide = GuidedAttention(model, layer="features", alpha=0.0, omega=1.0, detach_weights=detach)
        out = guide(images, labels, masks)
        (g_fc,) = grads_of(out.losses["ext"], [model.fc.weight])
        assert (g_fc is not None and g_fc.abs().sum() > 0) == expect_grad, detach
        # the activations themselves always carry gradient to the backbone
        (g_stem,) = grads_of(out.losses["ext"], [model.stem[0].weight])
        assert g_stem.abs().sum() > 0


def test_am_loss_gradient_differs_with_detached_weights():
    images, labels, _ = batch()
    model = TinyNet()
    got = []
    for detach in (False, True):
        torch.manual_seed(1)
        guide = GuidedAttention(model, layer="features", detach_weights=detach)
        out = guide(images, labels)
        got.append(grads_of(out.losses["am"], [model.fc.weight, model.stem[0].weight]))
    assert all(g.abs().sum() > 0 for g in got[0] + got[1])
    assert not torch.allclose(got[0][0], got[1][0])


def test_second_order_matches_finite_differences():
    """d L_e / d W of the classifier, through Grad-CAM, against central differences (float64)."""
    model = TinyNet().double()
    images, labels, masks = batch()
    images = images.double()
    guide = GuidedAttention(model, layer="features", alpha=0.0, omega=1.0)
    out = guide(images, labels, masks)
    (g,) = torch.autograd.grad(out.losses["ext"], [model.fc.weight])
    eps = 1e-6
    for idx in [(0, 1), (2, 3)]:
        with torch.no_grad():
            model.fc.weight[idx] += eps
            up = guide(images, labels, masks).losses["ext"].item()
            model.fc.weight[idx] -= 2 * eps
            down = guide(images, labels, masks).losses["ext"].item()
            model.fc.weight[idx] += eps
        assert abs((up - down) / (2 * eps) - g[idx].item()) < 1e-5 * max(1.0, abs(g[idx].item()))


def test_closed_form_and_autograd_agree():
    """attention() skips the backward when the head is GAP + linear; same maps either way."""
    model = timm.create_model("resnet18", num_classes=5).eval()
    images = torch.randn(2, 3, 64, 64)
    classes = torch.tensor([[0, 3], [2, 2]])
    guide = GuidedAttention(model, layer="layer4")
    closed = guide._closed_form_maps
    fast = guide.attention(images, classes)
    guide._closed_form_maps = lambda *a: None  # force the autograd path
    slow = guide.attention(images, classes)
    guide._closed_form_maps = closed
    assert torch.allclose(fast, slow, rtol=1e-4, atol=1e-6)
    model.train()  # dropout-free here, but BN in train mode changes logits: still exact
    assert torch.allclose(guide.attention(images, classes), guide.attention(images, classes))


def test_pair_maps_match_single_class_maps():
    """An image with several positive classes gets each class's own gradient."""
    model = TinyNet().eval()
    images, labels, _ = batch()
    guide = GuidedAttention(model, layer="features")
    out = guide(images, labels)
    for (b, c), att in zip(out.pairs.tolist(), out.attention):
        single = guide.attention(images[b : b + 1], torch.tensor([c]), resize=True, normalize=True)
        assert torch.allclose(att, single[0, 0], atol=1e-5)


def test_erase_function_gradients():
    """The memory-saving erase op against autograd's own, for the images and the masks."""
    from attnguide.core.maps import Erase as _Erase

    images = torch.randn(3, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    soft = torch.rand(4, 5, 5, dtype=torch.float64, requires_grad=True)
    index = torch.tensor([0, 2, 2, 1])
    assert torch.autograd.gradcheck(lambda i, s: _Erase.apply(i, index, s, 0.5), (images, soft))
    plain = images[index] - soft[:, None] * (images[index] - 0.5)
    assert torch.allclose(_Erase.apply(images, index, soft, 0.5), plain)
