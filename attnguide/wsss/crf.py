"""Fully connected CRF (Krähenbühl & Koltun 2011) on CAM scores and label maps.

The energy is ``E(x) = sum_u psi_u(x_u) + sum_{u<v} mu(x_u, x_v) k(f_u, f_v)``
with a Potts compatibility and two Gaussian kernels over pixel positions
``p`` and colours ``I``::

    k = w_g * exp(-|p_u - p_v|^2 / (2 sxy_g^2))                                 (smoothness)
      + w_b * exp(-|p_u - p_v|^2 / (2 sxy_b^2) - |I_u - I_v|^2 / (2 srgb^2))   (appearance)

``w`` is called ``compat`` by pydensecrf. Mean-field inference gives the
marginals ``Q (K, H, W)``. pydensecrf (package ``pydensecrf2``) is imported
only when a CRF runs; ``pip install 'attnguide[crf]'``.

Inputs follow pydensecrf: images are ``uint8 (H, W, 3)`` RGB, scores are
``(K, H, W)`` with one channel per label.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import pickle
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

import numpy as np

from attnguide.constants import IGNORE
from attnguide.errors import AttnGuideError

__all__ = ["CRFParams", "dense_crf", "crf_from_labels", "CRFPool"]

_MIN_PROB = 1e-5  # probabilities are clipped here before -log (as pydensecrf's unary_from_softmax)


@dataclass(frozen=True)
class CRFParams:
    """Dense-CRF settings. The defaults are IRN's (Ahn et al. 2019, ``imutils.crf_inference_label``).

    Attributes:
        gaussian_sxy: spatial std of the smoothness kernel, pixels (IRN, PSA, DeepLab: 3).
        gaussian_compat: weight of the smoothness kernel (IRN, PSA, DeepLab: 3).
        bilateral_sxy: spatial std of the appearance kernel (IRN 50; PSA 80; DeepLab 121).
        bilateral_srgb: colour std of the appearance kernel (IRN 5; PSA 13; DeepLab 5).
        bilateral_compat: weight of the appearance kernel (IRN 10; PSA 10; DeepLab 4).
        iterations: mean-field iterations (10 in IRN, PSA and DeepLab).
        gt_prob: for :func:`crf_from_labels`, the probability given to the
            input label of a pixel; the rest is spread evenly over the other
            labels (IRN 0.7).

    Example:
        >>> CRFParams.psa().bilateral_sxy
        80.0
        >>> CRFParams().downscaled(10).gaussian_sxy
        0.3
    """

    gaussian_sxy: float = 3.0
    gaussian_compat: float = 3.0
    bilateral_sxy: float = 50.0
    bilateral_srgb: float = 5.0
    bilateral_compat: float = 10.0
    iterations: int = 10
    gt_prob: float = 0.7

    def __post_init__(self) -> None:
        for field in ("gaussian_sxy", "bilateral_sxy", "bilateral_srgb"):
            if not getattr(self, field) > 0:
                raise AttnGuideError(f"CRFParams.{field} must be > 0, got {getattr(self, field)}")
        for field in ("gaussian_compat", "bilateral_compat"):
            if not getattr(self, field) >= 0:
                raise AttnGuideError(f"CRFParams.{field} must be >= 0, got {getattr(self, field)}")
        if not (isinstance(self.iterations, int) and self.iterations >= 1):
            raise AttnGuideError(
                f"CRFParams.iterations must be an int >= 1, got {self.iterations!r}"
            )
        if not 0.0 < self.gt_prob < 1.0:
            raise AttnGuideError(f"CRFParams.gt_prob must be in (0, 1), got {self.gt_prob}")

    @classmethod
    def psa(cls) -> CRFParams:
        """PSA (Ahn & Kwak 2018) and SEC: bilateral sxy 80, srgb 13, compat 10; gaussian 3/3."""
        return cls(bilateral_sxy=80.0, bilateral_srgb=13.0, bilateral_compat=10.0)

    @classmethod
    def deeplab(cls) -> CRFParams:
        """DeepLab-v1 post-processing: bi_w 4, bi_xy 121, bi_rgb 5, pos_w 3, pos_xy 3."""
        return cls(bilateral_sxy=121.0, bilateral_srgb=5.0, bilateral_compat=4.0)

    def downscaled(self, factor: float) -> CRFParams:
        """The same CRF for an image shrunk ``factor`` times: both spatial stds divided by it.

        SEC runs its CRF on 41x41 score maps with PSA's parameters and ``factor`` 12.
        """
        if not factor > 0:
            raise AttnGuideError(f"downscale factor must be > 0, got {factor}")
        return dataclasses.replace(
            self,
            gaussian_sxy=self.gaussian_sxy / factor,
            bilateral_sxy=self.bilateral_sxy / factor,
        )


CRF_PRESETS = ("irn", "psa", "deeplab")


def parse_crf_params(spec: str | Any):
    """A :class:`~attnguide.wsss.crf.CRFParams` from ``"PRESET[,field=value,...]"``.

    Presets (see ``CRFParams``): ``irn`` (IRN: bilateral sxy 50, srgb 5, compat 10;
    gaussian 3/3; gt_prob 0.7), ``psa`` (PSA/SEC: bilateral 80/13/10, gaussian 3/3),
    ``deeplab`` (DeepLab-v1 post-processing: bilateral 121/5/4, gaussian 3/3); all
    with 10 mean-field iterations. Fields: gaussian_sxy, gaussian_compat,
    bilateral_sxy, bilateral_srgb, bilateral_compat, iterations, gt_prob.

    Example:
        >>> parse_crf_params("psa,bilateral_sxy=40").bilateral_sxy
        40.0
    """
    if isinstance(spec, CRFParams):
        return spec
    parts = [p.strip() for p in str(spec).split(",") if p.strip()]
    preset = parts[0].lower() if parts and "=" not in parts[0] else "irn"
    if parts and "=" not in parts[0]:
        parts = parts[1:]
    if preset not in CRF_PRESETS:
        raise AttnGuideError(
            f"--crf-params {spec!r}: unknown preset {preset!r}; use one of {', '.join(CRF_PRESETS)}, "
            "optionally followed by overrides such as ',bilateral_sxy=40,iterations=5'")
    params = {"irn": CRFParams, "psa": CRFParams.psa, "deeplab": CRFParams.deeplab}[preset]()
    fields = {f.name: f for f in dataclasses.fields(CRFParams)}
    changes: dict[str, Any] = {}
    for part in parts:
        key, _, value = part.partition("=")
        key = key.strip().replace("-", "_")
        if key not in fields or not value:
            raise AttnGuideError(
                f"--crf-params {spec!r}: {part!r} is not FIELD=VALUE with FIELD one of "
                f"{', '.join(fields)}")
        try:
            changes[key] = int(value) if key == "iterations" else float(value)
        except ValueError:
            raise AttnGuideError(f"--crf-params {spec!r}: {value!r} is not a number") from None
    return dataclasses.replace(params, **changes)


def require_crf(option: str = "--crf") -> None:
    """Raise AttnGuideError naming the ``crf`` extra when pydensecrf cannot be imported."""
    try:
        import pydensecrf.densecrf  # noqa: F401
    except ImportError:
        raise AttnGuideError(
            f"{option} needs pydensecrf, which is not installed: pip install 'attnguide[crf]' "
            "(the pydensecrf2 package), or drop " + option) from None


def _import_densecrf():
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError as err:
        raise AttnGuideError("dense CRF needs pydensecrf: pip install 'attnguide[crf]'") from err
    return dcrf


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise AttnGuideError(
            f"CRF image must be uint8 (H, W, 3) RGB, got {image.dtype} {image.shape}; "
            "pass the un-normalised image (e.g. np.asarray(PIL.Image.open(p).convert('RGB')))"
        )
    return np.ascontiguousarray(image)


def _infer(image: np.ndarray, unary: np.ndarray, params: CRFParams) -> np.ndarray:
    """Mean-field inference; ``unary`` is ``(K, H*W)`` energies; returns ``Q (K, H, W)`` float32."""
    dcrf = _import_densecrf()
    height, width = image.shape[:2]
    n_labels = unary.shape[0]
    crf = dcrf.DenseCRF2D(width, height, n_labels)
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    crf.addPairwiseGaussian(sxy=params.gaussian_sxy, compat=params.gaussian_compat)
    crf.addPairwiseBilateral(
        sxy=params.bilateral_sxy,
        srgb=params.bilateral_srgb,
        rgbim=image,
        compat=params.bilateral_compat,
    )
    q = crf.inference(params.iterations)
    return np.asarray(q, dtype=np.float32).reshape(n_labels, height, width)


def dense_crf(image: np.ndarray, probs: np.ndarray, params: CRFParams | None = None) -> np.ndarray:
    """Refine per-label scores with a dense CRF (PSA's ``crf_inference``).

    The unary is ``psi_u(k) = -log(max(probs[k, u], 1e-5))``; the scores need
    not sum to one (PSA feeds ``[bg, CAM_1, ..., CAM_K]`` directly).

    Args:
        image: ``uint8 (H, W, 3)`` RGB.
        probs: ``(K, H, W)`` scores in [0, 1], ``K >= 1``.
        params: CRF settings; IRN's defaults when None.

    Returns:
        ``float32 (K, H, W)`` marginals; they sum to 1 over ``K`` at every pixel.
    """
    params = params or CRFParams()
    image = _check_image(image)
    probs = np.asarray(probs, dtype=np.float32)
    if probs.ndim != 3 or probs.shape[1:] != image.shape[:2]:
        raise AttnGuideError(
            f"CRF probs must be (K, H, W) with (H, W) = image size {image.shape[:2]}, "
            f"got {probs.shape}; resize the scores to the image first"
        )
    if not np.isfinite(probs).all() or probs.min() < 0:
        raise AttnGuideError("CRF probs must be finite and non-negative")
    unary = -np.log(np.clip(probs, _MIN_PROB, 1.0)).reshape(probs.shape[0], -1)
    return _infer(image, unary, params)


def crf_from_labels(
    image: np.ndarray, labels: np.ndarray, n_labels: int, params: CRFParams | None = None
) -> np.ndarray:
    """Refine a label map with a dense CRF (IRN's ``crf_inference_label``).

    A pixel with label ``l`` gets probability ``gt_prob`` for ``l`` and
    ``(1 - gt_prob) / (n_labels - 1)`` for every other label; a pixel with 255
    (ignore) gets the uniform ``1 / n_labels``, so the CRF decides it from
    its neighbours.

    Args:
        image: ``uint8 (H, W, 3)`` RGB.
        labels: ``(H, W)`` integers in ``0..n_labels-1`` or 255.
        n_labels: number of labels, ``>= 2``.
        params: CRF settings (``gt_prob`` included); IRN's defaults when None.

    Returns:
        ``uint8 (H, W)`` label map in ``0..n_labels-1`` (no 255 left).
    """
    params = params or CRFParams()
    image = _check_image(image)
    labels = np.asarray(labels)
    if not isinstance(n_labels, int) or not 2 <= n_labels <= IGNORE:
        raise AttnGuideError(f"n_labels must be an int in 2..255, got {n_labels!r}")
    if labels.shape != image.shape[:2] or not np.issubdtype(labels.dtype, np.integer):
        raise AttnGuideError(
            f"CRF labels must be an integer (H, W) map of the image size {image.shape[:2]}, "
            f"got {labels.dtype} {labels.shape}"
        )
    ignore = labels == IGNORE
    bad = np.unique(labels[~ignore & ((labels < 0) | (labels >= n_labels))])
    if bad.size:
        raise AttnGuideError(
            f"CRF labels hold values {bad[:10].tolist()} outside 0..{n_labels - 1} "
            f"(n_labels={n_labels}); 255 is the only other allowed value"
        )
    flat = labels.reshape(-1).astype(np.int64)
    unary = np.full((n_labels, flat.size), -np.log((1.0 - params.gt_prob) / (n_labels - 1)))
    known = ~ignore.reshape(-1)
    unary[flat[known], np.flatnonzero(known)] = -np.log(params.gt_prob)
    unary[:, ~known] = -np.log(1.0 / n_labels)
    q = _infer(image, unary, params)
    return q.argmax(axis=0).astype(np.uint8)


def _star(job: tuple[Callable[..., Any], tuple]) -> Any:
    fn, args = job
    return fn(*args)


class CRFPool:
    """Run CRFs (or any picklable function) over many images on several processes.

    ``workers`` 0 or 1 runs in this process; ``n >= 2`` starts ``n`` worker
    processes with the ``spawn`` start method (safe next to torch threads and
    CUDA, unlike ``fork``), once, on the first :meth:`map`. Use it as a
    context manager, or call :meth:`close`. A worker that dies (a crash, or a
    main script that spawn cannot re-import, such as code piped to stdin)
    raises an error instead of hanging.

    Example:
        >>> with CRFPool(workers=2) as pool:                        # doctest: +SKIP
        ...     refined = pool.map(dense_crf, [(img, probs) for img, probs in items])
    """

    def __init__(self, workers: int = 0, start_method: str = "spawn") -> None:
        if not isinstance(workers, int) or workers < 0:
            raise AttnGuideError(f"CRFPool workers must be an int >= 0, got {workers!r}")
        if start_method not in multiprocessing.get_all_start_methods():
            raise AttnGuideError(
                f"start_method {start_method!r} is not available here; "
                f"choose one of {multiprocessing.get_all_start_methods()}"
            )
        self.workers = workers
        self.start_method = start_method
        self._executor: ProcessPoolExecutor | None = None

    def map(self, fn: Callable[..., Any], args_iterable: Iterable[tuple]) -> list:
        """``[fn(*args) for args in args_iterable]``, in order, spread over the workers.

        With workers, ``fn`` must be picklable (a module-level function) and
        so must the arguments.
        """
        jobs = [(fn, tuple(args)) for args in args_iterable]
        if self.workers <= 1:
            return [_star(job) for job in jobs]
        try:
            pickle.dumps(fn)
        except (pickle.PicklingError, AttributeError, TypeError) as err:
            raise AttnGuideError(
                f"CRFPool with workers={self.workers} needs a picklable function, got {fn!r}; "
                "use a module-level function (no lambda or closure) or workers=0"
            ) from err
        if self._executor is None:
            context = multiprocessing.get_context(self.start_method)
            self._executor = ProcessPoolExecutor(self.workers, mp_context=context)
        chunksize = max(1, len(jobs) // (4 * self.workers))
        try:
            return list(self._executor.map(_star, jobs, chunksize=chunksize))
        except BrokenProcessPool as err:
            self.close()
            raise AttnGuideError(
                f"a CRFPool worker process died ({err}). With start_method "
                f"{self.start_method!r} the main module must be importable: run a script file "
                "whose work is under `if __name__ == '__main__':`, or use workers=0"
            ) from err

    def close(self) -> None:
        """Stop the worker processes; safe to call twice."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def __enter__(self) -> CRFPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
