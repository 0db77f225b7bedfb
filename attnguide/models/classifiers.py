"""Classifiers for attnguide: any timm model, local weights, trained runs.

- :func:`create_model` builds a timm classifier for a data set's classes and
  optionally loads a local weights file (timm or torchvision state dict,
  ``.pt``/``.pth``/``.bin`` or ``.safetensors``); the classifier is re-sized to
  the data set: weights whose shape does not match are dropped and reported.
- :func:`load_weights` does the loading on any module and returns a
  :class:`LoadReport` (missing, unexpected, dropped keys).
- :func:`load_model` reads a run folder or checkpoint written by
  ``attnguide train`` and returns a :class:`TrainedModel` ready for inference.

Example:
    >>> model = create_model("resnet18", num_classes=5, weights="resnet18-f37072fd.pth")
    >>> trained = load_model("runs/scenes")          # best.pt, else last.pt
    >>> guide = trained.guide()                      # GuidedAttention with the trained settings
    >>> maps = guide.attention(images, resize=True, normalize=True)   # (B, 1, H, W)
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import os
import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from attnguide.constants import IMAGENET_MEAN, IMAGENET_STD
from attnguide.core.guidance import guide_kwargs
from attnguide.errors import AttnGuideError
from attnguide.io.checkpoints import CLASSIFIER, read_checkpoint, resolve_checkpoint

log = logging.getLogger("attnguide")

#: Keys under which training scripts commonly nest the state dict.
NESTED_KEYS = ("state_dict", "model", "model_state_dict", "model_ema", "state_dict_ema", "net")
#: Prefixes left by wrappers (DDP, DataParallel, torch.compile, GuidedAttention).
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")


# ---------------------------------------------------------------------- timm models


def check_model_name(name: str) -> None:
    """Raise AttnGuideError with the closest timm names when ``name`` is unknown."""
    import timm

    if not isinstance(name, str) or not name:
        raise AttnGuideError("the model name is empty; pass a timm name such as --model resnet18")
    if timm.is_model(name.split(".")[0]) or timm.is_model(name):
        return
    known = timm.list_models()
    close = difflib.get_close_matches(name, known, n=6, cutoff=0.6)
    if not close:
        close = [m for m in known if name.lower() in m][:6]
    hint = f"did you mean {', '.join(close)}?" if close else "list them with timm.list_models('*resnet*')"
    raise AttnGuideError(f"unknown timm model {name!r}: {hint}")


def create_model(
    name: str,
    num_classes: int,
    weights: str | os.PathLike | None = None,
    pretrained: bool = False,
    **model_kwargs: Any,
) -> nn.Module:
    """A timm classifier with ``num_classes`` outputs.

    Args:
        name: any timm model name (``timm.list_models()``), optionally with a
            pretrained tag (``resnet18.a1_in1k``).
        num_classes: outputs of the classifier (the data set's classes).
        weights: a local weights file (see :func:`load_weights`). The classifier
            is re-sized: weights whose shape differs from the model's are dropped.
        pretrained: ask timm's hub for the weights. Offline this fails at once
            with one line pointing to ``weights``.
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
        load_weights(model, weights)
    return model


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


# ---------------------------------------------------------------------- weights files


@dataclass
class LoadReport:
    """What :func:`load_weights` did.

    Attributes:
        path: the file read.
        loaded: keys copied into the model.
        missing: model keys the file does not have (left at their initial values).
        unexpected: file keys the model does not have (ignored).
        dropped: keys present in both but with another shape (the classifier
            re-sized to the data set's classes), as ``key: file shape -> model shape``.
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
    unwrapping nested ``state_dict`` / ``model`` entries."""
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise FileNotFoundError(f"weights file {str(path)!r} {what}; pass a .pt/.pth/.safetensors file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise AttnGuideError(
            f"could not read weights file {str(path)!r} ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
            "pass a state dict saved with torch.save or safetensors"
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


def _is_state_dict(obj: Mapping) -> bool:
    return bool(obj) and all(isinstance(k, str) for k in obj) and any(
        isinstance(v, Tensor) for v in obj.values())


def _best_prefix(keys: set[str], model_keys: set[str]) -> str:
    """The wrapper prefix whose removal matches the most model keys."""
    best, best_hits = "", len(keys & model_keys)
    for prefix in WRAPPER_PREFIXES:
        stripped = {k[len(prefix):] for k in keys if k.startswith(prefix)}
        hits = len(stripped & model_keys)
        if hits > best_hits:
            best, best_hits = prefix, hits
    return best


def load_weights(model: nn.Module, weights: str | os.PathLike | Mapping[str, Tensor],
                 *, report: bool = True) -> LoadReport:
    """Copy matching tensors of a weights file (or state dict) into ``model``.

    Keys are matched by name after removing a wrapper prefix (``module.``,
    ``model.``, ``_orig_mod.``) when that matches more keys; tensors whose
    shape differs (the classifier of a model trained on other classes) are
    dropped. Nothing is matched at all -> AttnGuideError (wrong architecture).

    Returns:
        A :class:`LoadReport`; logged on the ``attnguide`` logger when ``report``.
    """
    if isinstance(weights, Mapping):
        state, path = dict(weights), "<state dict>"
    else:
        state, path = read_state_dict(weights), str(weights)
    target = model.state_dict()
    prefix = _best_prefix(set(state), set(target))
    if prefix:
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    rep = LoadReport(path=path, prefix=prefix)
    usable = {}
    for key, value in state.items():
        if key not in target:
            rep.unexpected.append(key)
        elif tuple(value.shape) != tuple(target[key].shape):
            rep.dropped.append(f"{key}: {tuple(value.shape)} -> {tuple(target[key].shape)}")
        else:
            usable[key] = value
    rep.missing = [k for k in target if k not in state]
    rep.loaded = list(usable)
    if not usable:
        raise AttnGuideError(
            f"no tensor of {path!r} matches the model ({len(state)} keys such as "
            f"{', '.join(list(state)[:3])}; the model has {', '.join(list(target)[:3])}, ...): "
            "the file is for another architecture; pick the matching --model"
        )
    model.load_state_dict(usable, strict=False)
    if report:
        level = logging.WARNING if (rep.missing or rep.unexpected) else logging.INFO
        log.log(level, rep.summary())
    return rep


# ---------------------------------------------------------------------- trained runs


@dataclass
class TrainedModel:
    """A model trained by ``attnguide train``, in eval mode.

    Attributes:
        model: the timm classifier (eval mode, on ``device``).
        class_names: one name per output.
        multilabel: sigmoid outputs (True) or softmax (False).
        layer: the attention layer used in training (``GuidedAttention.layer_name``).
        image_size: the training image size.
        config: the run's resolved training config (a dict).
        checkpoint: the file read.
        mean, std: input normalisation used in training.
    """

    model: nn.Module
    class_names: list[str]
    multilabel: bool
    layer: str | None
    image_size: int
    config: dict[str, Any]
    checkpoint: str = ""
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def guide(self, **overrides: Any):
        """A GuidedAttention around ``model`` with the trained settings
        (layer, cam, mask, alpha, omega, ...); keyword arguments override them."""
        from attnguide.core.guide import GuidedAttention

        kwargs = guide_kwargs(self.config, layer=self.layer)
        kwargs.update(overrides)
        return GuidedAttention(self.model, **kwargs)

    @torch.no_grad()
    def predict(self, images: Tensor) -> Tensor:
        """Class probabilities (B, C) of normalised images (B, 3, H, W):
        sigmoid for multi-label models, softmax otherwise."""
        device = next(self.model.parameters()).device
        logits = self.model(images.to(device)).float()
        return logits.sigmoid() if self.multilabel else logits.softmax(dim=1)


def load_model(run_dir_or_checkpoint: str | os.PathLike, device: str | torch.device = "cpu",
               prefer: str = "best") -> TrainedModel:
    """Load a model trained by ``attnguide train`` for inference.

    Args:
        run_dir_or_checkpoint: a run folder (its ``best.pt``, else ``last.pt``)
            or a checkpoint file.
        device: where to put the model.
        prefer: ``"best"`` or ``"last"`` when given a run folder.

    Returns:
        A :class:`TrainedModel` with the model in eval mode.
    """
    import timm

    path = resolve_checkpoint(run_dir_or_checkpoint, prefer)
    ckpt = read_checkpoint(path, CLASSIFIER)
    class_names = list(ckpt["class_names"])
    name = ckpt["model_name"]
    check_model_name(name)
    model = timm.create_model(name, pretrained=False, num_classes=len(class_names),
                              **(ckpt.get("model_kwargs") or {}))
    model.load_state_dict(ckpt["model"])
    model.to(device).eval()
    config = dict(ckpt.get("config") or {})
    norm = ckpt.get("normalize") or {}
    return TrainedModel(
        model=model,
        class_names=class_names,
        multilabel=bool(ckpt["multilabel"]),
        layer=ckpt.get("layer"),
        image_size=int(ckpt.get("image_size") or config.get("image_size") or 224),
        config=config,
        checkpoint=str(path),
        mean=tuple(norm.get("mean", TrainedModel.mean)),
        std=tuple(norm.get("std", TrainedModel.std)),
    )
