"""``cxrlab data cache``: preprocess a dataset once into a resolution cache."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

from cxrlab.cli._datasets import (csv_option, extra_option,
                                  open_dataset_from_cli, root_option)
from cxrlab.cli.errors import user_errors
from cxrlab.errors import ConfigError

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
        dataset: str = typer.Option(None, "--dataset", "-d",
                                    help="Adapter: chexpert, mimic, nih, siim, folder, vindr, "
                                         "generic (optional with --check)."),
        csv: Path = csv_option(),
        root: Path = root_option(),
        option: list[str] = extra_option(),
        frontal_only: bool = typer.Option(False, "--frontal-only",
                                          help="Cache frontal images only (match a recipe "
                                               "with data.frontal_only)."),
        size: int = typer.Option(320, "--size", help="Side of the cached square images (px)."),
        out: Path = typer.Option(None, "--out",
                                 help="Cache folder: built when absent, reused when it "
                                      "matches, updated when source files changed. A recipe "
                                      "with `cache: auto` finds it when it lies in "
                                      "OUTPUT_ROOT/cache/."),
        check: Path = typer.Option(None, "--check",
                                   help="Only check this cache folder and report (with "
                                        "--dataset ..., also against the dataset's files)."),
        checksums: bool = typer.Option(False, "--checksums",
                                       help="With --check: also recompute every item's "
                                            "checksum (reads the whole cache)."),
        clahe: bool = typer.Option(False, "--clahe", help="Apply CLAHE (seed 003)."),
        workers: int = typer.Option(None, "--workers", "-j",
                                    help="Worker processes (default: CPUs, at most 8)."),
        overwrite: bool = typer.Option(False, "--overwrite",
                                       help="Rebuild every item, replacing any cache in --out."),
        skip_bad: bool = typer.Option(False, "--skip-bad",
                                      help="Record unreadable images and go on "
                                           "(default: stop at the first)."),
        progress: bool = typer.Option(True, "--progress/--no-progress",
                                      help="Show a progress bar."),
    ) -> None:
        """Preprocess every image once at --size into a memory-mapped cache for training;
        re-running it re-processes only what changed; --check DIR verifies a cache."""
        from cxrlab.data.transforms import PreprocessConfig

        if (out is None) == (check is None):
            raise ConfigError("--out", "give --out DIR (build or update) or --check DIR")
        if check is not None:
            _check(check, checksums, dataset, csv, root, option, frontal_only, size, clahe)
            return
        if dataset is None:
            raise ConfigError("--dataset", "required with --out")
        from cxrlab.data.cache import ensure_cache

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
            result = ensure_cache(data, cfg, out, workers=workers, on_error=on_error,
                                  overwrite=overwrite,
                                  progress=lambda done, total: bar.update(
                                      task, completed=done, total=total))
        cache = result.cache
        if result.action == "reused":
            console.print(f"{result.message()} ({result.seconds:.1f} s)", highlight=False,
                          soft_wrap=True)
        else:
            build = cache.manifest["build"]
            rate = build.get("images_per_second")
            verb = "cached" if result.action == "built" else "updated"
            kept = (f"kept {build['copied']} in place" if build.get("in_place")
                    else f"copied {build['copied']}")
            console.print(f"{verb} {len(cache)} {data.name} images at {cache.size} px in "
                          f"{cache.path}: {_bytes(cache.nbytes)}, processed "
                          f"{build['processed']} in {build['seconds']:.1f} s "
                          f"({rate if rate is not None else 'n/a'} images/s, "
                          f"{build['workers']} worker(s)), {kept}, "
                          f"skipped {len(cache.skipped)}", highlight=False, soft_wrap=True)
            if result.action == "updated":
                console.print(f"changed since the last build: {result.detail}",
                              highlight=False, soft_wrap=True)
        for entry in cache.skipped[:10]:
            console.print(f"  skipped {entry['index']}: {entry['path']}: {entry['problem']}",
                          highlight=False, soft_wrap=True)
        if len(cache.skipped) > 10:
            console.print(f"  ... and {len(cache.skipped) - 10} more (see manifest.json)")
        if data.skips.count:
            console.print(f"dataset rows: {data.skips.summary()}", highlight=False,
                          soft_wrap=True)


def _check(folder: Path, checksums: bool, dataset: str | None, csv: Path | None,
           root: Path | None, option: list[str] | None, frontal_only: bool, size: int,
           clahe: bool) -> None:
    """``--check``: open (sizes, manifest), optionally verify digests and compare with the
    dataset; a problem raises (exit 2 with the cause)."""
    import time

    from cxrlab.data.cache import ResolutionCache
    from cxrlab.data.transforms import PreprocessConfig

    start = time.perf_counter()
    cache = ResolutionCache.open(folder)
    info = cache.manifest["dataset"]
    console.print(f"{cache.path}: {len(cache)} {info['name']} images at {cache.size} px "
                  f"({info.get('views')} views, base '{info.get('base_name')}/'), "
                  f"{_bytes(cache.nbytes)}, skipped {len(cache.skipped)}; files complete",
                  highlight=False, soft_wrap=True)
    if checksums:
        cache.verify()
        console.print(f"checksums of all {len(cache)} items match", highlight=False)
    if dataset is not None:
        data = open_dataset_from_cli(dataset, csv, root, option)
        if frontal_only:
            data = data.filter_views(frontal=True)
        cache.check(dataset=data, cfg=PreprocessConfig(size=size, clahe=clahe))
        console.print(f"matches the dataset's {len(data)} source files (sizes and "
                      "modification times)", highlight=False)
    console.print(f"ok ({time.perf_counter() - start:.1f} s)", highlight=False)
