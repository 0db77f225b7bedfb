"""CAM methods: pure, batched, differentiable functions of (activations, gradients).

Every method takes the target layer's activations ``A`` and the gradients
``G = d s_c / d A`` of the score of the class of interest, one row per
(image, class) pair, and returns the raw attention map after the method's
ReLU::

    method(activations: (P, K, h, w), gradients: (P, K, h, w)) -> (P, h, w)

The formulas follow the papers and match the ``grad-cam`` package (1.5.7)
exactly; the test suite compares them on several timm architectures.
Gradients may carry a graph (``create_graph=True``): every operation here is
differentiable, so an attention map can sit inside a loss.

Register your own with ``CAM_METHODS.register("name")`` or pass any callable
of the same signature to ``GuidedAttention(cam=...)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from attnguide.core.registry import Registry

CAM_METHODS = Registry("CAM method")


def _weighted_sum(weights: Tensor, activations: Tensor) -> Tensor:
    """ReLU(sum_k w_pk A_pk): (P, K), (P, K, h, w) -> (P, h, w)."""
    return F.relu(torch.einsum("pk,pkhw->phw", weights, activations))


@CAM_METHODS.register("gradcam")
def gradcam(activations: Tensor, gradients: Tensor) -> Tensor:
    """Grad-CAM (Selvaraju et al. 2017), the map GAIN trains.

    ``w_k = mean_ij G_kij``, ``map = ReLU(sum_k w_k A_k)``.
    """
    return _weighted_sum(gradients.mean(dim=(2, 3)), activations)


@CAM_METHODS.register("gradcampp")
def gradcampp(activations: Tensor, gradients: Tensor) -> Tensor:
    """Grad-CAM++ (Chattopadhyay et al. 2018, eq. 19).

    ``a_kij = G^2 / (2 G^2 + sum_ij(A_k) G^3 + 1e-6)`` (0 where G = 0),
    ``w_k = sum_ij a_kij ReLU(G_kij)``, ``map = ReLU(sum_k w_k A_k)``.
    """
    g2 = gradients.pow(2)
    g3 = g2 * gradients
    sum_a = activations.sum(dim=(2, 3), keepdim=True)
    alpha = g2 / (2 * g2 + sum_a * g3 + 1e-6)
    alpha = torch.where(gradients != 0, alpha, torch.zeros_like(alpha))
    return _weighted_sum((alpha * F.relu(gradients)).sum(dim=(2, 3)), activations)


@CAM_METHODS.register("xgradcam")
def xgradcam(activations: Tensor, gradients: Tensor) -> Tensor:
    """XGrad-CAM (Fu et al. 2020): ``w_k = sum_ij G_kij A_kij / (sum_ij A_kij + 1e-7)``."""
    sum_a = activations.sum(dim=(2, 3), keepdim=True)
    weights = (gradients * activations / (sum_a + 1e-7)).sum(dim=(2, 3))
    return _weighted_sum(weights, activations)


@CAM_METHODS.register("layercam")
def layercam(activations: Tensor, gradients: Tensor) -> Tensor:
    """LayerCAM (Jiang et al. 2021): ``map = ReLU(sum_k ReLU(G_k) * A_k)`` (per pixel)."""
    return F.relu((F.relu(gradients) * activations).sum(dim=1))


@CAM_METHODS.register("hirescam")
def hirescam(activations: Tensor, gradients: Tensor) -> Tensor:
    """HiResCAM (Draelos & Carin 2020): ``map = ReLU(sum_k G_k * A_k)`` (per pixel)."""
    return F.relu((gradients * activations).sum(dim=1))


@CAM_METHODS.register("cam")
def cam(activations: Tensor, gradients: Tensor) -> Tensor:
    """CAM (Zhou et al. 2016): ``map = ReLU(sum_k W_ck A_k)``.

    When the layer feeds global average pooling and a linear classifier,
    ``d s_c / d A_kij = W_ck / (h w)`` at every pixel, so ``W_ck = sum_ij G_kij``:
    this is the classic CAM, computed from gradients so that it needs no
    knowledge of the head (and ``attention()`` uses the closed form, with no
    backward pass at all). For other heads it is Grad-CAM scaled by ``h w``.
    """
    return _weighted_sum(gradients.sum(dim=(2, 3)), activations)
