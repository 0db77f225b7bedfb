"""The guidance vocabulary of ``attnguide train``: ``--guidance none|auto|self|ext|...``
and the options next to it, turned into :class:`~attnguide.core.guide.GuidedAttention`
keyword arguments. Shared by training (``attnguide.engine``) and by trained runs
(:meth:`attnguide.models.TrainedModel.guide`), so both build the same wrapper.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from attnguide.core.annotations import KINDS
from attnguide.core.masks import MASKS
from attnguide.core.terms import TERMS
from attnguide.errors import AttnGuideError

GUIDANCE_PARTS = ("self", "ext", "rrr", "bg", "swap", "bg_null", "energy", "box_l1", "box_swap", "point", "avoid")
"""``--guidance`` is ``none``, ``auto`` or a '+'-joined set of these (``ext+rrr``,
``self+energy``); ``am`` is another name for ``self``."""
ALIASES = {"am": "self"}
AUTO_GUIDANCE = {False: "self", True: "ext+swap"}
"""What ``--guidance auto`` becomes without / with pixel masks in the training split:
GAIN's self-guidance, or GAIN_ext plus the background swap (the setting that removed
the shortcut in benchmarks/RESULTS.md, "Shortcut removal on the cue scenes"). Boxes,
points and avoid regions in the training split add ``energy+box_swap``, ``point`` and
``avoid``; with boxes, ``box_swap`` takes the place of ``swap`` (it swaps the masked images
by their masks too).
"""
AUTO_PARTS = {"boxes": "energy+box_swap", "points": "point", "avoid": "avoid"}
"""The guidance word that ``--guidance auto`` adds for each annotation kind it finds."""
SWAP_SOURCES = ("auto", "masks", "attention")
AVOID_SOURCES = ("attention", "input_grad")
MASK_PARTS = frozenset({"ext", "rrr", "bg", "swap", "bg_null"})
"""Guidance words that read pixel masks (masks or scribbles)."""
PART_KINDS = {"ext": ("mask", "scribble"), "rrr": ("mask", "scribble"),
              "bg": ("mask", "scribble"), "swap": ("mask", "scribble"), "bg_null": ("mask", "scribble"),
              "energy": ("boxes",), "box_l1": ("boxes",), "box_swap": ("boxes",), "point": ("points",),
              "avoid": ("avoid",)}
"""The annotation kinds (`attnguide.core.annotations.KINDS`) each guidance word uses."""
KIND_WORDS = {"masks": "mask", "mask": "mask", "scribbles": "scribble", "scribble": "scribble",
              "boxes": "boxes", "box": "boxes", "points": "points", "point": "points",
              "avoid": "avoid"}
"""``--annotations`` words -> annotation kinds."""


def resolve_guidance(guidance: str, has_masks: bool, kinds=()) -> str:
    """``auto`` -> `AUTO_GUIDANCE` for a training split with or without pixel masks, plus
    the words of each other annotation kind in ``kinds`` (`AUTO_PARTS`: boxes add
    ``energy+box_swap``, which replaces ``swap``); any other value unchanged. The box
    words were measured on the scenes: RESULTS.md, "Boxes, clicks or masks on the scenes"."""
    if guidance != "auto":
        return guidance
    extra = [AUTO_PARTS[k] for k in KINDS if k in AUTO_PARTS and k in set(kinds)]
    base = AUTO_GUIDANCE[bool(has_masks)]
    if "boxes" in set(kinds):  # box_swap cuts masked images by their masks: one swap, not two
        base = "+".join(p for p in base.split("+") if p != "swap")
    return "+".join([base, *extra])


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
    parts = [ALIASES.get(p.strip(), p.strip()) for p in str(guidance).split("+")]
    bad = [p for p in parts if p not in GUIDANCE_PARTS]
    if bad or not parts:
        raise AttnGuideError(
            f"--guidance must be none, auto or a '+'-joined set of {', '.join(GUIDANCE_PARTS)} "
            f"(e.g. ext+rrr, self+energy), got {guidance!r}")
    return frozenset(parts)


def needs_masks(guidance: str) -> bool:
    """Whether a guidance uses pixel masks (`MASK_PARTS`: ext, rrr, bg, swap, bg_null)."""
    return bool(guidance_parts(guidance) & MASK_PARTS)


def guidance_kinds(guidance: str) -> frozenset[str]:
    """The annotation kinds a guidance uses: ``"self+energy"`` -> {"boxes"}."""
    return frozenset(k for part in guidance_parts(guidance) for k in PART_KINDS.get(part, ()))


def uses_annotations(guidance: str) -> bool:
    """Whether a guidance reads any annotation (masks, scribbles, boxes, points, avoid)."""
    return bool(guidance_kinds(guidance))


def parse_annotation_kinds(text: str | None) -> frozenset[str] | None:
    """``--annotations``: ``auto`` (None: whatever the data have that the guidance uses) or
    a ','- or '+'-joined list of masks, scribbles, boxes, points, avoid."""
    if text is None or str(text).strip().lower() in ("", "auto"):
        return None
    words = [w.strip().lower() for w in str(text).replace("+", ",").split(",") if w.strip()]
    bad = [w for w in words if w not in KIND_WORDS]
    if bad or not words:
        raise AttnGuideError(f"--annotations must be auto or a ','-joined list of masks, "
                             f"scribbles, boxes, points, avoid (e.g. boxes or masks,boxes), "
                             f"got {text!r}")
    return frozenset(KIND_WORDS[w] for w in words)


def check_annotation_kinds(guidance: str, kinds) -> None:
    """Raise when ``--annotations`` names a kind that ``--guidance`` cannot use, saying
    which guidance word uses it."""
    unused = [k for k in KINDS if k in set(kinds) and k not in guidance_kinds(guidance)]
    if unused:
        said = "; ".join(f"{k} feed --guidance "
                         f"{' or '.join(p for p in GUIDANCE_PARTS if k in PART_KINDS.get(p, ()))}"
                         for k in unused)
        example = next(p for p in GUIDANCE_PARTS if unused[0] in PART_KINDS.get(p, ()))
        raise AttnGuideError(f"--annotations asks for {', '.join(unused)}, which --guidance "
                             f"{guidance} cannot use ({said}); add the word, e.g. --guidance "
                             f"self+{example}, or drop {unused[0]} from --annotations")


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
        "freeze_bn": config.get("freeze_bn", "auto"),
        "max_pairs_per_image": config.get("max_pairs_per_image"),
        "detach_weights": config.get("detach_weights", False),
    }
    terms = {}
    if config.get("ext_classes", "target") == "all" and omega:
        kwargs["omega"], terms["ext_all"] = 0.0, omega
    if "bg" in parts:
        terms["bg"] = config.get("bg_weight", 1.0)
    if "bg_null" in parts:
        terms["bg_null"] = config.get("bg_null_weight", 1.0)
    if "swap" in parts:
        source = resolve_swap_source(config.get("swap_source", "masks"))
        name = "swap_attention" if source == "attention" else "swap"
        terms[name] = config.get("swap_weight", 1.0)
    if "energy" in parts:
        terms["energy"] = config.get("energy_weight", 1.0)
    if "box_l1" in parts:
        terms["box_l1"] = config.get("box_l1_weight", 1.0)
    if "box_swap" in parts:
        source = resolve_swap_source(config.get("swap_source", "masks"))
        terms["box_swap_attention" if source == "attention" else "box_swap"] = config.get("swap_weight", 1.0)
    if "point" in parts:
        terms[TERMS.get("point").configured(sigma=config.get("point_sigma", 0.05))] = \
            config.get("point_weight", 1.0)
    if "avoid" in parts:
        source = config.get("avoid_source", "attention")
        terms["avoid_rrr" if source == "input_grad" else "avoid"] = config.get("avoid_weight", 1.0)
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


