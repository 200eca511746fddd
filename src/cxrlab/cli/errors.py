"""Turn cxrlab's input errors into one red line and exit code 2 instead of a traceback."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import typer
from rich.console import Console

import importlib.util
import logging

from cxrlab.errors import ConfigError, CxrlabError

F = TypeVar("F", bound=Callable)
_err = Console(stderr=True)


def user_errors(func: F) -> F:
    """Decorator for CLI commands: a :class:`CxrlabError` prints ``error: ...`` and exits 2."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except CxrlabError as err:
            _err.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=2) from err

    return wrapper  # type: ignore[return-value]


def require_extra(extra: str, *modules: str) -> None:
    """Stop with one line when an optional extra of cxrlab is not installed.

    The core install is what train/evaluate/predict need; the service, the dashboard, Ray and
    the volume/DICOM-network/ONNX stacks are extras (``pip install 'cxrlab[serve]'``).

    Raises:
        ConfigError: A module of the extra cannot be found.
    """
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(f"cxrlab[{extra}]", f"{', '.join(missing)} not installed; "
                                              f"pip install 'cxrlab[{extra}]'")


def quiet_lightning() -> None:
    """Keep Lightning's start-up notices off the terminal (commands that train)."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)


def print_markdown(console: Console, markdown: str) -> None:
    """Print a Markdown table (a report's ``table.md``) on ``console``."""
    from rich.markdown import Markdown

    console.print(Markdown(markdown))
