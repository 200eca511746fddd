"""Sub-commands imported only when they run, so light commands start light.

Importing every command module up front costs torch, scipy, Lightning and timm (about
3 s and 800 MiB) before ``cxrlab --help`` or ``cxrlab data stats`` does any work. A
:func:`lazy_group` names each sub-command with the module that defines it and a
one-line help; the module is imported when the command (or its own ``--help``) runs.
``--help`` of the group itself lists the one-line helps without importing anything.

Adding a command is one line in the group's table::

    "mrnet": Lazy("cxrlab.cli.mrnet", "app", "Knee MRI (MRNet): data, training, evaluation."),

``attr`` names either a ``typer.Typer`` (mounted as a sub-group), a ``register(app)``
function that adds the command ``name`` to a Typer app, or a zero-argument factory
returning a ``typer.Typer``.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import click
import typer
from typer.core import TyperCommand, TyperGroup


@dataclass(frozen=True)
class Lazy:
    """Where sub-command ``name`` lives: ``module.attr`` and its one-line help."""

    module: str
    attr: str
    help: str
    kind: str = "app"  # "app", "register" or "factory"

    def load(self, name: str) -> click.Command:
        """Import the module and return the click command for ``name``."""
        target = getattr(importlib.import_module(self.module), self.attr)
        if self.kind == "factory":
            target = target()
        if self.kind == "register":
            holder = typer.Typer()
            target(holder)
            group = typer.main.get_group(holder)
            command = group.commands.get(name)
            if command is None:
                raise LookupError(f"{self.module}.{self.attr} did not add a command {name!r}")
            return command
        if not isinstance(target, typer.Typer):
            raise TypeError(f"{self.module}.{self.attr} is not a typer.Typer")
        command = typer.main.get_group(target)  # a group even with one command (add_typer)
        command.name = name
        return command


class LazyGroup(TyperGroup):
    """A Typer group whose ``lazy`` commands are imported on first use."""

    lazy: Mapping[str, Lazy] = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._listing = False

    def list_commands(self, ctx: click.Context) -> list[str]:
        eager = [name for name in self.commands if name not in self.lazy]
        return eager + [name for name in self.lazy if name not in eager]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands:
            return self.commands[cmd_name]
        entry = self.lazy.get(cmd_name)
        if entry is None:
            return None
        if self._listing:  # the group's --help: a stand-in with the help line
            return TyperCommand(cmd_name, help=entry.help, short_help=entry.help)
        command = entry.load(cmd_name)
        self.commands[cmd_name] = command
        return command

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        self._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False


def lazy_group(commands: Mapping[str, Lazy]) -> type[LazyGroup]:
    """A :class:`LazyGroup` class over ``commands``, for ``typer.Typer(cls=...)``."""
    return type("LazyGroup", (LazyGroup,), {"lazy": dict(commands)})
