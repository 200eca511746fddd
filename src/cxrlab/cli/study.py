"""``cxrlab study``: run a resolution/model-scaling study (seed 001) and report on it."""

from __future__ import annotations

import math
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cxrlab.cli.errors import user_errors

console = Console()
app = typer.Typer(name="study", help="Scaling studies (seed 001): run the grid, then tables and figures.",
                  no_args_is_help=True)


def _eta(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "ETA --"
    hours, rest = divmod(int(seconds), 3600)
    return f"ETA {hours}h{rest // 60:02d}m" if hours else f"ETA {rest // 60}m{rest % 60:02d}s"


def _plan_table(specs) -> Table:
    table = Table(title=f"{len(specs)} runs: batch plan per architecture and resolution")
    for column in ("arch", "resolution", "runs", "effective", "micro-batch", "accumulation"):
        table.add_column(column, justify="left" if column == "arch" else "right")
    seen: dict[tuple[str, int], list] = {}
    for spec in specs:
        seen.setdefault((spec.arch, spec.resolution), []).append(spec)
    for (arch, size), group in seen.items():
        first = group[0]
        table.add_row(arch, str(size), str(len(group)), str(first.effective_batch), str(first.micro_batch),
                      str(first.accumulation))
    return table


@app.command("scaling")
@user_errors
def scaling_cmd(
    config: Path = typer.Argument(..., help="Study YAML (see configs/scaling_seed001.yaml)."),
    overrides: list[str] = typer.Argument(None, help="study.KEY=VALUE (grid) or recipe KEY=VALUE overrides."),
    out: Path = typer.Option(..., "--out", help="Study folder; re-run with the same folder to resume."),
    executor: str = typer.Option("local", "--executor", help="local (process pool), ray, or inline."),
    ray_address: str = typer.Option(None, "--ray-address", help="Ray cluster address (auto, ray://host:10001); "
                                                                 "none starts a local Ray instance."),
    max_parallel: int = typer.Option(None, "--max-parallel", help="Runs at once (local default 1; Ray: what "
                                                                   "the cluster holds)."),
    gpus: str = typer.Option(None, "--gpus", help="local: GPU ids to spread runs over, e.g. 0,1,2,3."),
    cpus_per_run: float = typer.Option(1.0, "--cpus-per-run", help="Ray: CPUs reserved per run."),
    gpus_per_run: float = typer.Option(0.0, "--gpus-per-run", help="Ray: GPUs per run (1 on a GPU cluster)."),
    prepare: bool = typer.Option(True, "--prepare/--no-prepare", help="Build resolution caches here first."),
    rerun_changed: bool = typer.Option(False, "--rerun-changed", help="Re-run runs whose recipe changed."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show the plan and exit."),
) -> None:
    """Run every unfinished run of a study grid; writes OUT/results.csv (one row per run)."""
    from cxrlab.engine.executors import create_executor
    from cxrlab.tasks.scaling.run import prepare_phantoms, run_study
    from cxrlab.tasks.scaling.plan import expand_grid
    from cxrlab.config.study import load_study

    study = load_study(config, overrides or [])
    if dry_run:
        console.print(_plan_table(expand_grid(study, out)))
        return
    gpu_list = [g.strip() for g in gpus.split(",") if g.strip()] if gpus else None
    with create_executor(executor, max_parallel=max_parallel, ray_address=ray_address, gpus=gpu_list,
                         num_cpus_per_run=cpus_per_run, num_gpus_per_run=gpus_per_run,
                         log_dir=out / "logs") as pool:
        if study.phantoms:
            with console.status("writing the study's SYNTHETIC phantom data..."):
                study = prepare_phantoms(study, out)
        console.print(_plan_table(expand_grid(study, out)))
        console.print(f"executor: {pool.describe()}")
        columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[status]}"), TimeElapsedColumn())
        with Progress(*columns, console=console, transient=False) as bar:
            task = bar.add_task(study.name, total=None, status="preparing data")

            def update(state) -> None:
                bar.update(task, total=state.total, completed=state.skipped + state.done + state.failed,
                           status=f"done {state.done} (+{state.skipped} earlier) · running {state.running} · "
                                  f"failed {state.failed} · {_eta(state.eta_seconds)}")

            summary = run_study(study, out, pool, progress=update, prepare=prepare, rerun_changed=rerun_changed)
    console.print(f"{summary.finished} run(s) finished, {summary.skipped} skipped (done earlier), "
                  f"{len(summary.failed)} failed; results: [bold]{summary.results_csv}[/]")
    for key, error in summary.failed.items():
        console.print(f"[red]failed[/] {key}: {error}  (details: {out / 'failures' / (key + '.json')})")
    if summary.failed:
        raise typer.Exit(code=1)


def _print_frame(frame, title: str, digits: int = 4) -> None:
    table = Table(title=title)
    for column in frame.columns:
        table.add_column(str(column), overflow="fold")
    for row in frame.itertuples(index=False):
        table.add_row(*["" if v is None or (isinstance(v, float) and math.isnan(v)) else
                        f"{v:.{digits}f}" if isinstance(v, float) else str(v) for v in row])
    console.print(table)


@app.command("report")
@user_errors
def report_cmd(
    study_dir: Path = typer.Argument(..., help="A study folder made by `cxrlab study scaling`."),
    boxes: Path = typer.Option(None, "--boxes", help="BBox_List_2017.csv for the CAM grid and localization "
                                                     "(default: the study's phantom boxes, if any)."),
    images: Path = typer.Option(None, "--images", help="Folder holding the boxed images."),
    method: str = typer.Option("gradcam", "--method", help="CAM method."),
    classes: list[str] = typer.Option(None, "--class", help="Classes for the grid (default: every task "
                                                             "with boxes)."),
) -> None:
    """Tables (summary_by_resolution.csv, model_scaling_delta.csv, ...), figures and report.md."""
    from cxrlab.report.scaling import markdown_table, write_report

    sections = []
    if boxes is None and images is None:
        phantom_boxes = study_dir / "phantoms" / "nih"
        if (phantom_boxes / "BBox_List_2017.csv").is_file():
            boxes, images = phantom_boxes / "BBox_List_2017.csv", phantom_boxes / "images"
    if (boxes is None) != (images is None):
        raise typer.BadParameter("give --boxes and --images together")
    if boxes is not None:
        from cxrlab.report.cam_grid import cam_grid, localize_best_runs

        with console.status("Grad-CAM grid and localization scores..."):
            grid = cam_grid(study_dir, boxes, images, study_dir / "fig_cam_grid.png", method=method,
                            classes=classes or None)
            scores = localize_best_runs(study_dir, boxes, images, method=method, classes=classes or None)
        sections = [("Grad-CAM of the best model per resolution and class (Fig 4.5)", f"![]({grid.name})\n"),
                    ("Localization against boxes (best model per task and resolution)", markdown_table(scores, 3))]
        names = {"pointing_hit_rate": "hit rate", "iou_mean": "IoU", "energy_in_box_mean": "energy",
                 "box_fraction_mean": "box share"}
        view = scores[["class", "resolution", "arch", "n", *names]].rename(columns=names)
        _print_frame(view, "localization of the best run per class and resolution", 3)
    paths = write_report(study_dir, extra_sections=sections)
    import pandas as pd

    _print_frame(pd.read_csv(paths["summary_by_resolution"]), "AUROC by resolution (Fig 4.1)")
    delta = pd.read_csv(paths["model_scaling_delta"])
    _print_frame(delta[["task", "resolution", "family", "delta_mean", "delta_max", "is_best", "best_arch"]],
                 "larger minus smaller model (Fig 4.2)")
    console.print(f"report: [bold]{paths['report']}[/]")
