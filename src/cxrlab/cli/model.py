"""``cxrlab model ...``: inspect model architectures."""

from __future__ import annotations

import typer

app = typer.Typer(help="Model architectures: parameter counts and features.", no_args_is_help=True)
