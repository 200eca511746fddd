"""``cxrlab metrics ...``: score predictions made anywhere.

Each metric command is imported when it runs (see :mod:`cxrlab.cli._lazy`), and pandas
and the metric code only by the command body, so ``cxrlab metrics --help`` and each
command's ``--help`` start without pandas, scipy or torch.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from typing import TYPE_CHECKING

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from cxrlab.cli._lazy import Lazy, lazy_group
from cxrlab.cli.errors import user_errors
from cxrlab.errors import CSVFormatError, LabelValueError, MissingFileError

if TYPE_CHECKING:
    import pandas as pd

#: The metric commands, imported only when they run; one line each.
COMMANDS = {
    "classification": Lazy("cxrlab.cli.metrics", "register_classification_metrics",
                           "AUROC with DeLong 95% CI, and sensitivity/specificity at Youden's "
                           "threshold.", kind="register"),
    "segmentation": Lazy("cxrlab.cli.metrics_segmentation", "register_segmentation_metrics",
                         "Dice per image (competition score), global Dice and IoU of PNG masks "
                         "with matching names.", kind="register"),
    "brats": Lazy("cxrlab.cli.brats", "register_brats_metrics",
                  "Dice and HD95 (mm) of WT, TC and ET per case and averaged, with the BraTS "
                  "empty-region conventions.", kind="register"),
}

app = typer.Typer(cls=lazy_group(COMMANDS), help="Score predictions from a CSV or mask folders.",
                  no_args_is_help=True)


def _rows(mask: pd.Series, limit: int = 5) -> str:
    """CSV line numbers (header = line 1) of the rows where ``mask`` holds."""
    lines = [str(i + 2) for i in np.flatnonzero(mask.to_numpy())[:limit]]
    return ", ".join(lines) + (", ..." if int(mask.sum()) > limit else "")


def read_label_score_csv(path: Path, label_col: str, score_col: str) -> tuple[np.ndarray, np.ndarray]:
    """Read one binary label column and one score column from a CSV.

    Blank labels are dropped (unknown); every kept row must have a label 0/1 and a
    numeric score.

    Returns:
        ``(labels float [M], scores float [M])`` of the rows with a label.

    Raises:
        MissingFileError: The file does not exist.
        CSVFormatError: The file cannot be parsed, a column is missing, or a score is
            blank or not a number.
        LabelValueError: A label is not 0 or 1.
    """
    import pandas as pd

    if not path.is_file():
        raise MissingFileError(path, "file not found")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise CSVFormatError(path, f"cannot parse as CSV: {err}") from err
    missing = [col for col in (label_col, score_col) if col not in table.columns]
    if missing:
        present = ", ".join(repr(c) for c in table.columns)
        raise CSVFormatError(
            path, f"no column {', '.join(repr(c) for c in missing)}; columns present: {present}"
        )
    raw_labels = table[label_col].str.strip()
    raw_scores = table[score_col].str.strip()
    known = raw_labels != ""
    labels = pd.to_numeric(raw_labels.where(known), errors="coerce")
    bad = known & ~labels.isin([0, 1])
    if bad.any():
        values = ", ".join(repr(v) for v in raw_labels[bad].unique()[:5])
        raise LabelValueError(
            path,
            f"column {label_col!r} must hold 0 or 1 (blank = unknown); found {values} "
            f"on line(s) {_rows(bad)}",
        )
    scores = pd.to_numeric(raw_scores, errors="coerce")
    bad_scores = known & ~np.isfinite(scores.to_numpy(dtype=np.float64))
    if bad_scores.any():
        values = ", ".join(repr(v) for v in raw_scores[bad_scores].unique()[:5])
        raise CSVFormatError(
            path,
            f"column {score_col!r} must hold a finite number on every labelled row; found "
            f"{values} on line(s) {_rows(bad_scores)}",
        )
    return labels[known].to_numpy(dtype=np.float64), scores[known].to_numpy(dtype=np.float64)


def _print_table(summary: dict, path: Path, label_col: str, score_col: str) -> None:
    table = Table(title=f"{path.name}: {score_col} vs {label_col}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("AUROC", f"{summary['auroc']:.4f}")
    table.add_row(
        "95% CI (DeLong)", f"{summary['auroc_ci_low']:.4f} - {summary['auroc_ci_high']:.4f}"
    )
    table.add_row("n", str(summary["n"]))
    table.add_row("n positive", str(summary["n_positive"]))
    table.add_row("threshold (Youden's J)", f"{summary['threshold']:.6g}")
    table.add_row("sensitivity", f"{summary['sensitivity']:.4f}")
    table.add_row("specificity", f"{summary['specificity']:.4f}")
    Console().print(table)


def register_classification_metrics(metrics_app: typer.Typer) -> None:
    """Add ``classification`` to the ``cxrlab metrics`` sub-app."""

    @metrics_app.command("classification")
    @user_errors
    def classification(
        csv: Path = typer.Option(..., "--csv", help="CSV with one row per case."),
        label_col: str = typer.Option(..., "--label-col", help="Column of 0/1 labels (blank = unknown)."),
        score_col: str = typer.Option(..., "--score-col", help="Column of scores (higher = positive)."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    ) -> None:
        """AUROC with DeLong 95% CI, and sensitivity/specificity at Youden's threshold."""
        from cxrlab.metrics.classification import binary_summary

        labels, scores = read_label_score_csv(csv, label_col, score_col)
        n_pos = int(labels.sum())
        if n_pos == 0 or n_pos == labels.size:
            raise LabelValueError(
                csv,
                f"column {label_col!r} has {n_pos} positive(s) and {labels.size - n_pos} negative(s) "
                "among labelled rows; AUROC needs both classes",
            )
        summary = binary_summary(labels, scores, alpha=0.95)
        if as_json:
            clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in summary.items()}
            typer.echo(json.dumps(clean, indent=2))
        else:
            _print_table(summary, csv, label_col, score_col)
