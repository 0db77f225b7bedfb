"""CAM fusion, background rules, pseudo labels and SEC cues on tiny hand-made maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attnguide.errors import AttnGuideError
from attnguide.wsss.pseudo import (
    BackgroundRule,
    background_rule,
    cams_to_labels,
    fuse_cams,
    multiscale_cams,
    multiscale_cams_batch,
    seed_cues,
)

# two classes (0-based 0 and 4 → labels 1 and 5) over four pixels
CAMS = torch.tensor(
    [
        [[0.90, 0.20, 0.10, 0.15]],
        [[0.20, 0.05, 0.60, 0.00]],
    ]
)
CLASSES = torch.tensor([0, 4])


def test_background_rule_parsing():
    assert background_rule("threshold:0.15") == BackgroundRule("threshold", 0.15)
    assert background_rule(" Power:4") == BackgroundRule("power", 4.0)
    rule = BackgroundRule("power", 32.0)
    assert background_rule(rule) is rule


@pytest.mark.parametrize(
    "spec", ["threshold", "threshold:abc", "threshold:1.5", "power:-1", "gauss:2", "a:b:c", 0.15]
)
def test_background_rule_errors_show_the_valid_forms(spec):
    with pytest.raises(AttnGuideError, match=r"bad background rule.*'threshold:T'.*'power:P'"):
        background_rule(spec)


def test_threshold_rule():
    # pixel 0: 0.9 > 0.15 → class 0 (label 1); pixel 1: 0.2 > 0.15 → label 1;
    # pixel 2: 0.6 → class 4 (label 5); pixel 3: a tie 0.15 = 0.15 → background wins
    labels = cams_to_labels(CAMS, CLASSES, "threshold:0.15")
    assert labels.dtype == np.uint8
    assert labels.tolist() == [[1, 1, 5, 0]]


def test_power_rule():
    # bg = (1 - max)^4: 0.0001, 0.4096, 0.0256, 0.522 → pixel 1 becomes background
    labels = cams_to_labels(CAMS, CLASSES, "power:4")
    assert labels.tolist() == [[1, 0, 5, 0]]
    torch.testing.assert_close(BackgroundRule("power", 4.0)(CAMS), (1 - CAMS.amax(0)) ** 4)


def test_no_classes_gives_background_and_bad_shapes_fail():
    assert (
        cams_to_labels(torch.zeros(0, 2, 3), torch.zeros(0, dtype=torch.int64), "power:4").tolist()
        == [[0] * 3] * 2
    )
    with pytest.raises(AttnGuideError, match="K = len"):
        cams_to_labels(CAMS, torch.tensor([0]), "power:4")
    with pytest.raises(AttnGuideError, match="0..253"):
        cams_to_labels(CAMS, torch.tensor([0, 254]), "power:4")


def test_fuse_cams_golden():
    big = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])  # (1, 2, 2)
    small = torch.tensor([[[2.0]]])  # (1, 1, 1): bilinear upsampling gives 2 everywhere
    fused = fuse_cams([big, small])
    torch.testing.assert_close(fused, torch.tensor([[[3.0, 4.0], [5.0, 6.0]]]) / (6.0 + 1e-5))
    zeros = fuse_cams([torch.zeros(1, 3, 3)], size=(4, 5))
    assert zeros.shape == (1, 4, 5) and zeros.abs().max() == 0


def test_fuse_cams_errors():
    with pytest.raises(AttnGuideError, match="at least one"):
        fuse_cams([])
    with pytest.raises(AttnGuideError, match="ReLU"):
        fuse_cams([-torch.ones(1, 2, 2)])
    with pytest.raises(AttnGuideError, match="K=1"):
        fuse_cams([torch.ones(1, 2, 2), torch.ones(2, 2, 2)])


class FakeCams:
    """cam_fn whose map of class k is (k + 1) * ReLU(channel 0 of the input); records its calls."""

    def __init__(self):
        self.calls = []

    def __call__(self, batch: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        self.calls.append((tuple(batch.shape), classes.clone()))
        weights = (classes + 1).float()[:, :, None, None]  # (N, K, 1, 1)
        return weights * batch[:, :1].clamp(min=0)  # (N, K, h, w)


def _ramp_image(height=6, width=8) -> torch.Tensor:
    ramp = torch.linspace(0.0, 1.0, width).expand(height, width)
    return torch.stack([ramp, torch.zeros_like(ramp), torch.ones_like(ramp)])


def test_multiscale_flip_is_undone_before_fusion():
    image, cam_fn = _ramp_image(), FakeCams()
    fused = multiscale_cams(cam_fn, image, torch.tensor([2, 7]), scales=(1.0,), flip=True)
    # the mirrored image's map, flipped back, is the same ramp: fused = ramp / max for both classes
    torch.testing.assert_close(fused, image[0].expand(2, -1, -1), atol=1e-5, rtol=1e-5)
    ((shape, classes),) = cam_fn.calls
    assert shape == (2, 3, 6, 8)
    assert classes.tolist() == [[2, 7], [2, 7]]


def test_multiscale_calls_once_per_scale_with_the_flip_batched():
    image, cam_fn = _ramp_image(), FakeCams()
    fused = multiscale_cams(cam_fn, image, torch.tensor([0]), scales=(1.0, 0.5, 1.5, 2.0))
    assert [shape for shape, _ in cam_fn.calls] == [
        (2, 3, 6, 8),
        (2, 3, 3, 4),
        (2, 3, 9, 12),
        (2, 3, 12, 16),
    ]
    assert fused.shape == (1, 6, 8)
    assert fused.max() == pytest.approx(1.0, abs=1e-4)
    # still increasing from left to right: a missing flip-back would make it symmetric
    assert (fused[0, :, 1:] >= fused[0, :, :-1] - 1e-6).all()
    assert fused[0, 0, 0] < 0.2


def test_multiscale_without_flip_and_without_classes():
    cam_fn = FakeCams()
    multiscale_cams(cam_fn, _ramp_image(), torch.tensor([0]), scales=(1.0, 0.5), flip=False)
    assert [shape[0] for shape, _ in cam_fn.calls] == [1, 1]
    empty = multiscale_cams(cam_fn, _ramp_image(), torch.tensor([], dtype=torch.int64))
    assert empty.shape == (0, 6, 8) and len(cam_fn.calls) == 2


def test_multiscale_keeps_gradients_available_to_cam_fn():
    seen = []

    def grad_cam_like(batch, classes):
        seen.append(torch.is_grad_enabled())
        return batch[:, :1].expand(-1, classes.shape[1], -1, -1).clamp(min=0)

    multiscale_cams(grad_cam_like, _ramp_image(), torch.tensor([1]), scales=(1.0,))
    assert seen == [True]


def test_multiscale_rejects_a_bad_cam_fn_output():
    with pytest.raises(AttnGuideError, match=r"must return \(N, K, h', w'\)"):
        multiscale_cams(lambda b, c: b[:, 0], _ramp_image(), torch.tensor([0]), scales=(1.0,))


def test_multiscale_batch_equals_one_image_at_a_time_with_uneven_class_lists():
    images = torch.stack([_ramp_image(), _ramp_image().flip(-1), 2 * _ramp_image()])
    classes = [torch.tensor([3]), torch.tensor([], dtype=torch.int64), torch.tensor([1, 5])]
    cam_fn = FakeCams()
    fused = multiscale_cams_batch(cam_fn, images, classes, scales=(1.0, 0.5))
    # one call per scale for the images that have classes, the flips beside them, the shorter
    # class list padded with its first class
    assert [shape for shape, _ in cam_fn.calls] == [(4, 3, 6, 8), (4, 3, 3, 4)]
    assert cam_fn.calls[0][1].tolist() == [[3, 3], [1, 5], [3, 3], [1, 5]]
    assert [tuple(f.shape) for f in fused] == [(1, 6, 8), (0, 6, 8), (2, 6, 8)]
    for image, cls, got in zip(images, classes, fused):
        torch.testing.assert_close(got, multiscale_cams(FakeCams(), image, cls, scales=(1.0, 0.5)))


def test_multiscale_batch_checks_its_inputs():
    with pytest.raises(AttnGuideError, match=r"\(B, 3, H, W\)"):
        multiscale_cams_batch(FakeCams(), _ramp_image(), [torch.tensor([0])])
    with pytest.raises(AttnGuideError, match="2 images need 2 class lists, got 1"):
        multiscale_cams_batch(FakeCams(), torch.stack([_ramp_image()] * 2), [torch.tensor([0])])


def test_seed_cues():
    cams = torch.tensor(
        [
            [[1.0, 0.50, 0.10, 0.01, 0.00, 0.10]],
            [[0.0, 0.60, 0.50, 0.00, 0.02, 0.00]],
        ]
    )
    # normalised: class a = cams[0] / 1.0, class b = cams[1] / 0.6
    # px0 a=1 → a; px1 b=1 beats a=0.5 → b; px2 b=0.83 → b; px3 max 0.01 < 0.05 → background;
    # px4 b=0.033 → background; px5 a=0.1 is neither confident → 255
    cues = seed_cues(cams, torch.tensor([2, 9]))
    assert cues.dtype == np.uint8
    assert cues.tolist() == [[3, 10, 10, 0, 0, 255]]
    stricter = seed_cues(cams, torch.tensor([2, 9]), fg_fraction=0.9, bg_threshold=0.0)
    assert stricter.tolist() == [[3, 10, 255, 255, 255, 255]]
    with pytest.raises(AttnGuideError, match="bg_threshold"):
        seed_cues(cams, torch.tensor([2, 9]), bg_threshold=0.5)
