"""Rich tables of run metrics, shared by the command line and the demos."""

from __future__ import annotations

import math

from rich.table import Table


def fmt(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def auroc_table(metrics: dict, split: str, title: str | None = None) -> Table:
    """A rich table of per-task AUROC with DeLong 95% CI for one split of metrics.json."""
    block = metrics[split]
    table = Table(title=title or f"{split} AUROC (study level, DeLong 95% CI)")
    for column in ("task", "n", "positive", "AUROC", "95% CI", "sens@J", "spec@J"):
        table.add_column(column, justify="left" if column == "task" else "right")
    for task, report in block["tasks"].items():
        youden = report.get("at_youden", {})
        table.add_row(task, str(report.get("n", "")), str(report.get("n_positive", "")),
                      fmt(report.get("auroc")),
                      f"{fmt(report.get('auroc_ci_low'))}–{fmt(report.get('auroc_ci_high'))}",
                      fmt(youden.get("sensitivity")), fmt(youden.get("specificity")))
    table.add_row("mean", "", "", fmt(block.get("mean_auroc")), "", "", "", style="bold")
    return table
