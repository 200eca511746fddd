"""``cxrlab metrics ...``: score predictions made anywhere."""

from __future__ import annotations

import typer

app = typer.Typer(help="Score predictions from a CSV or mask folders.", no_args_is_help=True)
