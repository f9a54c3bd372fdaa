"""The product's commands, one module per area; ``cli.main`` imports a module when one of its commands runs."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from enum import StrEnum

import typer


def choices(name: str, values: Iterable[str]) -> type[StrEnum]:
    """An enum of ``values``, the way typer takes an argument's choices."""
    return StrEnum(name, {value: value for value in values})


def usage_error(exc: Exception) -> typer.BadParameter:
    """What argparse's ``parser.error`` was: the message on stderr, exit code 2."""
    return typer.BadParameter(str(exc))


def iso_time(text: str) -> datetime:
    """An ISO 8601 time, as ``datetime.fromisoformat`` reads it."""
    return datetime.fromisoformat(text)
