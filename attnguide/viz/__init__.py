"""Pictures: attention grids (`grid`), per-epoch training snapshots (`snapshots`),
metric curves (`curves`); matplotlib is optional (``attnguide[viz]``) and imported
only when a picture is drawn."""

from attnguide.viz.common import CELL_PX, pick_indices
from attnguide.viz.curves import _spans, curve_keys, plot_curves, read_metrics
from attnguide.viz.grid import attention_grid, grid_size
from attnguide.viz.snapshots import AttentionSnapshots, training_snapshot

__all__ = ["CELL_PX", "AttentionSnapshots", "attention_grid", "curve_keys", "grid_size",
           "pick_indices", "plot_curves", "read_metrics", "training_snapshot", "_spans"]
