"""Turn cxrlab's input errors into one red line and exit code 2 instead of a traceback."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import typer
from rich.console import Console

from cxrlab.errors import CxrlabError

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
