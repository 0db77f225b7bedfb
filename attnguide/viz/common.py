"""What every picture of attnguide shares: the matplotlib check, the PNG writer,
run names, and the choice of images to draw."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from attnguide.errors import AttnGuideError
from attnguide.io.atomic import atomic_write

#: Default side of one grid cell in pixels (the figure is drawn at 100 dpi).
CELL_PX = 160
DPI = 100


def require_matplotlib():
    """The matplotlib module, or AttnGuideError naming the extra to install."""
    try:
        import matplotlib
    except ImportError:
        raise AttnGuideError(
            "pictures need matplotlib, the 'viz' extra: pip install 'attnguide[viz]'"
        ) from None
    return matplotlib


def save_png(fig, out_png: str | os.PathLike) -> Path:
    """Write ``fig`` as PNG atomically (a reader never sees half a file)."""
    return atomic_write(
        out_png, lambda f: fig.savefig(f, format="png", dpi=DPI, pil_kwargs={"compress_level": 3}),
        durable=False)


def pick_indices(n_total: int, n: int) -> list[int]:
    """``n`` indices spread evenly over ``range(n_total)`` (all of them when ``n >= n_total``),
    so that a sorted split still shows several classes; the same call gives the same set."""
    if n_total <= 0 or n <= 0:
        return []
    if n >= n_total:
        return list(range(n_total))
    return sorted({int(round(v)) for v in np.linspace(0, n_total - 1, n)})


def unique_names(names: list[str]) -> list[str]:
    """``["ext", "ext"]`` -> ``["ext", "ext #2"]``."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name} #{seen[name]}")
    return out


def run_name(path: str | os.PathLike) -> str:
    """``runs/ext`` -> ``ext``; ``runs/ext/last.pt`` -> ``ext``."""
    path = Path(path)
    if path.suffix in (".pt", ".pth", ".jsonl"):
        path = path.parent
    return path.resolve().name or str(path)
