"""Killing a training process at a chosen checkpoint, for the SIGKILL-and-resume tests of
`attnguide train` (tests/engine) and `attnguide segment` (tests/hardening)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import torch


def read_checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def kill_at_checkpoint(proc: subprocess.Popen, last: Path, wanted: Callable[[dict], bool],
                       timeout: float = 240) -> dict | None:
    """SIGKILL ``proc`` once its ``last`` checkpoint satisfies ``wanted``; return that state,
    or None when the run ended (or ``timeout`` seconds passed) first. Each new ``last`` is
    read with the process stopped (SIGSTOP), so the checkpoint it dies with is the one read:
    none can land between the read and the kill (an epoch-end one once did, failing a test
    that wanted to resume mid-epoch)."""
    deadline, seen = time.monotonic() + timeout, None
    while proc.poll() is None and time.monotonic() < deadline:
        if last.exists() and last.stat().st_mtime_ns != seen:
            os.kill(proc.pid, signal.SIGSTOP)
            try:
                seen = last.stat().st_mtime_ns
                state = read_checkpoint(last)
                if wanted(state):
                    os.kill(proc.pid, signal.SIGKILL)
                    return state
            finally:
                try:
                    os.kill(proc.pid, signal.SIGCONT)  # harmless once killed
                except ProcessLookupError:
                    pass
        time.sleep(0.02)
    return None
