"""Pictures: attention grids, training snapshots, metric curves (matplotlib,
optional: ``attnguide[viz]``)."""

from attnguide.viz.pictures import (
    CELL_PX,
    _spans,
    attention_grid,
    curve_keys,
    grid_size,
    pick_indices,
    plot_curves,
    read_metrics,
    training_snapshot,
)

__all__ = ["CELL_PX", "attention_grid", "curve_keys", "grid_size", "pick_indices", "plot_curves",
           "read_metrics", "training_snapshot", "_spans"]
