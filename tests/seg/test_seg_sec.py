"""SEC losses: hand values, zero at the optimum, gradients through the logits only."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from attnguide.errors import AttnGuideError
from attnguide.wsss.crf import dense_crf
from attnguide.wsss.sec import (
    SEC_CRF_PARAMS,
    constrain_loss,
    expansion_loss,
    global_weighted_rank_pooling,
    seeding_loss,
)


def test_seeding_loss_hand_values_for_both_reductions():
    # one image, 2 classes, 3 pixels; cues: background, background, class 1
    logits = torch.tensor([[[[0.0, math.log(3.0), 0.0]], [[0.0, 0.0, 0.0]]]])  # (1, 2, 1, 3)
    cues = torch.tensor([[[0, 0, 1]]])
    nll = [math.log(2), -math.log(0.75), math.log(2)]
    by_class = ((nll[0] + nll[1]) / 2 + nll[2]) / 2
    by_pixel = sum(nll) / 3
    assert seeding_loss(logits, cues).item() == pytest.approx(by_class, rel=1e-6)
    assert seeding_loss(logits, cues, reduction="pixel").item() == pytest.approx(by_pixel, rel=1e-6)


def test_seeding_loss_zero_when_cues_are_predicted_and_ignores_255():
    cues = torch.tensor([[[0, 1], [2, 255]], [[255, 255], [255, 255]]])  # second image: no cue
    logits = 30.0 * F.one_hot(cues.clamp(max=2), 3).permute(0, 3, 1, 2).float()
    logits[:, :, 1, 1] = torch.randn(2, 3)  # anything at the 255 pixels
    assert seeding_loss(logits, cues).item() < 1e-6
    empty = torch.randn(1, 3, 2, 2, requires_grad=True)
    loss = seeding_loss(empty, torch.full((1, 2, 2), 255))
    loss.backward()
    assert loss.item() == 0.0 and empty.grad is not None


def test_seeding_loss_gradient_and_errors():
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    cues = torch.randint(0, 3, (2, 4, 4))
    loss = seeding_loss(logits, cues)
    assert loss.item() > 0
    loss.backward()
    assert logits.grad.abs().sum() > 0
    with pytest.raises(AttnGuideError, match="nearest"):
        seeding_loss(logits, cues[:, :2])
    with pytest.raises(AttnGuideError, match=r"outside 0..2"):
        seeding_loss(logits, torch.full((2, 4, 4), 3))
    with pytest.raises(AttnGuideError, match="reduction"):
        seeding_loss(logits, cues, reduction="mean")


def test_gwrp_golden_values():
    scores = torch.tensor([1.0, 3.0, 2.0]).reshape(1, 1, 1, 3)
    assert global_weighted_rank_pooling(scores, 0.0).item() == pytest.approx(3.0)  # max
    assert global_weighted_rank_pooling(scores, 1.0).item() == pytest.approx(2.0)  # mean
    # sorted 3, 2, 1 with weights 1, 0.5, 0.25
    assert global_weighted_rank_pooling(scores, 0.5).item() == pytest.approx(4.25 / 1.75)


def test_expansion_loss_hand_value():
    # two pixels, N = 3 (background, class a, class b); class a present, b absent
    probs = torch.tensor([[0.2, 0.6], [0.7, 0.3], [0.1, 0.1]])  # (N, pixels)
    logits = probs.log().reshape(1, 3, 1, 2).requires_grad_()
    g_bg = (0.6 + 0.999 * 0.2) / (1 + 0.999)
    g_a = (0.7 + 0.996 * 0.3) / (1 + 0.996)
    g_b = 0.1  # d = 0: max pooling
    expected = -math.log(g_a) - math.log(1 - g_b) - math.log(g_bg)
    loss = expansion_loss(logits, torch.tensor([[1, 0]]))
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert logits.grad.abs().sum() > 0


def test_expansion_loss_near_zero_at_its_optimum_and_larger_for_wrong_labels():
    logits = torch.zeros(1, 3, 4, 4)
    logits[:, 0] = 30.0  # background everywhere, no class anywhere
    assert expansion_loss(logits, torch.tensor([[0, 0]])).item() < 1e-3
    assert expansion_loss(logits, torch.tensor([[1, 0]])).item() > 5.0  # a present class is missing
    with pytest.raises(AttnGuideError, match=r"\(B, N - 1\)"):
        expansion_loss(logits, torch.tensor([[0, 0, 0]]))


def test_constrain_loss_zero_for_a_confident_uniform_prediction():
    images = np.full((1, 16, 16, 3), 90, dtype=np.uint8)
    logits = torch.zeros(1, 3, 4, 4)
    logits[:, 1] = 30.0
    loss = constrain_loss(logits, images)
    assert 0.0 <= loss.item() < 1e-4


def test_constrain_loss_gradient_goes_through_the_logits_only():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(2, 16, 16, 3), dtype=np.uint8)
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    loss = constrain_loss(logits, torch.from_numpy(images))
    assert torch.isfinite(loss) and loss.item() >= 0
    loss.backward()
    # with Q a constant, d/dlogits of mean_b 1/(hw) sum_u KL(Q_u || f_u) = (f - Q) / (B h w)
    small = [
        F.interpolate(
            torch.from_numpy(im).permute(2, 0, 1)[None].float(),
            size=(4, 4),
            mode="bilinear",
            antialias=True,
        )
        .round()
        .clamp(0, 255)
        .to(torch.uint8)[0]
        .permute(1, 2, 0)
        .contiguous()
        .numpy()
        for im in images
    ]
    probs = F.softmax(logits.detach(), dim=1)
    target = torch.stack(
        [torch.from_numpy(dense_crf(im, p.numpy(), SEC_CRF_PARAMS)) for im, p in zip(small, probs)]
    )
    torch.testing.assert_close(logits.grad, (probs - target) / (2 * 16), atol=1e-6, rtol=1e-4)


def test_constrain_loss_input_errors():
    with pytest.raises(AttnGuideError, match=r"uint8 \(B, H, W, 3\)"):
        constrain_loss(torch.randn(1, 3, 4, 4), torch.zeros(1, 3, 16, 16))
    with pytest.raises(AttnGuideError, match="2 images for 1"):
        constrain_loss(torch.randn(1, 3, 4, 4), np.zeros((2, 16, 16, 3), dtype=np.uint8))


def test_seg_imports_without_the_optional_packages():
    code = (
        "import sys; sys.modules['pydensecrf'] = None; sys.modules['segmentation_models_pytorch'] = None\n"
        "import attnguide.io.labels, attnguide.wsss.crf, attnguide.wsss.evaluate\n"
        "import attnguide.wsss.pseudo, attnguide.models.segmenters, attnguide.wsss.sec\n"
        "import attnguide.wsss as seg\n"
        "assert all(getattr(seg, name) is not None for name in seg.__all__)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
