"""Run folders: what ``attnguide train`` and ``attnguide segment`` write into ``--out``
(``last.pt``, ``best.pt``, ``metrics.jsonl``, the saved options), and the rule that a
new run never overwrites an old one by accident."""

from __future__ import annotations

import os
from pathlib import Path

from attnguide.errors import AttnGuideError


def check_run_folder(run_dir: str | os.PathLike, *, resume: object, overwrite: bool) -> Path:
    """Refuse to start a new run in a folder that holds one (its ``last.pt``), unless the
    run is resumed or ``overwrite`` is set; return the folder."""
    run_dir = Path(run_dir)
    if not resume and not overwrite and (run_dir / "last.pt").exists():
        raise AttnGuideError(
            f"{run_dir} already holds a run (last.pt): continue it with --resume "
            f"{run_dir}, pick another --out, or pass --overwrite")
    return run_dir
