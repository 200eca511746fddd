"""``cxrlab data cache``: preprocess a dataset once into a resolution cache."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

from cxrlab.cli._datasets import (csv_option, dataset_option, extra_option,
                                  open_dataset_from_cli, root_option)
from cxrlab.cli.errors import user_errors
from cxrlab.errors import CacheError

console = Console()


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def register(app: typer.Typer) -> None:
    """Add ``cache`` to the ``data`` app."""

    @app.command("cache")
    @user_errors
    def cache_cmd(
        dataset: str = dataset_option(),
        csv: Path = csv_option(),
        root: Path = root_option(),
        option: list[str] = extra_option(),
        frontal_only: bool = typer.Option(False, "--frontal-only",
                                          help="Cache frontal images only (match a recipe "
                                               "with data.frontal_only)."),
        size: int = typer.Option(320, "--size", help="Side of the cached square images (px)."),
        out: Path = typer.Option(..., "--out", help="Cache folder to create."),
        clahe: bool = typer.Option(False, "--clahe", help="Apply CLAHE (seed 003)."),
        workers: int = typer.Option(None, "--workers", "-j",
                                    help="Worker processes (default: CPUs, at most 8)."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing cache."),
        skip_bad: bool = typer.Option(False, "--skip-bad",
                                      help="Record unreadable images and go on "
                                           "(default: stop at the first)."),
        progress: bool = typer.Option(True, "--progress/--no-progress",
                                      help="Show a progress bar."),
    ) -> None:
        """Preprocess every image once at --size into a memory-mapped cache for training."""
        from cxrlab.data.cache import build_cache
        from cxrlab.data.transforms import PreprocessConfig

        if out.exists() and not overwrite:  # fail before the (slow) dataset opening
            raise CacheError(out, "already exists; pass --overwrite to replace it")
        on_error = "skip" if skip_bad else "raise"
        data = open_dataset_from_cli(dataset, csv, root, option, on_error=on_error)
        if frontal_only:
            data = data.filter_views(frontal=True)
        cfg = PreprocessConfig(size=size, clahe=clahe)
        bar = Progress(TextColumn("caching"), BarColumn(), MofNCompleteColumn(),
                       TimeElapsedColumn(), TimeRemainingColumn(), console=console,
                       disable=not progress)
        with bar:
            task = bar.add_task("cache", total=len(data))
            cache = build_cache(data, cfg, out, workers=workers, on_error=on_error,
                                overwrite=overwrite,
                                progress=lambda done, total: bar.update(task, completed=done,
                                                                        total=total))
        build = cache.manifest["build"]
        rate = build.get("images_per_second")
        console.print(f"cached {len(cache)} {data.name} images at {cache.size} px into "
                      f"{cache.path}: {_bytes(cache.nbytes)}, {build['seconds']:.1f} s "
                      f"({rate if rate is not None else 'n/a'} images/s, "
                      f"{build['workers']} worker(s)), skipped {len(cache.skipped)}",
                      highlight=False, soft_wrap=True)
        for entry in cache.skipped[:10]:
            console.print(f"  skipped {entry['index']}: {entry['path']}: {entry['problem']}",
                          highlight=False, soft_wrap=True)
        if len(cache.skipped) > 10:
            console.print(f"  ... and {len(cache.skipped) - 10} more (see manifest.json)")
        if data.skips.count:
            console.print(f"dataset rows: {data.skips.summary()}", highlight=False,
                          soft_wrap=True)
