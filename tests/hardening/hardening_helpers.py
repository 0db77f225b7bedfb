"""Helpers of the hardening tests (a module with its own name: every test folder has a
conftest.py)."""

from __future__ import annotations

import hashlib
from pathlib import Path


def snapshot(*roots: Path) -> dict[str, str]:
    """Every file and folder under ``roots``: path -> content hash ("dir" for folders)."""
    out = {}
    for root in roots:
        if not root.exists():
            continue
        for path in sorted(root.rglob("*")):
            out[str(path)] = ("dir" if path.is_dir()
                              else hashlib.sha256(path.read_bytes()).hexdigest())
    return out
