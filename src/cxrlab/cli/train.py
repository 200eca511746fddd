"""Top-level training commands: train, evaluate, predict, compare, demo."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from cxrlab.cli.errors import user_errors
from cxrlab.cli.export import BACKEND_HELP, PROVIDERS_HELP, backend_choice
from cxrlab.report.tables import auroc_table, fmt as _fmt

console = Console()


def _print_comparison(frame, run_a: Path, run_b: Path, split: str) -> None:
    table = Table(title=f"{Path(run_b).name} vs {Path(run_a).name} ({split}, paired DeLong)")
    for column in ("task", "n", "AUROC A", "AUROC B", "Δ (B−A)", "p"):
        table.add_column(column, justify="left" if column == "task" else "right")
    for _, row in frame.iterrows():
        table.add_row(row["task"], str(row["n"]), _fmt(row["auroc_a"]), _fmt(row["auroc_b"]),
                      f"{row['delta_auroc']:+.3f}", _fmt(row["p_value"], 4))
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add the training commands to the top-level app."""

    @app.command("train")
    @user_errors
    def train_cmd(
        config: Path = typer.Argument(..., help="YAML recipe (see configs/)."),
        overrides: list[str] = typer.Argument(None, help="key.path=value overrides, e.g. model.arch=resnet50"),
        resume: bool = typer.Option(False, "--resume", help="Continue a killed run in its directory."),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
    ) -> None:
        """Train a classifier from a recipe; writes a run directory and an MLflow run."""
        from cxrlab.config import load_config
        from cxrlab.tasks.classification.train import train

        cfg = load_config(config, overrides or [])
        run_dir = train(cfg, resume=resume, progress=progress)
        from cxrlab.runs.rundir import process_rank

        if process_rank() > 0:  # a DDP worker: rank 0 reports
            return
        metrics = json.loads((run_dir / "metrics.json").read_text())
        for split in ("valid", "test"):
            if split in metrics:
                console.print(auroc_table(metrics, split))
        console.print(f"run directory: [bold]{run_dir}[/]")

    @app.command("evaluate")
    @user_errors
    def evaluate_cmd(
        run_dir: Path = typer.Argument(..., help="A run directory made by `cxrlab train`."),
        split: list[str] = typer.Option(None, "--split", help="Split(s) to score: valid, test (default: both)."),
        checkpoint: str = typer.Option("best_auroc.pt", help="best_auroc.pt or best_loss.pt"),
        as_json: bool = typer.Option(False, "--json", help="Print metrics as JSON."),
    ) -> None:
        """Score a run's best checkpoint; rewrites metrics.json, predictions and curves."""
        from cxrlab.tasks.classification.evaluate import evaluate_run

        metrics = evaluate_run(run_dir, splits=split or None, checkpoint=checkpoint)
        if as_json:
            typer.echo(json.dumps({s: metrics[s] for s in (split or ("valid", "test")) if s in metrics},
                                  default=lambda v: None))
            return
        for name in split or ("valid", "test"):
            if name in metrics:
                console.print(auroc_table(metrics, name))

    @app.command("predict")
    @user_errors
    def predict_cmd(
        checkpoint: Path = typer.Argument(..., help="best_auroc.pt (or a run directory)."),
        images: list[Path] = typer.Argument(..., help="DICOM/PNG/JPEG files or folders."),
        out: Path = typer.Option(None, "--out", help="Write predictions to this CSV."),
        skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip unreadable images (counted)."),
        backend: str = typer.Option("torch", "--backend", help=BACKEND_HELP),
        providers: str = typer.Option(None, "--providers", help=PROVIDERS_HELP),
    ) -> None:
        """Per-image probabilities and decisions at the checkpoint's thresholds."""
        from cxrlab.errors import SkipLog
        from cxrlab.inference.classifier import iter_image_paths, predict_images
        from cxrlab.utils import atomic_write_text

        backend, provider_list = backend_choice(backend, providers)
        skips = SkipLog("skip" if skip_bad else "raise")
        frame = predict_images(checkpoint, iter_image_paths(images), skips=skips, backend=backend,
                               providers=provider_list)
        if out is not None:
            atomic_write_text(out, frame.to_csv(index=False))
            console.print(f"wrote {len(frame)} prediction(s) to {out}")
        labels = [c[len("prob_"):] for c in frame.columns if c.startswith("prob_")]
        table = Table(title="predictions")
        table.add_column("image")
        for name in labels:
            table.add_column(name, justify="right")
        for _, row in frame.iterrows():
            table.add_row(Path(row["path"]).name, *[_fmt(row[f"prob_{n}"]) for n in labels])
        console.print(table)
        if skips.count:
            console.print(f"[yellow]{skips.summary()}[/]")

    @app.command("compare")
    @user_errors
    def compare_cmd(
        run_a: Path = typer.Argument(..., help="Reference run (e.g. BCE)."),
        run_b: Path = typer.Argument(..., help="Run compared with it (e.g. DAM)."),
        split: str = typer.Option("test", help="Split whose per-study predictions are compared."),
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """Per-task ΔAUROC (B − A) with paired DeLong p-values on the shared studies."""
        from cxrlab.report.compare import compare_runs

        frame = compare_runs(run_a, run_b, split=split)
        if as_json:
            typer.echo(frame.to_json(orient="records"))
            return
        _print_comparison(frame, run_a, run_b, split)

    @app.command("dam")
    @user_errors
    def dam_cmd(
        bce_config: Path = typer.Argument(..., help="BCE recipe (e.g. configs/ards_bce.yaml)."),
        dam_config: Path = typer.Argument(..., help="DAM recipe (e.g. configs/ards_dam.yaml)."),
        overrides: list[str] = typer.Argument(None, help="key=value overrides applied to both recipes."),
        split: str = typer.Option("test", help="Split compared."),
        progress: bool = typer.Option(True, "--progress/--no-progress"),
    ) -> None:
        """Train BCE and DAM on the same split and report ΔAUROC with paired DeLong tests."""
        from cxrlab.config import load_config
        from cxrlab.tasks.classification.dam import bce_vs_dam

        bce = load_config(bce_config, overrides or [])
        dam = load_config(dam_config, overrides or [])
        run_a, run_b, frame = bce_vs_dam(bce, dam, split=split, progress=progress)
        _print_comparison(frame, run_a, run_b, split)

    @app.command("demo")
    @user_errors
    def demo_cmd(
        out: Path = typer.Option(Path("runs/demo"), "--out", help="Output folder."),
        n: int = typer.Option(480, help="Phantom images to synthesize."),
    ) -> None:
        """Synthesize phantoms, train a small model on CPU, evaluate, predict a real DICOM."""
        from cxrlab.tasks.classification.demo import run_demo

        run_demo(out, n_images=n, console=console)
