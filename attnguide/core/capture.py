"""The watched layer of a `GuidedAttention`: which module, how to read its output.

`LayerTarget` resolves the layer (a name, a module, timm's last stage, or chosen
at the first call: ``"auto"`` or a probe forward), captures its output in one
forward pass, checks it ran once and gives a spatial grid, and reads any
output (NCHW, NHWC, tokens) as a (B, K, h, w) map. Second in the reading order
of the core: checks -> capture -> maps -> terms.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import Tensor, nn

from attnguide.core.hooks import ActivationCapture, eval_mode
from attnguide.core.layers import (
    MIN_CELLS,
    auto_layer,
    detect_layout,
    probe_last_spatial_layer,
    resolve_layer,
    to_spatial,
)
from attnguide.errors import AttnGuideError


class LayerTarget:
    """One layer of ``model`` to take attention maps from.

    Args:
        model: the classifier.
        layer: as `GuidedAttention`'s ``layer``.
        layout: ``"auto"`` (detected from the first captured output), ``"NCHW"``,
            ``"NHWC"``, ``"tokens"``, or a callable ``tensor -> (B, K, h, w)``.

    Holds the model and the layer module as plain attributes (not submodules), so
    the wrapper that owns a target registers neither a second time.
    """

    def __init__(self, model: nn.Module, layer: str | nn.Module | None,
                 layout: str | Callable[[Tensor], Tensor]) -> None:
        self.model = model
        self.auto = layer == "auto"
        resolved = resolve_layer(model, layer)
        self.name, self.module = resolved if resolved else (None, None)
        self.layout: str | Callable | None = None if layout == "auto" else layout
        self._warned_coarse = False

    def ensure(self, images: Tensor) -> None:
        """Choose the layer now if it was left to the first call: (B, 3, H, W) images."""
        if self.module is None:
            found = auto_layer(self.model, tuple(images.shape[-2:])) if self.auto else None
            if found is None:  # probe forward: eval mode (batch of one, no running-stat
                with eval_mode(self.model), torch.no_grad():  # update), each flag restored
                    found = probe_last_spatial_layer(self.model, images)
            self.name, self.module = found

    def capture(self, start_grad: bool = False) -> ActivationCapture:
        """A context manager that keeps the layer's output of one forward pass."""
        return ActivationCapture(self.module, start_grad=start_grad)

    def captured(self, cap: ActivationCapture, images: Tensor, stacklevel: int = 2) -> Tensor:
        """The layer's output after one forward pass, checked: it ran exactly once and
        reads as a grid of at least 2x2 cells (a warning below 7x7)."""
        if cap.calls != 1:
            what = "was not called" if cap.calls == 0 else f"ran {cap.calls} times"
            raise AttnGuideError(
                f"layer {self.name!r} {what} in one forward pass; pick a layer that runs "
                "exactly once (a distinct stage or block)"
            )
        if self.layout is None:
            self.layout = detect_layout(self.model, self.name, cap.output)
        spatial = self.spatial(cap.output, images.shape[-2:])
        if spatial.dim() != 4 or min(spatial.shape[2:]) < 2:
            raise AttnGuideError(
                f"layer {self.name!r} gives a {tuple(spatial.shape[1:])} map: attention needs "
                "a spatial grid of at least 2x2; pick an earlier layer or use larger images"
            )
        if min(spatial.shape[2:]) < MIN_CELLS and not self._warned_coarse:
            self._warned_coarse = True
            h, w = spatial.shape[2:]
            warnings.warn(
                f"layer {self.name!r} gives a {h}x{w} attention map for "
                f"{images.shape[-2]}x{images.shape[-1]} images: too coarse to follow objects; "
                "feed larger images (or drop down-scaled passes), or watch an earlier layer "
                "(layer='auto' picks the deepest stage with at least 7x7 cells)",
                stacklevel=stacklevel + 1)
        return cap.output

    def spatial(self, tensor: Tensor, image_hw) -> Tensor:
        """The layer's output (or its gradient) as (B, K, h, w)."""
        return to_spatial(self.model, tensor, self.layout, tuple(image_hw))
