"""``cxrlab screen ...``: the seed-003 normal-screening ensemble (train, evaluate, predict, demo)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from cxrlab.cli.errors import user_errors
from cxrlab.cli.export import BACKEND_HELP, PROVIDERS_HELP, backend_choice

app = typer.Typer(help="Normal screening: per-disease multi-task ensemble + SVM (seed 003).",
                  no_args_is_help=True)
console = Console()


def _fmt(value: object) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "n/a"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _summary_table(report: dict) -> Table:
    table = Table(title="screening (normal vs abnormal) per evaluation set")
    for column in ("variant", "set", "n", "AI normal | ref normal", "AI normal | ref abnormal",
                   "sensitivity", "specificity", "AUROC"):
        table.add_column(column, justify="left" if column in ("variant", "set") else "right")
    for variant, summary in report["variants"].items():
        for name, c in summary["sets"].items():
            table.add_row(variant, name, str(c["n"]), str(c["ai_normal_ref_normal"]),
                          str(c["ai_normal_ref_abnormal"]), _fmt(c["sensitivity"]),
                          _fmt(c["specificity"]), _fmt(c["auroc"]))
    return table


def _print_report(report: dict) -> None:
    console.print(_summary_table(report))
    for variant, summary in report["variants"].items():
        point = summary["operating_point"]
        console.print(f"{variant}: threshold {point['threshold']:.4f} (target sensitivity "
                      f"{point['target_sensitivity']}); unseen diseases called normal "
                      f"{_fmt(summary['unseen_predicted_normal_rate'])}, normals called normal "
                      f"{_fmt(summary['normal_predicted_normal_rate'])}")
    console.print(f"report: [bold]{report['report_md']}[/]")


def _reporter(quiet: bool):
    return None if quiet else (lambda message: console.print(f"[dim]{message}[/]"))


@app.command("train")
@user_errors
def train_cmd(
    config: Path = typer.Argument(..., help="Screening recipe (configs/screening_seed003.yaml)."),
    overrides: list[str] = typer.Argument(None, help="key.path=value overrides."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run directory."),
    quiet: bool = typer.Option(False, "--quiet", help="No per-epoch lines."),
    resume: bool = typer.Option(False, "--resume", help="Continue a killed run in its directory."),
) -> None:
    """Train the per-disease ensemble (and the shared-encoder variant), fit the SVM, report."""
    from cxrlab.config.screening import load_screening_config
    from cxrlab.runs.rundir import process_rank
    from cxrlab.tasks.screening.pipeline import train_screening

    cfg = load_screening_config(config, overrides or [])
    run_dir = train_screening(cfg, _reporter(quiet), overwrite=overwrite, resume=resume)
    if process_rank() > 0:  # a DDP worker: rank 0 reports
        return
    _print_report(json.loads((run_dir / "report.json").read_text()))
    console.print(f"run directory: [bold]{run_dir}[/]")


@app.command("evaluate")
@user_errors
def evaluate_cmd(
    run_dir: Path = typer.Argument(..., help="A run directory made by `cxrlab screen train`."),
    as_json: bool = typer.Option(False, "--json", help="Print report.json instead of tables."),
    target_sensitivity: float = typer.Option(
        None, "--target-sensitivity", min=0.0, max=1.0,
        help="First move the operating point: re-pick each variant's SVM threshold on the "
             "validation images for this sensitivity (networks and SVM unchanged)."),
) -> None:
    """Re-score a run on its evaluation sets; rewrites predictions, tables and reports."""
    from cxrlab.tasks.screening.evaluate import evaluate_screening
    from cxrlab.tasks.screening.svm import move_operating_point

    report = (evaluate_screening(run_dir) if target_sensitivity is None
              else move_operating_point(run_dir, target_sensitivity))
    if as_json:
        typer.echo(json.dumps(report, default=lambda v: None))
        return
    _print_report(report)


@app.command("predict")
@user_errors
def predict_cmd(
    run_dir: Path = typer.Argument(..., help="A trained screening run directory."),
    images: list[Path] = typer.Argument(..., help="DICOM/PNG/JPEG files or folders."),
    variant: str = typer.Option(None, help="ensemble (default) or shared."),
    out: Path = typer.Option(None, "--out", help="Also write the predictions to this CSV."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip unreadable images (counted)."),
    backend: str = typer.Option("torch", "--backend", help=BACKEND_HELP),
    providers: str = typer.Option(None, "--providers", help=PROVIDERS_HELP),
) -> None:
    """Per image: normal/abnormal, probability, most likely diseases, risk group."""
    from cxrlab.errors import SkipLog
    from cxrlab.inference.classifier import iter_image_paths
    from cxrlab.inference.screening import predict_screening
    from cxrlab.utils import atomic_write_text

    backend, provider_list = backend_choice(backend, providers)
    skips = SkipLog("skip" if skip_bad else "raise")
    frame = predict_screening(run_dir, iter_image_paths(images), variant=variant, skips=skips, backend=backend,
                              providers=provider_list)
    if out is not None:
        atomic_write_text(out, frame.to_csv(index=False))
        console.print(f"wrote {len(frame)} prediction(s) to {out}")
    table = Table(title="screening predictions")
    for column in ("image", "decision", "p(abnormal)", "likely diseases", "risk group"):
        table.add_column(column)
    for _, row in frame.iterrows():
        table.add_row(Path(row["path"]).name, row["decision"],
                      f"{row['abnormal_probability']:.3f}",
                      row["likely_diseases"].replace(";", ", "), row["risk_group"])
    console.print(table)
    if skips.count:
        console.print(f"[yellow]{skips.summary()}[/]")


@app.command("demo")
@user_errors
def demo_cmd(
    out: Path = typer.Option(Path("runs/screening_demo"), "--out", help="Output folder."),
    n: int = typer.Option(600, help="Phantom images to synthesize (main set)."),
    n_external: int = typer.Option(240, help="Phantom images of the external set."),
    size: int = typer.Option(None, help="Image side (default: the demo recipe's 64 px)."),
    valid_fraction: float = typer.Option(0.25, help="Share of the main set for validation."),
    test_fraction: float = typer.Option(0.2, help="Share of the main set for the internal test."),
    overrides: list[str] = typer.Option(None, "--set", help="key=value override of "
                                        "configs/demo_screening.yaml (repeatable)."),
    quiet: bool = typer.Option(False, "--quiet", help="No per-epoch lines."),
) -> None:
    """Phantoms, a small ensemble + shared variant trained on CPU, reports in OUT/report.json."""
    from cxrlab.tasks.screening.pipeline import run_screening_demo

    summary = run_screening_demo(out, n_images=n, n_external=n_external, size=size,
                                 overrides=overrides or [], report=_reporter(quiet),
                                 valid_fraction=valid_fraction, test_fraction=test_fraction)
    full = json.loads((Path(summary["run_dir"]) / "report.json").read_text())
    _print_report(full)
    console.print(f"sensitivity {_fmt(summary['sensitivity'])}, specificity "
                  f"{_fmt(summary['specificity'])}, unseen called normal "
                  f"{_fmt(summary['unseen_predicted_normal_rate'])} in {summary['seconds']} s "
                  "(SYNTHETIC phantoms)")
    console.print(f"wrote [bold]{Path(out) / 'report.json'}[/]")


@app.command("cost")
@user_errors
def cost_cmd(
    encoder: str = typer.Option("densenet121", help="timm body."),
    diseases: int = typer.Option(13, help="Number of diseases (models in the ensemble)."),
    size: int = typer.Option(1024, help="Image side in pixels."),
    batch: list[int] = typer.Option([1], "--batch", help="Batch size(s)."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    bf16: bool = typer.Option(False, "--bf16", help="bfloat16 autocast."),
    repeats: int = typer.Option(3, help="Timed runs (median)."),
) -> None:
    """Inference cost of the per-disease ensemble vs the shared encoder (untrained weights)."""
    from cxrlab.engine.screening import compare_inference_cost

    frame = compare_inference_cost(encoder, diseases, size, batch, device=device, bf16=bf16,
                                   repeats=repeats)
    table = Table(title=f"{encoder}, {diseases} diseases, {size} px, {device}"
                        f"{' bf16' if bf16 else ''}")
    for column in ("variant", "batch", "params (M)", "GFLOPs/image", "ms/image", "x shared"):
        table.add_column(column, justify="right")
    for _, row in frame.iterrows():
        table.add_row(row["variant"], str(row["batch_size"]), f"{row['params'] / 1e6:.1f}",
                      f"{row['gflops_per_image']:.1f}", f"{row['ms_per_image']:.1f}",
                      f"{row['time_vs_shared']:.2f}")
    console.print(table)


def register(app_: typer.Typer) -> None:
    """Mount this sub-app as ``cxrlab screen`` on the top-level app."""
    app_.add_typer(app, name="screen")
