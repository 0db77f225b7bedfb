"""Input checks of `GuidedAttention`: its arguments, the batch, the model's output.

Each check raises `AttnGuideError` with a message that says what to pass
instead; nothing here changes a tensor beyond the dtype casts of
`check_labels` and `check_classes`. First in the reading order of the core:
checks -> capture -> maps -> terms.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

from attnguide.constants import IGNORE
from attnguide.core.layers import LAYOUTS
from attnguide.core.losses import SCORES
from attnguide.errors import AttnGuideError


def check_arguments(model, *, am_score: str, layout: str | Callable, max_pairs_per_image: int | None,
                    weights: Mapping[str, float]) -> None:
    """The constructor's arguments: a bare module, known names, weights >= 0."""
    if not isinstance(model, nn.Module):
        raise AttnGuideError(f"model must be a torch.nn.Module, not {type(model).__name__}")
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        raise AttnGuideError(
            "wrap the bare model, then the GuidedAttention module: DDP(GuidedAttention(model)); "
            "DataParallel replicas would each fire the hook"
        )
    if am_score != "auto" and am_score not in SCORES:
        raise AttnGuideError(f"am_score must be 'auto' or one of {SCORES}, not {am_score!r}")
    if not (isinstance(layout, str) and layout in LAYOUTS) and not callable(layout):
        raise AttnGuideError(f"layout must be one of {LAYOUTS} or a callable, not {layout!r}")
    if max_pairs_per_image is not None and max_pairs_per_image < 1:
        raise AttnGuideError("max_pairs_per_image must be None or at least 1")
    for name, value in weights.items():
        if value < 0:
            raise AttnGuideError(f"{name} must be >= 0, got {value}")


FREEZE_BN = ("auto", "all", "erased", "none")
"""``freeze_bn`` settings: which extra forwards of a step run BatchNorm in eval mode."""

SWAP_TERMS = ("swap", "swap_attention", "box_swap", "box_swap_attention")
"""Terms whose extra forwards are composed pictures (an object on another background)."""


def resolve_freeze_bn(value: bool | str, swap: bool = False) -> str:
    """``True`` -> ``"all"``, ``False`` -> ``"none"``; ``"auto"`` -> ``"none"`` when the step
    has a background-swap term (``swap``: measured to move the classifier's reliance off the
    background far more with BatchNorm in training mode, benchmarks/RESULTS.md, "Cue decoy:
    equal steps" and "Composite"), else ``"all"`` (GAIN's erased images are out of
    distribution); another `FREEZE_BN` word unchanged."""
    if isinstance(value, bool):
        return "all" if value else "none"
    if value not in FREEZE_BN:
        raise AttnGuideError(f"freeze_bn must be True, False or one of {', '.join(FREEZE_BN)}, "
                             f"not {value!r}")
    if value == "auto":
        return "none" if swap else "all"
    return value


def extract_logits(output) -> Tensor:
    """The (B, C) logits in a model's output: a tensor, ``output["logits"]``,
    ``output.logits``, or the first item of a tuple."""
    logits = output
    if isinstance(output, Mapping):
        logits = output.get("logits")
    elif not isinstance(output, Tensor) and isinstance(getattr(output, "logits", None), Tensor):
        logits = output.logits
    elif isinstance(output, (tuple, list)) and output:
        logits = output[0]
    if not isinstance(logits, Tensor) or logits.dim() != 2:
        got = tuple(logits.shape) if isinstance(logits, Tensor) else type(output).__name__
        raise AttnGuideError(
            f"the model returned {got}, not logits (B, C): return a tensor, a dict with a "
            "'logits' entry, or a tuple whose first item is the logits"
        )
    return logits


def check_images(images, finite: bool = False) -> None:
    """(B, 3, H, W) float, B >= 1; with ``finite``, no NaN or infinite value (checked
    before any forward pass, so BatchNorm running statistics stay clean; one device sync)."""
    if not isinstance(images, Tensor) or images.dim() != 4 or not images.is_floating_point():
        got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise AttnGuideError(f"images must be a float tensor (B, 3, H, W), got {got}")
    if images.shape[0] == 0:
        raise AttnGuideError(f"empty batch: images have shape {tuple(images.shape)} (B = 0); "
                             "skip empty batches (e.g. DataLoader(drop_last=True) or a filter)")
    if finite and not bool(torch.isfinite(images).all()):
        bad = int((~torch.isfinite(images)).sum())
        raise AttnGuideError(
            f"images hold {bad} NaN or infinite value(s) of {images.numel()}; nothing ran, the "
            "model (BatchNorm statistics included) is unchanged: fix the data or skip the batch"
        )


def check_autograd(what: str, hint: str = "") -> None:
    """A guided step and ``attention()`` differentiate: not under ``torch.inference_mode()``."""
    if torch.is_inference_mode_enabled():
        raise AttnGuideError(f"{what} needs autograd: call it outside torch.inference_mode(){hint}")


def check_labels(labels, batch: int) -> Tensor:
    """(B, C) multi-hot in [0, 1] -> float, or (B,) class indices -> int64."""
    if not isinstance(labels, Tensor):
        raise AttnGuideError(f"labels must be a tensor, not {type(labels).__name__}")
    if labels.dim() not in (1, 2) or labels.shape[0] != batch:
        raise AttnGuideError(
            f"labels must be (B, C) multi-hot or (B,) class indices with B = {batch}, "
            f"got shape {tuple(labels.shape)}"
        )
    if labels.dim() == 1:
        if labels.is_floating_point() or labels.dtype == torch.bool:
            raise AttnGuideError(
                f"(B,) labels must be int64 class indices, got {labels.dtype}; for multi-label "
                "data pass (B, C) multi-hot floats"
            )
        return labels.long()
    labels = labels.float()
    if bool(((labels < 0) | (labels > 1)).any()):
        raise AttnGuideError("multi-hot labels must lie in [0, 1] (1 = class present)")
    return labels


def check_label_range(labels: Tensor, logits: Tensor) -> None:
    """Labels agree with the (B, C) logits: C classes, indices in [0, C - 1]."""
    n = logits.shape[1]
    if labels.dim() == 2 and labels.shape[1] != n:
        raise AttnGuideError(f"labels have {labels.shape[1]} classes but the model outputs {n} logits")
    if labels.dim() == 1 and bool(((labels < 0) | (labels >= n)).any()):
        raise AttnGuideError(f"class indices must lie in [0, {n - 1}] for a model with {n} logits")


def check_masks(masks, images: Tensor) -> None:
    """(B, H, W) integer label maps of the images' size."""
    expected = (images.shape[0], *images.shape[2:])
    if not isinstance(masks, Tensor) or tuple(masks.shape) != expected:
        got = tuple(masks.shape) if isinstance(masks, Tensor) else type(masks).__name__
        raise AttnGuideError(
            f"masks must have shape (B, H, W) = {expected} to match the images, got {got}; "
            "resize masks with nearest-neighbour interpolation"
        )
    if masks.is_floating_point() or masks.dtype == torch.bool:
        raise AttnGuideError(f"masks must be integer label maps (int64), got {masks.dtype}")


def check_mask_values(masks: Tensor, n_classes: int) -> None:
    """VOC convention: 0 background, class c -> c + 1, 255 ignore."""
    bad = (masks < 0) | ((masks > n_classes) & (masks != IGNORE))
    if bool(bad.any()):
        raise AttnGuideError(
            f"mask values must be 0 (background), 1..{n_classes} (class c -> c + 1) or 255 "
            f"(ignore); found {int(masks[bad][0])}"
        )


def check_classes(classes, batch: int, n_classes: int) -> Tensor:
    """``attention()``'s classes: (B,) or (B, K) int64 -> (B, K)."""
    if not isinstance(classes, Tensor) or classes.is_floating_point():
        raise AttnGuideError("classes must be an int64 tensor (B,) or (B, K) of class indices")
    if classes.dim() == 1:
        classes = classes[:, None]
    if classes.dim() != 2 or classes.shape[0] != batch:
        raise AttnGuideError(f"classes must be (B,) or (B, K) with B = {batch}, got {tuple(classes.shape)}")
    if bool(((classes < 0) | (classes >= n_classes)).any()):
        raise AttnGuideError(f"class indices must lie in [0, {n_classes - 1}]")
    return classes.long()


def check_finite(loss: Tensor, losses: Mapping[str, Tensor]) -> None:
    """``FloatingPointError`` naming every term when the loss is NaN or infinite."""
    if not bool(torch.isfinite(loss.detach())):
        bad = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in losses.items())
        raise FloatingPointError(
            f"the guided loss is not finite ({bad}): check the inputs for NaN/inf, lower the "
            "learning rate, or use bf16 instead of fp16 autocast"
        )
