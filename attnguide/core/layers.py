"""Which layer to watch, and how to read its output as a (B, K, h, w) map.

A layer is a dotted name, a module of the model, or None: then timm's
``feature_info[-1]["module"]`` (the last feature stage), or, for other models,
the last module with a spatial 4-D output, found by one probe forward.
Token outputs (ViT, DeiT, EVA: (B, N, D)) are reshaped with the patch grid
after dropping the model's prefix tokens; NHWC outputs (Swin) are permuted.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from attnguide.errors import AttnGuideError

LAYOUTS = ("auto", "NCHW", "NHWC", "tokens")
MIN_CELLS = 7  # a map coarser than 7x7 can hardly follow an object


def _names(model: nn.Module) -> list[str]:
    return [n for n, _ in model.named_modules() if n]


def resolve_layer(model: nn.Module, layer: str | nn.Module | None) -> tuple[str, nn.Module] | None:
    """Return ``(name, module)`` for ``layer``; None when it is chosen at the first
    call ('auto', or a model without timm's ``feature_info``)."""
    if layer == "auto":
        return None
    if isinstance(layer, nn.Module):
        for name, module in model.named_modules():
            if module is layer:
                return name, module
        raise AttnGuideError(
            f"the layer module {type(layer).__name__} is not part of the model; pass one of "
            "model's own modules or its dotted name (e.g. 'layer4')"
        )
    if isinstance(layer, str):
        try:
            return layer, model.get_submodule(layer)
        except AttributeError:
            close = difflib.get_close_matches(layer, _names(model), n=5, cutoff=0.5)
            hint = f"closest names: {', '.join(close)}" if close else "see model.named_modules()"
            raise AttnGuideError(f"the model has no layer {layer!r}; {hint}") from None
    if layer is not None:
        raise AttnGuideError(
            f"layer must be a name, a module, 'auto' or None, not {type(layer).__name__}")
    stages = timm_stages(model)
    return _stage(model, stages[-1]["module"]) if stages else None


def timm_stages(model: nn.Module) -> list[dict]:
    """timm's ``feature_info`` entries that name a module (empty for other models)."""
    info = getattr(model, "feature_info", None)
    if not isinstance(info, list):
        return []
    return [f for f in info if isinstance(f, dict) and "module" in f]


def _stage(model: nn.Module, name: str) -> tuple[str, nn.Module]:
    module = model.get_submodule(name)
    # A ViT that classifies from its class token sends no gradient to the patch
    # tokens of its last block's output; the block's first norm still gets it.
    if getattr(model, "global_pool", None) == "token" and hasattr(module, "norm1"):
        return f"{name}.norm1", module.norm1
    return name, module


def auto_layer(model: nn.Module, image_hw: tuple[int, int]) -> tuple[str, nn.Module] | None:
    """The deepest timm stage whose map has at least ``MIN_CELLS`` cells along the
    image's shorter side (resnet18 at 224 px: layer4, 7x7; at 96 px: layer3, 6x6 ->
    layer2, 12x12); None for models without ``feature_info``."""
    stages = [f for f in timm_stages(model) if f.get("reduction")]
    if not stages:
        return None
    side = min(image_hw)
    fine = [f for f in stages if side // f["reduction"] >= MIN_CELLS]
    return _stage(model, (fine[-1] if fine else stages[0])["module"])


def probe_last_spatial_layer(model: nn.Module, images: Tensor) -> tuple[str, nn.Module]:
    """One forward with a hook on every module; the last one (in call order) whose
    output is (B, K, h, w) with h, w > 1 wins."""
    found: list[tuple[str, nn.Module]] = []
    handles = []

    def make_hook(name: str):
        def hook(module, inputs, output):
            if isinstance(output, Tensor) and output.dim() == 4 and min(output.shape[2:]) > 1:
                found.append((name, module))

        return hook

    try:
        for name, module in model.named_modules():
            if name:
                handles.append(module.register_forward_hook(make_hook(name)))
        with torch.no_grad():
            model(images[:1])
    finally:
        for h in handles:
            h.remove()
    if not found:
        raise AttnGuideError(
            "found no layer with a spatial (B, K, h, w) output; pass layer='name' explicitly"
        )
    return found[-1]


def detect_layout(model: nn.Module, name: str, output: Tensor) -> str:
    """Guess how to read a layer's output: 'NCHW', 'NHWC' or 'tokens'."""
    if output.dim() == 3:
        return "tokens"
    if output.dim() != 4:
        raise AttnGuideError(
            f"layer {name!r} outputs shape {tuple(output.shape)}; attention needs a spatial map "
            "(B, K, h, w) or tokens (B, N, D): pick an earlier layer"
        )
    info = getattr(model, "feature_info", None)
    chans = None
    if isinstance(info, list):
        chans = next((f.get("num_chs") for f in info if f.get("module") == name), None)
    if getattr(model, "output_fmt", None) == "NHWC" and chans in (None, output.shape[-1]):
        return "NHWC"
    if chans is not None and output.shape[-1] == chans and output.shape[1] != chans:
        return "NHWC"
    return "NCHW"


def _token_grid(model: nn.Module, n_tokens: int, image_hw: tuple[int, int]) -> tuple[int, int, int]:
    """(prefix tokens, grid h, grid w) for a ViT-style (B, N, D) output."""
    prefix = getattr(model, "num_prefix_tokens", None)
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    if prefix is not None and patch is not None:
        ph, pw = (patch, patch) if isinstance(patch, int) else patch
        gh, gw = image_hw[0] // ph, image_hw[1] // pw
        if gh * gw + prefix == n_tokens:
            return prefix, gh, gw
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    if grid is not None:
        gh, gw = grid
        if prefix is None:
            prefix = n_tokens - gh * gw
        if gh * gw + prefix == n_tokens:
            return prefix, gh, gw
    if prefix is not None:  # square grid of the remaining tokens, scaled by the image's aspect
        n = n_tokens - prefix
        gh = round(math.sqrt(n * image_hw[0] / image_hw[1]))
        if gh > 0 and n % gh == 0:
            return prefix, gh, n // gh
    raise AttnGuideError(
        f"cannot reshape {n_tokens} tokens into a patch grid: the model has no "
        "num_prefix_tokens/patch_embed.patch_size; pass layout=callable mapping (B, N, D) to (B, D, h, w)"
    )


def to_spatial(
    model: nn.Module,
    tensor: Tensor,
    layout: str | Callable[[Tensor], Tensor],
    image_hw: tuple[int, int],
) -> Tensor:
    """Read a layer output (or its gradient) as (B, K, h, w)."""
    if callable(layout):
        return layout(tensor)
    if layout == "NCHW":
        return tensor
    if layout == "NHWC":
        return tensor.permute(0, 3, 1, 2)
    prefix, gh, gw = _token_grid(model, tensor.shape[1], image_hw)
    return tensor[:, prefix:].reshape(tensor.shape[0], gh, gw, tensor.shape[2]).permute(0, 3, 1, 2)
