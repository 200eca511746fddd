"""Top-level training commands: train, evaluate, predict, compare, demo."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the training commands to the top-level app."""
