"""``attnguide demo``: the built-in end-to-end run (:mod:`attnguide.tasks.demo`)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from attnguide.cli.common import with_config
from attnguide.tasks.demo import run_demo


def register(app: typer.Typer) -> None:
    """Add ``attnguide demo`` to the typer app."""

    @app.command("demo")
    @with_config("demo")
    def demo(
        out: Path = typer.Argument(Path("demo"), help="folder for the data, runs and report"),
        scale: float = typer.Option(1.0, help="multiply the data set size and the epochs"),
        crf: bool = typer.Option(True, help="also refine pseudo labels with dense CRF"),
        fresh: bool = typer.Option(False, "--fresh", help="delete OUT first instead of continuing"),
        seed: int = typer.Option(0, help="seed of the scenes, the classifiers and the segmenters"),
        quiet: bool = typer.Option(False, "--quiet", help="no progress bars or tables of the steps (the stage lines stay)"),
    ) -> None:
        """Run the method end to end on the built-in biased scenes and write OUT/report.md."""
        console = Console()
        result = run_demo(out, scale=scale, crf=crf, fresh=fresh, seed=seed, quiet=quiet)
        paragraphs = result.report.read_text().split("\n\n")
        # the verdict, the wall time and seed, and the table
        console.print("\n\n".join(paragraphs[1:3] + paragraphs[4:5]), soft_wrap=True, markup=False)
        console.print(f"report: [bold]{result.report}[/bold] ({result.seconds / 60:.1f} min)")
