"""Raw maps equal those of the independent `grad-cam` package (1.5.7) and of
`torchcam` (for CAM), on several timm architectures, a ViT and a Swin included."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from core_models import ARCHS
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from attnguide import GuidedAttention

REFERENCE = {
    "gradcam": GradCAM,
    "gradcampp": GradCAMPlusPlus,
    "xgradcam": XGradCAM,
    "layercam": LayerCAM,
    "hirescam": HiResCAM,
}


def grad_cam_raw(method, model, layer, images, classes, reshape):
    """grad-cam's own maps before its min-max scaling and resize: its hooks, its
    backward, its weights, its ReLU."""
    cam = REFERENCE[method](model=model, target_layers=[layer], reshape_transform=reshape)
    try:
        targets = [ClassifierOutputTarget(int(c)) for c in classes]
        outputs = cam.activations_and_grads(images)
        model.zero_grad()
        sum(t(o) for t, o in zip(targets, outputs)).backward(retain_graph=True)
        acts = cam.activations_and_grads.activations[0].numpy()
        grads = cam.activations_and_grads.gradients[0].numpy()
        raw = cam.get_cam_image(images, layer, targets, acts, grads, False)
        return np.maximum(raw, 0)
    finally:
        cam.activations_and_grads.release()


def reshape_for(guide):
    """The layout grad-cam needs, written independently of attnguide's code."""
    model = guide.model
    if hasattr(model, "num_prefix_tokens"):  # ViT tokens: drop the class token, 2-D grid
        def vit(t):
            n = t.shape[1] - model.num_prefix_tokens
            side = int(n**0.5)
            return t[:, model.num_prefix_tokens:].reshape(t.shape[0], side, side, -1).permute(0, 3, 1, 2)
        return vit
    if guide.layer_name.startswith("layers"):  # Swin stages are NHWC
        return lambda t: t.permute(0, 3, 1, 2)
    return None


def rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-12))


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("method", list(REFERENCE))
def test_maps_equal_grad_cam(arch, method):
    factory, size = ARCHS[arch]
    # float64 on both sides: the comparison is of formulas, free of float32 cancellation
    # (Swin's HiResCAM sums terms of opposite sign into values near 1e-5).
    model = factory(6).double().eval()
    images = torch.randn(3, 3, size, size, dtype=torch.float64)
    classes = torch.tensor([[1, 4], [0, 2], [5, 5]])
    guide = GuidedAttention(model, cam=method)  # layer chosen automatically
    ours = guide.attention(images, classes).numpy()  # (3, 2, h, w)
    assert ours.shape[:2] == (3, 2)
    for k in range(classes.shape[1]):
        ref = grad_cam_raw(method, model, guide._layer, images, classes[:, k], reshape_for(guide))
        assert ref.shape == ours[:, k].shape
        assert ref.max() > 0, "degenerate reference map"
        assert rel_err(ours[:, k], ref) < 1e-4, (arch, method, k)


@pytest.mark.parametrize("method", list(REFERENCE))
def test_float32_maps_equal_grad_cam(method):
    factory, size = ARCHS["resnet18"]
    model = factory(6).eval()
    images = torch.randn(2, 3, size, size)
    guide = GuidedAttention(model, layer="layer3", cam=method)
    ours = guide.attention(images, torch.tensor([2, 5])).numpy()[:, 0]
    ref = grad_cam_raw(method, model, guide._layer, images, [2, 5], None)
    assert rel_err(ours, ref) < 1e-4


@pytest.mark.parametrize(
    "arch, layer, fc_name",
    [("resnet18", "layer4", "fc"), ("test_efficientnet", "bn2", "classifier"),
     ("test_nfnet", "final_act", "head.fc")],
)
def test_cam_equals_torchcam(arch, layer, fc_name):
    """CAM needs the layer that feeds global pooling + linear."""
    from torchcam.methods import CAM

    factory, size = ARCHS[arch]
    model = factory(6).eval()
    images = torch.randn(2, 3, size, size)
    guide = GuidedAttention(model, layer=layer, cam="cam")
    ours = guide.attention(images, torch.tensor([3, 1])).numpy()[:, 0]
    with CAM(model, target_layer=layer, fc_layer=fc_name) as extractor:
        scores = model(images)
        ref = torch.relu(extractor([3, 1], scores, normalized=False)[0]).numpy()
    assert rel_err(ours, ref) < 1e-4
