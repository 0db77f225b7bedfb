"""The training state a checkpoint carries beyond the weights, and resuming from it.

The state of both training loops (``attnguide train`` and ``segment``)::

    optimizer, scheduler  their state dicts; scaler: GradScaler state or None
    rng                   python, numpy, torch (CPU) and CUDA generator states
    epoch, batch          the epoch being trained (0-based) and how many of its
                          batches are done (0 = the epoch has not started)
    step                  optimizer steps done in total
    epoch_sums            running sums of the epoch's logged losses (so a resumed
                          epoch logs the same averages)
    best                  {"metric", "value", "guided"} of best.pt so far ("guided":
                          whether it comes from a full epoch, not a warm-up one)
    model_name, class_names, multilabel, layer, image_size, normalize, config

The file format itself (format, version, kind, atomic writes) is
:mod:`attnguide.io.checkpoints`.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attnguide.errors import AttnGuideError
from attnguide.io.checkpoints import CLASSIFIER, require_kind

# ---------------------------------------------------------------------- RNG


def seed_everything(seed: int) -> None:
    """Seed python's, numpy's and torch's generators (the start of every run)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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


def check_compatible(ckpt: dict[str, Any], path: str | Path, *, model_name: str,
                     class_names: list[str], multilabel: bool) -> None:
    """Raise AttnGuideError when a checkpoint belongs to another model or class list."""
    where = str(path)
    require_kind(ckpt, CLASSIFIER, where)
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
