"""Weights files: the one reader and the one loader of every model in attnguide.

:func:`read_state_dict` reads a ``.safetensors`` or ``torch.save`` file
(``weights_only=True``) and unwraps the nested entries training scripts leave
(``{"state_dict": ...}``, ``{"model": ...}``). :func:`load_weights` copies the
tensors whose names match into a module, after removing a wrapper prefix
(``module.``, ``model.``, ``_orig_mod.``) when that matches more names, and
returns a :class:`LoadReport`. What happens to a tensor whose name matches but
whose shape does not is the caller's choice:

- ``on_mismatch="drop"``: leave it at its initial value and report it. A
  classifier re-sized to a data set's classes (:func:`~attnguide.models.create_model`).
- ``on_mismatch="raise"``: refuse the file. An encoder has no tensor that may
  legitimately differ (:func:`~attnguide.models.segmenters.load_vgg16_weights`).

Example:
    >>> report = load_weights(model, "resnet18-f37072fd.pth")      # doctest: +SKIP
    >>> report.dropped
    ['fc.weight: (1000, 512) -> (5, 512)', 'fc.bias: (1000,) -> (5,)']
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from attnguide.errors import AttnGuideError

__all__ = ["LoadReport", "NESTED_KEYS", "WRAPPER_PREFIXES", "load_weights", "read_state_dict"]

log = logging.getLogger("attnguide")

#: Keys under which training scripts commonly nest the state dict.
NESTED_KEYS = ("state_dict", "model", "model_state_dict", "model_ema", "state_dict_ema", "net")
#: Prefixes left by wrappers (DDP, DataParallel, torch.compile, GuidedAttention).
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")
_POLICIES = ("drop", "raise")


@dataclass
class LoadReport:
    """What :func:`load_weights` did.

    Attributes:
        path: the file read (``"<state dict>"`` for a mapping).
        loaded: keys copied into the model, in the model's order.
        missing: model keys the file does not have (left at their initial values).
        unexpected: file keys the model does not have (ignored).
        dropped: keys present in both but with another shape (the classifier
            re-sized to the data set's classes), as ``key: file shape -> model shape``;
            always empty with ``on_mismatch="raise"``.
        prefix: wrapper prefix removed from the file's keys ("" if none).
    """

    path: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    prefix: str = ""

    def summary(self, limit: int = 8) -> str:
        """A few readable lines."""

        def names(keys: list[str]) -> str:
            more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
            return ", ".join(keys[:limit]) + more

        lines = [f"loaded {len(self.loaded)} tensors from {self.path}"
                 + (f" (removed prefix {self.prefix!r})" if self.prefix else "")]
        if self.dropped:
            lines.append(f"  re-sized (shape differs, left at init): {names(self.dropped)}")
        if self.missing:
            lines.append(f"  missing in the file (left at init): {names(self.missing)}")
        if self.unexpected:
            lines.append(f"  unexpected in the file (ignored): {names(self.unexpected)}")
        return "\n".join(lines)


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a state dict from ``.safetensors`` or a torch file (``weights_only=True``),
    unwrapping nested ``state_dict`` / ``model`` entries (:data:`NESTED_KEYS`)."""
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise FileNotFoundError(
            f"weights file {str(path)!r} {what}; pass a .pt/.pth/.safetensors file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise AttnGuideError(
            f"weights file {str(path)!r} is not a {_format_name(path)} file ({_what_it_is(path, e)}); "
            "pass a state dict saved with torch.save (.pt/.pth) or safetensors (.safetensors)"
        ) from None
    for _ in range(3):  # {"model": {"state_dict": ...}} and the like
        if isinstance(obj, Mapping) and not _is_state_dict(obj):
            inner = next((obj[k] for k in NESTED_KEYS if isinstance(obj.get(k), Mapping)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, Mapping) or not _is_state_dict(obj):
        raise AttnGuideError(
            f"{str(path)!r} holds no state dict (a mapping of names to tensors); found "
            f"{type(obj).__name__} with keys {list(obj)[:6] if isinstance(obj, Mapping) else '-'}"
        )
    return {k: v for k, v in obj.items() if isinstance(v, Tensor)}


def _format_name(path: Path) -> str:
    return "safetensors" if path.suffix == ".safetensors" else "torch.save"


def _what_it_is(path: Path, err: Exception) -> str:
    """A short description of an unreadable weights file, for the message."""
    with path.open("rb") as handle:
        head = handle.read(512)
    if not head:
        return "it is empty"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and all(c.isprintable() or c in "\r\n\t" for c in text):
        return f"it holds text: {head[:40].decode('utf-8', 'replace')!r}..."
    first = (str(err).splitlines() or [""])[0][:160]
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


def _is_state_dict(obj: Mapping) -> bool:
    return bool(obj) and all(isinstance(k, str) for k in obj) and any(
        isinstance(v, Tensor) for v in obj.values())


def _best_prefix(keys: set[str], model_keys: set[str]) -> str:
    """The wrapper prefix whose removal matches the most model keys ("" if none helps)."""
    best, best_hits = "", len(keys & model_keys)
    for prefix in WRAPPER_PREFIXES:
        stripped = {k[len(prefix):] for k in keys if k.startswith(prefix)}
        hits = len(stripped & model_keys)
        if hits > best_hits:
            best, best_hits = prefix, hits
    return best


def load_weights(
    model: nn.Module,
    weights: str | os.PathLike | Mapping[str, Tensor],
    *,
    on_mismatch: Literal["drop", "raise"] = "drop",
    report: bool = True,
    source: str | None = None,
) -> LoadReport:
    """Copy the matching tensors of a weights file (or state dict) into ``model``.

    Args:
        model: any module; its ``state_dict()`` names are matched.
        weights: a file for :func:`read_state_dict`, or a state dict.
        on_mismatch: what to do with a tensor whose name matches and shape does
            not: ``"drop"`` it (reported in ``dropped``) or ``"raise"``.
        report: log :meth:`LoadReport.summary` on the ``attnguide`` logger
            (a warning when keys are missing or unexpected).
        source: how error messages name the weights (default ``weights file '<path>'``).

    Returns:
        A :class:`LoadReport`.

    Raises:
        AttnGuideError: no tensor matches (the file is for another architecture),
            or a shape differs under ``on_mismatch="raise"``.
    """
    if on_mismatch not in _POLICIES:
        raise AttnGuideError(f"on_mismatch must be one of {_POLICIES}, got {on_mismatch!r}")
    if isinstance(weights, Mapping):
        state, path = dict(weights), "<state dict>"
    else:
        state, path = read_state_dict(weights), str(weights)
    source = source or (f"weights file {path!r}" if path != "<state dict>" else "the state dict")
    target = model.state_dict()
    prefix = _best_prefix(set(state), set(target))
    if prefix:
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    shapes = [(k, tuple(v.shape), tuple(target[k].shape)) for k, v in state.items()
              if k in target and v.shape != target[k].shape]  # (name, file shape, model shape)
    if shapes and on_mismatch == "raise":
        shown = "; ".join(f"{k}: file {a} vs model {b}" for k, a, b in shapes[:5])
        raise AttnGuideError(f"{source} has tensors of the wrong shape: {shown}")
    usable = {k: v for k, v in state.items() if k in target and v.shape == target[k].shape}
    if not usable:
        such_as = f" such as {', '.join(list(state)[:3])}" if state else ""
        raise AttnGuideError(
            f"{source} has none of the expected parameter names: no tensor matches the model "
            f"({len(state)} keys{such_as}; the model has {', '.join(list(target)[:3])}, ...): "
            "the file is for another architecture; pick the matching model"
        )
    model.load_state_dict(usable, strict=False)
    rep = LoadReport(
        path=path,
        loaded=[k for k in target if k in usable],
        missing=[k for k in target if k not in state],
        unexpected=[k for k in state if k not in target],
        dropped=[f"{k}: {a} -> {b}" for k, a, b in shapes],
        prefix=prefix,
    )
    if report:
        level = logging.WARNING if (rep.missing or rep.unexpected) else logging.INFO
        log.log(level, rep.summary())
    return rep
