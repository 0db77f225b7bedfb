"""Checkpoint files: format, version, kind; reading, writing, finding one in a run folder.

A checkpoint is a plain dict readable with ``torch.load(weights_only=True)``::

    format, version   "attnguide-checkpoint", 1
    kind              "classifier" (``attnguide train``; the default of old files)
                      or "segmenter" (``attnguide segment``)
    model             the bare model's state dict
    ...               the training state (see :mod:`attnguide.engine.state`)

Files are written with :func:`attnguide.io.atomic.atomic_write` (durable): a kill at
any moment leaves either the old or the new checkpoint, never a torn one.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch

from attnguide.errors import AttnGuideError
from attnguide.io.atomic import atomic_write

CHECKPOINT_FORMAT = "attnguide-checkpoint"
VERSION = 1
CLASSIFIER, SEGMENTER = "classifier", "segmenter"
_WRITER = {CLASSIFIER: "attnguide train", SEGMENTER: "attnguide segment"}


def save_checkpoint(state: dict[str, Any], *paths: str | os.PathLike) -> None:
    """``torch.save`` to memory once, then write it atomically to each path."""
    buffer = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, "version": VERSION, **state}, buffer)
    data = buffer.getvalue()
    for path in paths:
        atomic_write(path, data)


def checkpoint_kind(ckpt: dict[str, Any]) -> str:
    """``classifier`` or ``segmenter`` (files without a kind are classifier runs)."""
    return str(ckpt.get("kind", CLASSIFIER))


def read_checkpoint(path: str | os.PathLike, kind: str | None = None) -> dict[str, Any]:
    """Read an attnguide checkpoint (``weights_only=True``), check its format and
    version and, when ``kind`` is given, that it is a checkpoint of that kind."""
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise AttnGuideError(
            f"could not read checkpoint {str(path)!r} ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:200]}); is it a file written by 'attnguide train'?"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise AttnGuideError(
            f"{str(path)!r} is not an attnguide training checkpoint; for plain weights use "
            "create_model(..., weights=PATH) or --weights PATH"
        )
    if ckpt.get("version", 0) > VERSION:
        raise AttnGuideError(f"checkpoint {str(path)!r} was written by a newer attnguide; "
                             "upgrade attnguide")
    if kind is not None:
        require_kind(ckpt, kind, str(path))
    return ckpt


def require_kind(ckpt: dict[str, Any], kind: str, where: str) -> None:
    """Raise AttnGuideError, naming both commands, when ``ckpt`` is not of ``kind``."""
    have = checkpoint_kind(ckpt)
    if kind == CLASSIFIER and (have != CLASSIFIER or "model_name" not in ckpt):
        raise AttnGuideError(
            f"{where} is a {have if have != CLASSIFIER else 'non-classifier'} checkpoint, not a "
            "classifier run of `attnguide train`; pass a run folder or checkpoint written by "
            "`attnguide train`"
        )
    if kind == SEGMENTER and have != SEGMENTER:
        raise AttnGuideError(
            f"{where!r} is a classifier checkpoint of 'attnguide train', not a segmenter; "
            "pass a run folder written by 'attnguide segment'")


def resolve_checkpoint(path: str | os.PathLike, prefer: str = "best") -> Path:
    """A run folder -> its ``best.pt`` (or ``last.pt``); a file -> itself."""
    path = Path(path)
    if path.is_dir():
        order = ("best.pt", "last.pt") if prefer == "best" else ("last.pt", "best.pt")
        for name in order:
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(
            f"run folder {str(path)!r} has no best.pt or last.pt; pass a run folder written by "
            "'attnguide train' or a checkpoint file"
        )
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist; pass a run folder or a .pt file")
    return path
