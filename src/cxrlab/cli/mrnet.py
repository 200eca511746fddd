"""``cxrlab mrnet ...``: knee MRI with MRNet (Bien et al. 2018) — stats, train, evaluate, predict, demo."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

from cxrlab.cli.errors import print_markdown, quiet_lightning, user_errors

app = typer.Typer(help="Knee MRI: MRNet's three-plane classifier (abnormal, ACL tear, meniscal tear).",
                  no_args_is_help=True)
console = Console()


@app.command("stats")
@user_errors
def stats_cmd(
    root: Path = typer.Option(..., "--root", help="The MRNet-v1.0 folder (or its parent)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip and count bad exams instead of stopping."),
) -> None:
    """Per split: exams, positives per task, min/max slice count per plane."""
    from cxrlab.data.datasets.mrnet import mrnet_stats

    stats = mrnet_stats(root, on_error="skip" if skip_bad else "raise")
    if as_json:
        typer.echo(json.dumps(stats, indent=2))
        return
    for split, block in stats.items():
        slices = ", ".join(f"{p} {lo}-{hi}" for p, (lo, hi) in block["slices"].items())
        console.print(f"{split}: {block['exams']} exams, abnormal {block['abnormal']}, ACL {block['acl']}, "
                      f"meniscus {block['meniscus']}; slices {slices}"
                      + (f"; skipped {block['skipped']}" if block.get("skipped") else ""))


@app.command("train")
@user_errors
def train_cmd(
    config: Path = typer.Argument(..., help="MRNet recipe (configs/mrnet_bien2018.yaml)."),
    overrides: list[str] = typer.Argument(None, help="key.path=value overrides, e.g. train.epochs=5"),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run from its last epochs."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run folder."),
    progress: bool = typer.Option(False, "--progress/--no-progress", help="Lightning progress bars."),
) -> None:
    """Train the task x plane networks, fit the logistic regressions, evaluate on the held-out split."""
    from cxrlab.config.mrnet import load_mrnet_config
    from cxrlab.tasks.mrnet.train import train

    quiet_lightning()
    run_dir = train(load_mrnet_config(config, overrides or []), resume=resume, overwrite=overwrite,
                    progress=progress)
    print_markdown(console, (run_dir / "table.md").read_text())
    console.print(f"run directory: [bold]{run_dir}[/]")


@app.command("evaluate")
@user_errors
def evaluate_cmd(
    run_dir: Path = typer.Argument(..., help="A run folder made by `cxrlab mrnet train`."),
    as_json: bool = typer.Option(False, "--json", help="Print metrics.json instead of the table."),
) -> None:
    """Predict the held-out exams again and score them (table.md, metrics.json, curves/, top-slice CAMs in cams/)."""
    from cxrlab.tasks.mrnet.evaluate import evaluate_run

    metrics = evaluate_run(run_dir)
    if as_json:
        typer.echo(json.dumps(metrics, indent=2))
    else:
        print_markdown(console, (run_dir / "table.md").read_text())


@app.command("predict")
@user_errors
def predict_cmd(
    run_dir: Path = typer.Argument(..., help="A run folder made by `cxrlab mrnet train`."),
    exams: list[str] = typer.Argument(..., help="MRNet ids (with --root) or folders of three DICOM series."),
    root: Path = typer.Option(None, "--root", help="MRNet-v1.0 folder for exam ids."),
    out: Path = typer.Option(None, "--out", help="Write the probabilities to this CSV."),
) -> None:
    """Per exam and task: each plane's probability, the combined one and the call at the stored threshold."""
    import pandas as pd

    from cxrlab.data.datasets.mrnet import read_exam
    from cxrlab.inference.mrnet import MRNetPredictor
    from cxrlab.utils import atomic_write

    predictor = MRNetPredictor.from_run_dir(run_dir)
    rows = []
    for item in exams:
        exam_id, volumes = read_exam(item, root)
        row = {"exam": exam_id}
        for task, probs in predictor.predict(volumes).items():
            row.update({f"{task}_{model}": round(p, 6) for model, p in probs.items()})
            row[f"{task}_call"] = int(probs["combined"] >= predictor.threshold(task))
        rows.append(row)
    frame = pd.DataFrame(rows)
    if out is not None:
        atomic_write(out, lambda tmp: frame.to_csv(tmp, index=False))
        console.print(f"wrote {len(frame)} exam(s) to {out}")
    else:
        typer.echo(frame.to_csv(index=False), nl=False)


@app.command("demo")
@user_errors
def demo_cmd(
    out: Path = typer.Option(Path("runs/demo_mrnet"), "--out", help="Run root for phantoms and the run."),
    overrides: list[str] = typer.Argument(None, help="key.path=value overrides of configs/demo_mrnet.yaml"),
) -> None:
    """Write SYNTHETIC knee phantoms, train the grid at a small size, print the paper's table."""
    from cxrlab.data.datasets.mrnet import mrnet_stats
    from cxrlab.tasks.mrnet.demo import run_demo

    quiet_lightning()
    run_dir = run_demo(out, overrides=overrides or [])
    console.print("[bold]SYNTHETIC phantoms — not real patients[/]")
    typer.echo(json.dumps(mrnet_stats(Path(out) / "phantoms" / "MRNet-v1.0"), indent=2))
    print_markdown(console, (run_dir / "table.md").read_text())
    console.print(f"run directory: [bold]{run_dir}[/]")
