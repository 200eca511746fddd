"""``cxrlab data stats``: per-class label counts of a dataset under a label policy.

Reads only the label files: image files are not required (``--check-files`` verifies
them). Examples::

    cxrlab data stats --dataset chexpert --csv train.csv --policy Edema=ones --level study
    cxrlab data stats --dataset nih --csv Data_Entry_2017_v2020.csv --json
    cxrlab data stats --dataset generic --csv mine.csv -o path_col=file -o label_cols=A,B
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from cxrlab.cli._datasets import (csv_option, dataset_option, extra_option,
                                  open_dataset_from_cli, root_option)
from cxrlab.cli.errors import user_errors
from cxrlab.data.policies import POLICIES

console = Console()
err_console = Console(stderr=True)


class Level(str, Enum):
    image = "image"
    study = "study"


class OnError(str, Enum):
    raise_ = "raise"
    skip = "skip"


def register(app: typer.Typer) -> None:
    """Add ``stats`` to the ``data`` app."""

    @app.command("stats")
    @user_errors
    def stats_cmd(
        dataset: str = dataset_option(),
        csv: Path = csv_option(),
        root: Path = root_option(),
        option: list[str] = extra_option(),
        policy: list[str] = typer.Option(
            None, "--policy", "-p", metavar="CLASS=POLICY",
            help=f"Uncertainty policy of a class ({'|'.join(POLICIES)}), repeatable; "
                 f"'*=POLICY' sets the default. Classes not named: ignore."),
        level: Level = typer.Option(Level.image, "--level",
                                    help="Count per image or per study (max over views)."),
        frontal_only: bool = typer.Option(False, "--frontal-only",
                                          help="Count frontal images only."),
        check_files: bool = typer.Option(False, "--check-files",
                                         help="Also verify that every image file exists."),
        on_error: OnError = typer.Option(OnError.raise_, "--on-error",
                                         help="Stop at the first bad row, or skip and count."),
        as_json: bool = typer.Option(False, "--json",
                                     help="Print one JSON object keyed by class name."),
    ) -> None:
        """Per-class counts: labelled (n), positive, negative (and uncertain for
        multiclass classes) after the policy."""
        from cxrlab.data.labels import parse_policies

        specs = list(policy or [])
        parse_policies(specs)  # syntax errors before the (slow) CSV parse
        data = open_dataset_from_cli(dataset, csv, root, option, policy=specs or None,
                                     check_files=check_files, on_error=on_error.value)
        if frontal_only:
            data = data.filter_views(frontal=True)
        counts = data.label_counts(level.value)
        if as_json:
            typer.echo(json.dumps(counts))
        else:
            _print_table(data, counts, level.value)
        if data.skips.count:
            err_console.print(data.skips.summary(), highlight=False, soft_wrap=True)


def _print_table(data, counts: dict[str, dict[str, int]], level: str) -> None:
    table = data.table
    n_studies = table["study_id"].nunique()
    console.print(f"{data.name}: {len(table)} images, {n_studies} studies, "
                  f"{table['patient_id'].nunique()} patients; counted per {level}; "
                  f"policy default {data.policy.default}"
                  + "".join(f", {k}={v}" for k, v in data.policy.uncertain.items()),
                  highlight=False, soft_wrap=True)
    uncertain = any("uncertain" in entry for entry in counts.values())
    out = Table(show_header=True, header_style="bold")
    for column in ("class", "n", "positive", "negative") + (("uncertain",) if uncertain else ()):
        out.add_column(column, justify="left" if column == "class" else "right")
    for name, entry in counts.items():
        cells = [name, entry["n"], entry["positive"], entry["negative"]]
        if uncertain:
            cells.append(entry.get("uncertain", ""))
        out.add_row(*(str(c) for c in cells))
    console.print(out)
