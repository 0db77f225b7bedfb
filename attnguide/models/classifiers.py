"""Classifiers for attnguide: any timm model, by name, with local or hub weights.

:func:`create_model` builds a timm classifier for a data set's classes and
optionally loads a local weights file (timm or torchvision state dict,
``.pt``/``.pth``/``.bin`` or ``.safetensors``) with
:func:`attnguide.models.weights.load_weights`: the classifier is re-sized to the
data set, weights whose shape does not match are dropped and reported.
``--pretrained`` asks timm's hub, after a quick probe so that an offline machine
fails at once with one line. Trained runs are read by :mod:`attnguide.models.trained`.

Example:
    >>> model = create_model("resnet18", num_classes=5, weights="resnet18-f37072fd.pth")
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import os
import re
import socket
from collections.abc import Iterator
from typing import Any

from torch import nn

from attnguide.errors import AttnGuideError
from attnguide.models.weights import load_weights

__all__ = ["check_model_name", "create_model"]


# ---------------------------------------------------------------------- timm models


def check_model_name(name: str) -> None:
    """Raise AttnGuideError with the closest timm names when ``name`` is unknown."""
    import timm

    if not isinstance(name, str) or not name:
        raise AttnGuideError("the model name is empty; pass a timm name such as --model resnet18")
    if timm.is_model(name.split(".")[0]) or timm.is_model(name):
        return
    known = timm.list_models()
    family = _family(name, known)  # resnet_nope -> resnet*: suggest the same family first
    close = difflib.get_close_matches(name, family, n=6, cutoff=0.75)
    close += [m for m in sorted(family, key=lambda m: (len(m), m)) if m not in close][:6 - len(close)]
    if not close:
        close = difflib.get_close_matches(name, known, n=6, cutoff=0.6)
    if not close:
        close = [m for m in known if name.lower() in m][:6]
    hint = f"did you mean {', '.join(close)}?" if close else "list them with timm.list_models('*resnet*')"
    raise AttnGuideError(f"unknown timm model {name!r}: {hint}")


def _family(name: str, known: list[str]) -> list[str]:
    """timm names that start with ``name``'s family word (``resnet`` of ``resnet_nope``)."""
    stem = re.split(r"[^a-z]", name.lower(), maxsplit=1)[0]
    if len(stem) < 3:
        return []
    return [m for m in known if m.startswith(stem)]


def create_model(
    name: str,
    num_classes: int,
    weights: str | os.PathLike | None = None,
    pretrained: bool = False,
    partial_weights: bool = False,
    **model_kwargs: Any,
) -> nn.Module:
    """A timm classifier with ``num_classes`` outputs.

    Args:
        name: any timm model name (``timm.list_models()``), optionally with a
            pretrained tag (``resnet18.a1_in1k``).
        num_classes: outputs of the classifier (the data set's classes).
        weights: a local weights file (see :func:`~attnguide.models.weights.load_weights`).
            The classifier is re-sized: weights whose shape differs from the model's are
            dropped and reported.
        pretrained: ask timm's hub for the weights. Offline this fails at once
            with one line pointing to ``weights``.
        partial_weights: accept a ``weights`` file that matches less than half of the
            backbone's tensors (:data:`MIN_BACKBONE_MATCH`); by default such a file,
            usually made for another architecture, is refused with the count that matched.
        **model_kwargs: passed to ``timm.create_model`` (``drop_rate``, ...).

    Returns:
        The model, in train mode.
    """
    import timm

    check_model_name(name)
    if num_classes < 1:
        raise AttnGuideError(f"num_classes must be at least 1, got {num_classes}")
    if weights is not None and pretrained:
        raise AttnGuideError("pass either --weights PATH or --pretrained, not both")
    if pretrained:
        model = _create_pretrained(name, num_classes, **model_kwargs)
    else:
        try:
            model = timm.create_model(name, pretrained=False, num_classes=num_classes, **model_kwargs)
        except TypeError as e:  # bad model_kwargs
            raise AttnGuideError(f"timm could not build {name!r}: {e}") from None
    if weights is not None:
        rep = load_weights(model, weights, on_mismatch="drop", report=False)
        backbone = _backbone_keys(model)
        matched = [k for k in rep.loaded if k in backbone]
        if not partial_weights and backbone and len(matched) < MIN_BACKBONE_MATCH * len(backbone):
            raise AttnGuideError(
                f"weights file {rep.path!r} matches only {len(matched)} of the {len(backbone)} backbone tensors "
                f"of {name!r}: it is probably for another architecture; pick the model it was "
                "made for, or pass --partial-weights (partial_weights=True) to keep the partial load"
            )
        logging.getLogger("attnguide").log(
            logging.WARNING if (rep.missing or rep.unexpected) else logging.INFO, rep.summary())
    return model


MIN_BACKBONE_MATCH = 0.5
"""Share of the backbone's tensors (the state dict without the classifier) that a
``weights`` file must match unless ``partial_weights`` is given."""


def _backbone_keys(model: nn.Module) -> set[str]:
    """State-dict keys outside the classifier (timm's ``get_classifier()``)."""
    keys = set(model.state_dict())
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if not isinstance(head, nn.Module):
        return keys
    prefixes = [name + "." for name, module in model.named_modules() if module is head and name]
    return {k for k in keys if not any(k.startswith(p) for p in prefixes)}


def _hub_reachable(timeout: float = 3.0) -> bool:
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def _hub_offline(offline: bool) -> Iterator[None]:
    """Put huggingface_hub in offline mode (cache only, no retries) while active."""
    if not offline:
        yield
        return
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - timm depends on it
        yield
        return
    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def _create_pretrained(name: str, num_classes: int, **model_kwargs: Any) -> nn.Module:
    import timm

    offline = not _hub_reachable()
    # Quiet the hub's retry warnings: the failure is reported as one line below.
    hub_log = logging.getLogger("huggingface_hub")
    level = hub_log.level
    hub_log.setLevel(logging.ERROR)
    try:
        with _hub_offline(offline):
            return timm.create_model(name, pretrained=True, num_classes=num_classes, **model_kwargs)
    except Exception as e:  # network, cache miss, no pretrained weights for this name
        reason = "no network and not in the local cache" if offline else str(e).splitlines()[0][:160]
        raise AttnGuideError(
            f"--pretrained: could not get timm's weights for {name!r} ({reason}); download the "
            "weights file on a machine with network access and pass it with --weights PATH"
        ) from None
    finally:
        hub_log.setLevel(level)
