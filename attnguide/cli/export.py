"""``attnguide export RUN DIR``: a run as a Hub-style model folder (:mod:`attnguide.models.export`)."""

from __future__ import annotations

from pathlib import Path

import typer

from attnguide.cli.common import console, with_config
from attnguide.models.export import export_model


def register(app: typer.Typer) -> None:
    """Add ``attnguide export`` to the typer app."""

    @app.command("export")
    @with_config("export")
    def export(
        run: Path = typer.Argument(..., help="run folder of attnguide train (best.pt, else last.pt) or a checkpoint"),
        out: Path = typer.Argument(..., help="model folder to write: config.json, model.safetensors, README.md"),
        prefer: str = typer.Option("best", help="checkpoint of a run folder: best or last"),
        overwrite: bool = typer.Option(False, "--overwrite", help="write into a folder that already holds files"),
    ) -> None:
        """Write RUN's classifier as a model folder (Hub layout) that load_model reads."""
        folder = export_model(run, out, prefer=prefer, overwrite=overwrite)
        files = ", ".join(sorted(p.name for p in folder.iterdir()))
        console().print(f"model folder written to {folder} ({files})", soft_wrap=True)
