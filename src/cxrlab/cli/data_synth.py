"""``cxrlab data synth``: write synthetic chest-radiograph phantoms in a real dataset layout."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from rich.table import Table

from cxrlab.cli.errors import user_errors

console = Console()


def register(app: typer.Typer) -> None:
    """Add ``synth`` to the ``data`` app."""

    @app.command("synth")
    @user_errors
    def synth_cmd(
        layout: str = typer.Option(..., "--layout",
                                   help="chexpert, mimic, siim, nih, folder, vindr or generic."),
        n: int = typer.Option(..., "--n", help="Number of images."),
        size: int = typer.Option(256, "--size", help="Image side in pixels (>= 32)."),
        seed: int = typer.Option(0, "--seed", help="Seed: same arguments, same files."),
        out: Path = typer.Option(..., "--out", help="Folder to create (must be empty)."),
        overwrite: bool = typer.Option(False, "--overwrite",
                                       help="Replace an earlier synthetic dataset in --out."),
        prevalence: float = typer.Option(None, "--prevalence",
                                         help="Share of positives per finding (default 0.3; "
                                              "siim: pneumothorax, folder: pneumonia, 0.5)."),
        progress: bool = typer.Option(True, "--progress/--no-progress",
                                      help="Show a progress bar."),
    ) -> None:
        """Write N synthetic phantom radiographs (not real patients) in a dataset's real layout."""
        from cxrlab.data.synthetic_layouts import LAYOUTS, read_manifest, write_dataset
        from cxrlab.errors import ConfigError

        if layout not in LAYOUTS:
            raise ConfigError("--layout", f"unknown layout {layout!r}; expected one of "
                                          f"{', '.join(LAYOUTS)}")
        bar = Progress(TextColumn(f"writing {layout}"), BarColumn(), MofNCompleteColumn(),
                       TimeElapsedColumn(), TimeRemainingColumn(), console=console,
                       disable=not progress)
        start = time.perf_counter()
        with bar:
            task = bar.add_task("synth", total=n)
            written = write_dataset(layout, out, n, size, seed, overwrite=overwrite,
                                    prevalence=prevalence,
                                    progress=lambda done, total: bar.update(
                                        task, completed=done, total=total))
        seconds = time.perf_counter() - start
        manifest = read_manifest(written)
        console.print(f"wrote {manifest['n']} synthetic {layout} images of {size} x {size} px "
                      f"to {written} in {seconds:.1f} s (SYNTHETIC PHANTOM DATA — not real "
                      f"patients)", highlight=False, soft_wrap=True)
        table = Table("finding", "images", title="images per finding")
        for finding, count in manifest["counts"].items():
            table.add_row(finding, str(count))
        console.print(table)
