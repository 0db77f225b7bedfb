"""Atomic checkpoints with the whole training state, and RNG capture.

A checkpoint is a plain dict readable with ``torch.load(weights_only=True)``::

    format, version       "attnguide-checkpoint", 1
    model                 the bare model's state dict (no "module."/"model." prefix)
    optimizer, scheduler  their state dicts; scaler: GradScaler state or None
    rng                   python, numpy, torch (CPU) and CUDA generator states
    epoch, batch          the epoch being trained (0-based) and how many of its
                          batches are done (0 = the epoch has not started)
    step                  optimizer steps done in total
    epoch_sums            running sums of the epoch's logged losses (so a resumed
                          epoch logs the same averages)
    best                  {"metric", "value", "epoch"} of best.pt so far
    model_name, class_names, multilabel, layer, image_size, normalize, config

Files are written to a temporary name in the same folder, flushed, fsynced
and moved over the old file with ``os.replace``: a kill at any moment leaves
either the old or the new checkpoint, never a torn one.
"""

from __future__ import annotations

import io
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import AttnGuideError
from ..models import CHECKPOINT_FORMAT, read_checkpoint

VERSION = 1


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file + fsync + os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def save_checkpoint(state: dict[str, Any], *paths: str | Path) -> None:
    """``torch.save`` to memory once, then :func:`atomic_write_bytes` to each path."""
    buffer = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, "version": VERSION, **state}, buffer)
    data = buffer.getvalue()
    for path in paths:
        atomic_write_bytes(Path(path), data)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a training checkpoint (``weights_only=True``) and check its version."""
    ckpt = read_checkpoint(path)
    if ckpt.get("version", 0) > VERSION:
        raise AttnGuideError(f"checkpoint {str(path)!r} was written by a newer attnguide; upgrade attnguide")
    return ckpt


# ---------------------------------------------------------------------- RNG


def rng_state() -> dict[str, Any]:
    """The python, numpy and torch generator states, in weights_only-safe types."""
    version, internal, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), int(np_pos),
                  int(np_has_gauss), float(np_gauss)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, gauss_np = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss_np))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        states = state["cuda"]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)


# ---------------------------------------------------------------------- resume checks


def require_classifier(ckpt: dict[str, Any], where: str) -> None:
    """Segmenter checkpoints (``kind: segmenter``) are not classifier runs."""
    if ckpt.get("kind", "classifier") != "classifier" or "model_name" not in ckpt:
        raise AttnGuideError(
            f"{where} is a {ckpt.get('kind', 'non-classifier')} checkpoint, not a classifier run "
            "of `attnguide train`; pass a run folder or checkpoint written by `attnguide train`"
        )


def check_compatible(ckpt: dict[str, Any], path: str | Path, *, model_name: str,
                     class_names: list[str], multilabel: bool) -> None:
    """Raise AttnGuideError when a checkpoint belongs to another model or class list."""
    where = str(path)
    require_classifier(ckpt, where)
    if ckpt["model_name"] != model_name:
        raise AttnGuideError(
            f"cannot resume from {where}: it was trained with --model {ckpt['model_name']}, not "
            f"{model_name}; resume with the same model or start a new run with another --out"
        )
    theirs = list(ckpt["class_names"])
    if theirs != list(class_names):
        def show(names: list[str]) -> str:
            return ", ".join(names[:12]) + (f" ... ({len(names)} classes)" if len(names) > 12 else "")

        raise AttnGuideError(
            f"cannot resume from {where}: its classes [{show(theirs)}] differ from the data set's "
            f"[{show(list(class_names))}]; resume on the same data set or start a new run "
            "(use --weights to start from its weights)"
        )
    if bool(ckpt["multilabel"]) != bool(multilabel):
        kind = "multi-label" if ckpt["multilabel"] else "single-label"
        raise AttnGuideError(
            f"cannot resume from {where}: it was trained {kind}; set --data-mode to match"
        )


def restore_loop_state(loop, state: dict[str, Any]) -> None:
    """Restore what every training loop keeps (``attnguide train`` and ``segment``):
    model, optimizer, scheduler, grad scaler, epoch/batch/step counters, the epoch's
    running sums, the metric history and the random generators.

    ``loop`` has the attributes ``model``, ``optimizer``, ``scheduler``, ``scaler``,
    ``steps_per_epoch`` and ``device``; a checkpoint taken mid-epoch must fit the
    current number of batches per epoch.
    """
    loop.model.load_state_dict(state["model"])
    loop.optimizer.load_state_dict(state["optimizer"])
    loop.scheduler.load_state_dict(state["scheduler"])
    if loop.scaler is not None and state.get("scaler"):
        loop.scaler.load_state_dict(state["scaler"])
    loop.epoch, loop.batch, loop.step = int(state["epoch"]), int(state["batch"]), int(state["step"])
    if loop.batch > loop.steps_per_epoch:
        raise AttnGuideError(
            f"cannot resume: the checkpoint is at batch {loop.batch} of an epoch that now has "
            f"{loop.steps_per_epoch} batches; resume with the same --batch-size and data")
    loop.sums = torch.tensor(state["epoch_sums"], dtype=torch.float64, device=loop.device)
    loop.history = list(state.get("history") or [])
    set_rng_state(state["rng"])
