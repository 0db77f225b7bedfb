"""Dense CRF: sharpening towards image edges, label refinement, the process pool."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from attnguide.errors import AttnGuideError
from attnguide.wsss.crf import CRFParams, CRFPool, crf_from_labels, dense_crf


def _benchmark_module():
    """benchmarks/speed/crf.py, which holds crf_throughput (a script, not a package module)."""
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "speed" / "crf.py"
    spec = importlib.util.spec_from_file_location("benchmarks_speed_crf", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

SIZE = 32
EDGE = 16  # columns < EDGE are dark (class 0), the rest bright (class 1)


def _two_colour_image() -> np.ndarray:
    image = np.zeros((SIZE, SIZE, 3), dtype=np.uint8)
    image[:, EDGE:] = 220
    return image


def _blurry_unary(seed: int = 0) -> np.ndarray:
    """P(class 1) rises smoothly around column 12 (4 px off the edge), plus noise."""
    columns = np.arange(SIZE, dtype=np.float32)
    p1 = 1.0 / (1.0 + np.exp(-(columns - 12.0) / 3.0))
    p1 = np.broadcast_to(p1, (SIZE, SIZE)).copy()
    p1 += np.random.default_rng(seed).normal(0, 0.25, size=p1.shape)
    p1 = np.clip(p1, 0.02, 0.98).astype(np.float32)
    return np.stack([1.0 - p1, p1])


def _truth() -> np.ndarray:
    truth = np.zeros((SIZE, SIZE), dtype=np.int64)
    truth[:, EDGE:] = 1
    return truth


def test_params_defaults_and_presets():
    irn = CRFParams()
    assert (irn.gaussian_sxy, irn.gaussian_compat) == (3.0, 3.0)
    assert (irn.bilateral_sxy, irn.bilateral_srgb, irn.bilateral_compat) == (50.0, 5.0, 10.0)
    assert (irn.iterations, irn.gt_prob) == (10, 0.7)
    psa = CRFParams.psa()
    assert (psa.bilateral_sxy, psa.bilateral_srgb, psa.bilateral_compat) == (80.0, 13.0, 10.0)
    deeplab = CRFParams.deeplab()
    assert (deeplab.bilateral_sxy, deeplab.bilateral_srgb, deeplab.bilateral_compat) == (
        121.0,
        5.0,
        4.0,
    )
    assert (deeplab.gaussian_sxy, deeplab.gaussian_compat) == (3.0, 3.0)
    small = psa.downscaled(10)
    assert small.gaussian_sxy == pytest.approx(0.3) and small.bilateral_sxy == pytest.approx(8.0)
    assert small.bilateral_srgb == 13.0


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"gt_prob": 1.0}, "gt_prob"),
        ({"iterations": 0}, "iterations"),
        ({"bilateral_srgb": 0}, "bilateral_srgb"),
    ],
)
def test_params_reject_bad_values(kwargs, field):
    with pytest.raises(AttnGuideError, match=field):
        CRFParams(**kwargs)


def test_crf_sharpens_blurry_scores_towards_the_image_edge():
    image, unary, truth = _two_colour_image(), _blurry_unary(), _truth()
    before = (unary.argmax(0) == truth).mean()
    refined = dense_crf(image, unary)
    after = (refined.argmax(0) == truth).mean()
    print(f"agreement with the edge: argmax {before:.3f}, CRF {after:.3f}")
    assert refined.shape == unary.shape and refined.dtype == np.float32
    np.testing.assert_allclose(refined.sum(0), 1.0, atol=1e-4)
    assert after > before + 0.05
    assert after > 0.97


def test_crf_from_labels_fixes_wrong_and_ignored_pixels():
    image, truth = _two_colour_image(), _truth()
    labels = truth.astype(np.uint8).copy()
    labels[:, 12:EDGE] = 1  # a band on the wrong side of the edge
    labels[:4, :] = 255  # unknown rows
    refined = crf_from_labels(image, labels, n_labels=2)
    assert refined.dtype == np.uint8 and refined.shape == truth.shape
    assert (refined == truth).mean() > (np.where(labels == 255, 0, labels) == truth).mean()
    assert (refined == truth).mean() > 0.97


def test_crf_input_errors():
    image = _two_colour_image()
    with pytest.raises(AttnGuideError, match=r"uint8 \(H, W, 3\)"):
        dense_crf(image.astype(np.float32), _blurry_unary())
    with pytest.raises(AttnGuideError, match="resize the scores"):
        dense_crf(image, _blurry_unary()[:, :10])
    with pytest.raises(AttnGuideError, match=r"values \[7\] outside 0..1"):
        crf_from_labels(image, np.full((SIZE, SIZE), 7, dtype=np.uint8), n_labels=2)


def test_missing_pydensecrf_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    with pytest.raises(AttnGuideError, match=r"pip install 'attnguide\[crf\]'"):
        dense_crf(_two_colour_image(), _blurry_unary())


def test_pool_gives_identical_results_for_one_and_two_workers_and_survives_crashes():
    jobs = [(_two_colour_image(), _blurry_unary(seed)) for seed in range(4)]
    serial = CRFPool(workers=1).map(dense_crf, jobs)
    with CRFPool(workers=2) as pool:
        parallel = pool.map(dense_crf, jobs)
        parallel_again = pool.map(dense_crf, jobs[:1])  # the pool is reused
        with pytest.raises(AttnGuideError, match="worker process died"):
            pool.map(os._exit, [(3,)])  # a crashing worker raises instead of hanging
    assert pool._executor is None
    for a, b in zip(serial, parallel):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(parallel_again[0], serial[0])


def test_pool_argument_errors():
    with pytest.raises(AttnGuideError, match="workers"):
        CRFPool(workers=-1)
    with CRFPool(workers=2) as pool, pytest.raises(AttnGuideError, match="picklable"):
        pool.map(lambda x: x, [(1,)])
    assert CRFPool(workers=0).map(pow, [(2, 3), (3, 2)]) == [8, 9]


def test_throughput_with_two_workers_is_printed_not_asserted():
    crf_throughput = _benchmark_module().crf_throughput
    one = crf_throughput(n_images=8, size=96, workers=1)
    two = crf_throughput(n_images=8, size=96, workers=2)
    print(
        f"CRF 96x96: 1 worker {one['images_per_s']:.1f} img/s, 2 workers "
        f"{two['images_per_s']:.1f} img/s (speed-up {two['images_per_s'] / one['images_per_s']:.2f}x, "
        f"pool start-up {two['startup_s']:.1f} s)"
    )
    assert one["n_images"] == two["n_images"] == 8
