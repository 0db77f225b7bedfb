"""Helpers of the hardening tests (a module with its own name: every test folder has a
conftest.py)."""

from __future__ import annotations

import csv
import hashlib
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def subprocess_env() -> dict[str, str]:
    """The environment of a CLI subprocess: this checkout importable, warnings off, one
    thread (the kill tests' processes run beside the other tests)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONWARNINGS"] = "ignore"
    env["OMP_NUM_THREADS"] = "1"
    return env


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


def set_cell(data: Path, line: int, column: str, value: str, split: str = "train") -> None:
    """Set one cell of ``split.csv`` (``line`` counts the header as line 1). Rewriting the
    labels also empties the row's boxes and points, which name the old labels' classes."""
    path = data / f"{split}.csv"
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    header = rows[0]
    rows[line - 1][header.index(column)] = value
    if column == "labels":
        for other in ("boxes", "points"):
            if other in header:
                rows[line - 1][header.index(other)] = ""
    with path.open("w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)


def get_cell(data: Path, line: int, column: str, split: str = "train") -> str:
    """One cell of ``split.csv`` (``line`` counts the header as line 1)."""
    with (data / f"{split}.csv").open(newline="") as f:
        rows = list(csv.reader(f))
    return rows[line - 1][rows[0].index(column)]
