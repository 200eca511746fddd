"""``cxrlab seg ...``: pneumothorax segmentation (seed 002) — train, evaluate, predict, cross-validate."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

from cxrlab.cli.errors import print_markdown, quiet_lightning, user_errors
from cxrlab.cli.export import BACKEND_HELP, PROVIDERS_HELP, backend_choice

app = typer.Typer(help="Pneumothorax segmentation: baseline U-Net vs the gated One Case cascade.",
                  no_args_is_help=True)
console = Console()


@app.command("train")
@user_errors
def train_cmd(
    config: Path = typer.Argument(..., help="Pneumothorax recipe (configs/pneumothorax_seed002.yaml)."),
    overrides: list[str] = typer.Argument(None, help="key.path=value overrides, e.g. unet.encoder=resnet18"),
    progress: bool = typer.Option(False, "--progress/--no-progress", help="Show Lightning progress bars."),
    resume: bool = typer.Option(False, "--resume", help="Continue a killed run in its directory."),
) -> None:
    """Train the recipe's models (baseline U-Net, One Case U-Net + gate) and evaluate them."""
    from cxrlab.config.pneumothorax import load_pneumothorax_config
    from cxrlab.runs.rundir import process_rank
    from cxrlab.tasks.pneumothorax.train import train

    quiet_lightning()
    cfg = load_pneumothorax_config(config, overrides or [])
    run_dir = train(cfg, progress=progress, resume=resume)
    if process_rank() > 0:  # a DDP worker: rank 0 reports
        return
    print_markdown(console, (run_dir / "table.md").read_text())
    console.print(f"run directory: [bold]{run_dir}[/]")


@app.command("evaluate")
@user_errors
def evaluate_cmd(
    run_dir: Path = typer.Argument(..., help="A run directory made by `cxrlab seg train`."),
    postprocess: list[str] = typer.Option(
        None, "--postprocess",
        help="Row(s) to compute: argmax, threshold, tta, triplet (tuned on validation), or "
             "ROW:key=value,... to fix them, e.g. 'threshold:threshold=0.4,min_area=30'."),
    as_json: bool = typer.Option(False, "--json", help="Print metrics.json instead of the table."),
) -> None:
    """Tune post-processing on the validation split and score it on the test split."""
    from cxrlab.tasks.pneumothorax.evaluate import evaluate_run, parse_postprocess

    quiet_lightning()
    rows, fixed = [], {}
    for text in postprocess or []:
        row, spec = parse_postprocess(text)
        rows.append(row)
        if spec is not None:
            fixed[row] = spec
    metrics = evaluate_run(run_dir, rows=rows or None, fixed=fixed)
    if as_json:
        typer.echo(json.dumps(metrics, indent=2, default=lambda v: None))
    else:
        print_markdown(console, (Path(run_dir) / "table.md").read_text())


@app.command("predict")
@user_errors
def predict_cmd(
    run_dir: Path = typer.Argument(..., help="A run directory made by `cxrlab seg train`."),
    images: list[Path] = typer.Argument(..., help="DICOM/PNG/JPEG files or folders."),
    out: Path = typer.Option(..., "--out", help="Output folder (masks/, overlays/, predictions.csv)."),
    rle: bool = typer.Option(False, "--rle", help="Also write the Kaggle submission.csv (RLE)."),
    model: str = typer.Option("cascade", "--model", help="cascade (gate + One Case U-Net) or baseline."),
    row: str = typer.Option(None, "--postprocess", help="Tuned row to apply (default: best on validation)."),
    backend: str = typer.Option("torch", "--backend", help=BACKEND_HELP),
    providers: str = typer.Option(None, "--providers", help=PROVIDERS_HELP),
) -> None:
    """Predict pneumothorax masks; write masks, overlays and optionally Kaggle RLE."""
    from cxrlab.inference.pneumothorax import export_predictions, predict_masks
    from cxrlab.inference.classifier import iter_image_paths

    backend, provider_list = backend_choice(backend, providers)
    paths = iter_image_paths(images)
    predictions = predict_masks(run_dir, paths, model=model, row=row, backend=backend, providers=provider_list)
    files = export_predictions(predictions, out, rle=rle)
    with_mask = sum(bool(p.mask.any()) for p in predictions)
    console.print(f"{len(predictions)} image(s), {with_mask} with a pneumothorax mask; wrote {out}")
    if "rle" in files:
        console.print(f"Kaggle CSV: [bold]{files['rle']}[/]")


@app.command("cv")
@user_errors
def cv_cmd(
    config: Path = typer.Argument(..., help="Pneumothorax recipe."),
    overrides: list[str] = typer.Argument(None, help="key.path=value overrides."),
    folds: int = typer.Option(None, "--folds", help="Number of patient folds (default: the recipe's cv.folds)."),
    out: Path = typer.Option(None, "--out", help="Output folder (default: output.root/name)."),
    progress: bool = typer.Option(False, "--progress/--no-progress", help="Show Lightning progress bars."),
) -> None:
    """K-fold cross-validation by patient of baseline and cascade; Table 5.1 layout, mean ± std."""
    from cxrlab.config.pneumothorax import load_pneumothorax_config
    from cxrlab.tasks.pneumothorax.cv import cross_validate

    quiet_lightning()
    cfg = load_pneumothorax_config(config, overrides or [])
    result = cross_validate(cfg, folds=folds, out=out, progress=progress)
    print_markdown(console, result["markdown"])
    target = Path(out) if out is not None else Path(cfg.output.root) / cfg.name
    console.print(f"tables: [bold]{target / 'cv_table.md'}[/], {target / 'cv_table.csv'}")
