"""The guidance vocabulary of ``attnguide train``: ``--guidance none|auto|self|ext|...``
and the options next to it, turned into :class:`~attnguide.core.guide.GuidedAttention`
keyword arguments. Shared by training (``attnguide.engine``) and by trained runs
(:meth:`attnguide.models.TrainedModel.guide`), so both build the same wrapper.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from attnguide.core.masks import MASKS
from attnguide.errors import AttnGuideError

GUIDANCE_PARTS = ("self", "ext", "rrr", "bg", "swap")
"""``--guidance`` is ``none``, ``auto`` or a '+'-joined set of these (``ext+rrr``)."""
AUTO_GUIDANCE = {False: "self", True: "ext+swap"}
"""What ``--guidance auto`` becomes without / with pixel masks in the training split:
GAIN's self-guidance, or GAIN_ext plus the background swap (the setting that removed
the shortcut in benchmarks/RESULTS.md, "Shortcut removal on the cue scenes")."""
SWAP_SOURCES = ("auto", "masks", "attention")


def resolve_guidance(guidance: str, has_masks: bool) -> str:
    """``auto`` -> `AUTO_GUIDANCE` for a training split with or without pixel masks;
    any other value unchanged."""
    return AUTO_GUIDANCE[bool(has_masks)] if guidance == "auto" else guidance


def resolve_swap_source(swap_source: str) -> str:
    """``auto`` -> ``masks``: only pixel-labelled images are swapped. Cutting the other
    images out by their attention (``attention``) did worse, in accuracy and in maps, once
    every epoch showed every image (RESULTS.md, "10 % masks on the cue scenes: a sweep on
    a GPU")."""
    return "masks" if swap_source == "auto" else swap_source


def guidance_parts(guidance: str) -> frozenset[str]:
    """``"ext+rrr"`` -> {"ext", "rrr"}; ``"none"`` -> {}; ``"auto"`` (not resolved
    yet: no masks known) -> {"self"}. Raises on unknown parts."""
    if guidance == "none":
        return frozenset()
    if guidance == "auto":
        return frozenset({"self"})
    parts = [p.strip() for p in str(guidance).split("+")]
    bad = [p for p in parts if p not in GUIDANCE_PARTS]
    if bad or not parts:
        raise AttnGuideError(
            f"--guidance must be none, auto or a '+'-joined set of {', '.join(GUIDANCE_PARTS)} "
            f"(e.g. ext+rrr), got {guidance!r}")
    return frozenset(parts)


def needs_masks(guidance: str) -> bool:
    """Whether a guidance uses pixel masks (every part but self)."""
    return bool(guidance_parts(guidance) - {"self"})


def guide_kwargs(config: Mapping[str, Any], layer: str | None = None) -> dict[str, Any]:
    """GuidedAttention keyword arguments from a training config dict."""
    parts = guidance_parts(config.get("guidance", "self"))
    omega = config.get("omega", 10.0) if "ext" in parts else 0.0
    kwargs = {
        "layer": layer if layer is not None else config.get("layer"),
        "cam": config.get("cam", "gradcam"),
        "mask": _mask_from_config(config),
        "alpha": config.get("alpha", 1.0) if parts & {"self", "ext"} else 0.0,
        "omega": omega,
        "am_score": config.get("am_score", "auto"),
        "freeze_bn": config.get("freeze_bn", True),
        "max_pairs_per_image": config.get("max_pairs_per_image"),
        "detach_weights": config.get("detach_weights", False),
    }
    terms = {}
    if config.get("ext_classes", "target") == "all" and omega:
        kwargs["omega"], terms["ext_all"] = 0.0, omega
    if "bg" in parts:
        terms["bg"] = config.get("bg_weight", 1.0)
    if "swap" in parts:
        source = resolve_swap_source(config.get("swap_source", "masks"))
        name = "swap_attention" if source == "attention" else "swap"
        terms[name] = config.get("swap_weight", 1.0)
    if terms:
        kwargs["terms"] = terms
    if "rrr" in parts:
        kwargs["rrr_weight"] = config.get("rrr_weight", 1.0)
    if config.get("area_weight"):
        kwargs["area_weight"] = config["area_weight"]
    kwargs.update(config.get("guide_options") or {})
    return kwargs


def _mask_from_config(config: Mapping[str, Any]):
    """The mask name, or an instance when the threshold or sharpness is not the default."""
    mask = config.get("mask", "soft_threshold")
    threshold = config.get("mask_threshold", 0.5)
    sharpness = config.get("mask_sharpness", 10.0)
    if not isinstance(mask, str) or (threshold, sharpness) == (0.5, 10.0):
        return mask
    try:
        return MASKS.get(mask)(threshold=threshold, sharpness=sharpness)
    except TypeError:
        raise AttnGuideError(
            f"mask {mask!r} takes no threshold/sharpness; drop --mask-threshold/--mask-sharpness"
        ) from None


