"""Typer commands whose module is imported only when they run.

The modules behind `adstream`'s commands bring Spark, MLflow, scikit-learn, DuckDB or Great
Expectations with them, and a health check such as `adstream stream --check` must not pay for
them. So a command is listed by name, module and one-line help, and its module, which defines it
on its own ``commands`` Typer, is imported when the command runs or shows its help. The product's
commands (``cli.main``) and the tools' (their ``cli`` modules) are listed the same way.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Mapping
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup

# command -> (module whose ``commands`` Typer defines it, one-line help; None hides the command)
CommandIndex = Mapping[str, tuple[str, str | None]]


class LazyCommand(TyperCommand):
    """Stands for command ``name`` of ``module`` in a listing; parsing and running are the real command's."""

    def __init__(self, name: str, module: str, help: str | None) -> None:
        super().__init__(name, help=help, hidden=help is None, rich_markup_mode=None)
        self.module = module

    def load(self) -> TyperCommand | TyperGroup:
        command = typer.main.get_command(importlib.import_module(self.module).commands)
        # A module may define several commands (a group of them), or be the group itself (`campaigns`).
        if isinstance(command, TyperGroup) and self.name in command.commands:
            return command.commands[self.name]
        return command

    def make_context(self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any) -> Any:
        # The group invokes the command of the context made here: the real one.
        return self.load().make_context(info_name, args, parent=parent, **extra)


def add_lazy_commands(group: TyperGroup, index: CommandIndex) -> None:
    for name, (module, help) in index.items():
        group.add_command(LazyCommand(name, module, help))


def lazy_app(index: CommandIndex, **options: Any) -> typer.Typer:
    """A Typer of the commands in ``index``, each loaded when it runs (a group of them with ``name=...``),
    to be merged at the top level of `adstream` with ``add_typer(app)``."""

    class Commands(TyperGroup):
        def __init__(self, **attrs: Any) -> None:
            super().__init__(**attrs)
            add_lazy_commands(self, index)

    app = typer.Typer(rich_markup_mode=None, add_completion=False)
    # Typer makes a group of a Typer that holds another; merged without a name, its commands are this one's.
    app.add_typer(typer.Typer(cls=Commands, rich_markup_mode=None, add_completion=False, **options))
    return app


def fail(message: str) -> typer.Exit:
    """Prints ``message`` to stderr; returns the exit (code 1) the failing command raises."""
    print(message, file=sys.stderr)
    return typer.Exit(1)


def commands_app(**options: Any) -> typer.Typer:
    """The ``commands`` Typer a module defines its commands on (plain output, as the root's)."""
    return typer.Typer(rich_markup_mode=None, add_completion=False, pretty_exceptions_enable=False, **options)
