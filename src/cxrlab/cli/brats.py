"""``cxrlab brats ...``: brain-tumour segmentation and survival on BraTS (seed 004 poster); ``cxrlab metrics brats``."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import typer
from rich.console import Console
from rich.markdown import Markdown
from rich.table import Table

from cxrlab.cli.errors import user_errors

app = typer.Typer(help="Brain tumours (BraTS): 3D U-Net segmentation of WT/TC/ET and survival prediction.",
                  no_args_is_help=True)
console = Console()


def _quiet() -> None:
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _dumps(obj: object) -> str:
    def clean(value):
        if isinstance(value, float) and value != value:
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    return json.dumps(clean(obj), indent=2)


def _region_table(summary: dict, title: str) -> None:
    table = Table(title=title)
    for column in ("region", "Dice mean", "Dice median", "HD95 mean (mm)", "HD95 median (mm)"):
        table.add_column(column, justify="left" if column == "region" else "right")
    for region in ("WT", "TC", "ET"):
        mean, median = summary["mean"][region], summary["median"][region]
        table.add_row(region, f"{mean['dice']:.3f}", f"{median['dice']:.3f}", f"{mean['hd95']:.2f}",
                      f"{median['hd95']:.2f}")
    console.print(table)


@app.command("stats")
@user_errors
def stats_cmd(
    root: Path = typer.Option(..., "--root", help="BraTS folder (case folders) or the Decathlon's Task01_BrainTumour."),
    layout: str = typer.Option("auto", "--layout", help="auto, brats2020, brats2023 or msd."),
    labels: str = typer.Option("auto", "--labels", help="auto (the layout's), 2020, 2023 or msd."),
    on_error: str = typer.Option("raise", "--on-error", help="raise, or skip (and count) bad cases."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Cases found, layout and label convention, and the WT/TC/ET voxel count of every case."""
    from cxrlab.data.datasets.brats import BratsDataset
    from cxrlab.tasks.brats.demo import case_stats

    dataset = BratsDataset(root, layout=layout, labels=labels, on_error=on_error)
    stats = case_stats(dataset)
    if as_json:
        typer.echo(_dumps(stats))
        return
    table = Table(title=f"{root}: {len(stats['cases'])} case(s), layout {stats['layout']}, labels {stats['labels']}, "
                        f"{stats['survival_rows']} survival row(s)")
    for column in ("case", "WT", "TC", "ET"):
        table.add_column(column, justify="left" if column == "case" else "right")
    for case_id, counts in stats["cases"].items():
        table.add_row(case_id, str(counts["WT"]), str(counts["TC"]), str(counts["ET"]))
    console.print(table)
    if dataset.skips.count:
        console.print(dataset.skips.summary())


@app.command("train")
@user_errors
def train_cmd(
    config: Path = typer.Argument(..., help="BraTS recipe (configs/brats_weninger2018.yaml)."),
    overrides: list[str] = typer.Argument(None, help="key.path=value overrides, e.g. data.root=/data/BraTS2020"),
    resume: bool = typer.Option(False, "--resume", help="Continue the run from checkpoints/last.ckpt."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run of that name."),
    progress: bool = typer.Option(False, "--progress/--no-progress", help="Show Lightning progress bars."),
) -> None:
    """Train the 3D U-Net, then score the test cases (Dice, HD95 per region)."""
    from cxrlab.config.brats import load_brats_config
    from cxrlab.tasks.brats.train import train

    _quiet()
    run_dir = train(load_brats_config(config, overrides or []), resume=resume, overwrite=overwrite,
                    progress=progress)
    console.print(Markdown((run_dir / "table.md").read_text()))
    console.print(f"run directory: [bold]{run_dir}[/]")


@app.command("evaluate")
@user_errors
def evaluate_cmd(
    run_dir: Path = typer.Argument(..., help="A run made by `cxrlab brats train`."),
    split: str = typer.Option("test", "--split", help="test or valid."),
    as_json: bool = typer.Option(False, "--json", help="Print metrics.json instead of the table."),
) -> None:
    """Predict and score the run's test (or validation) cases; writes metrics.json, per_case.csv, table.md."""
    from cxrlab.tasks.brats.evaluate import evaluate_run

    _quiet()
    result = evaluate_run(run_dir, split=split)
    if as_json:
        typer.echo(_dumps(result))
    else:
        _region_table(result, f"{run_dir}: {result['n_cases']} {split} case(s)")


@app.command("predict")
@user_errors
def predict_cmd(
    run_dir: Path = typer.Argument(..., help="A run made by `cxrlab brats train`."),
    case_dirs: list[Path] = typer.Argument(..., help="Case folders (<id>_t1.nii.gz ... or <id>-t1n.nii.gz ...)."),
    out: Path = typer.Option(..., "--out", help="Output folder: <id>.nii.gz and overlays/<id>.png."),
    tta: bool = typer.Option(None, "--tta/--no-tta", help="Flip test-time augmentation (default: the recipe's)."),
) -> None:
    """Segment cases; write labels in each input's space and label convention, plus overlays."""
    from cxrlab.data.datasets.brats import BratsDataset, region_masks
    from cxrlab.errors import MissingFileError
    from cxrlab.inference.brats import BratsPredictor, write_overlay, write_prediction

    predictor = BratsPredictor.from_run_dir(run_dir, tta=tta)
    for folder in case_dirs:
        if not folder.is_dir():
            raise MissingFileError(folder, "case folder not found")
        case = BratsDataset(folder.resolve().parent, only=[folder.resolve().name]).load(0)
        pred = predictor.predict(case)
        path = write_prediction(case, pred, out)
        write_overlay(out / "overlays" / f"{case.case_id}.png", case, pred)
        counts = {r: int(m.sum()) for r, m in region_masks(pred).items()}
        console.print(f"{case.case_id}: WT {counts['WT']} TC {counts['TC']} ET {counts['ET']} voxels -> {path}")


@app.command("survival")
@user_errors
def survival_cmd(
    run_dir: Path = typer.Argument(..., help="A run made by `cxrlab brats train`."),
    source: str = typer.Option(None, "--source", help="predicted or reference segmentations (default: recipe's)."),
    as_json: bool = typer.Option(False, "--json", help="Print survival.json instead of the table."),
) -> None:
    """Cross-validated survival regression from age and segmentation features (GTR cases)."""
    from cxrlab.tasks.brats.survival import survival_run, survival_table

    _quiet()
    result = survival_run(run_dir, source=source)
    if as_json:
        typer.echo(_dumps(result))
    else:
        console.print(Markdown(survival_table(result)))


@app.command("demo")
@user_errors
def demo_cmd(
    out: Path = typer.Option(Path("runs/brats_demo"), "--out", help="Folder for phantoms and the run."),
    overrides: list[str] = typer.Argument(None, help="key.path=value overrides of the demo recipe."),
    progress: bool = typer.Option(False, "--progress/--no-progress", help="Show Lightning progress bars."),
) -> None:
    """SYNTHETIC phantoms -> train -> per-region table -> survival -> stats (a few minutes on a CPU)."""
    from cxrlab.tasks.brats.survival import survival_table
    from cxrlab.tasks.brats.demo import run_demo

    _quiet()
    console.print("[bold]SYNTHETIC[/] brain phantoms: no real patient data.")
    summary = run_demo(out, overrides or [], progress=progress)
    _region_table(summary["segmentation"], f"test phantoms (n={summary['segmentation']['n_cases']})")
    console.print(Markdown(survival_table(summary["survival"])))
    console.print(f"run directory: [bold]{summary['run_dir']}[/]; stats: {summary['stats_file']}")


def register_brats_metrics(metrics_app: typer.Typer) -> None:
    """Add ``brats`` to the ``cxrlab metrics`` sub-app."""

    @metrics_app.command("brats")
    @user_errors
    def brats_metrics(
        pred: Path = typer.Option(..., "--pred", help="Folder of predicted label NIfTIs."),
        truth: Path = typer.Option(..., "--truth", help="Folder of reference label NIfTIs (same names)."),
        labels: str = typer.Option("auto", "--labels", help="2020 (ET=4), 2023 (ET=3), msd, or auto (detected)."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    ) -> None:
        """Dice and HD95 (mm) of WT, TC and ET per case and averaged, with the BraTS empty-region conventions."""
        from cxrlab.tasks.brats.evaluate import score_label_folders

        result = score_label_folders(pred, truth, labels)
        if as_json:
            typer.echo(_dumps(result))
            return
        _region_table(result, f"{pred} vs {truth}: {len(result['cases'])} case(s), labels {result['labels']}")


def register(root: typer.Typer, metrics_app: typer.Typer) -> None:
    """``cxrlab brats ...`` and ``cxrlab metrics brats``."""
    root.add_typer(app, name="brats")
    register_brats_metrics(metrics_app)
