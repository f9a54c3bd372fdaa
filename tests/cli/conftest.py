"""Running `adstream` commands in-process, on a test's settings (the context object the commands read)."""

from __future__ import annotations

from collections.abc import Sequence

from typer.testing import CliRunner, Result

from adstream.settings import Settings
from cli.main import app
from cli.resources import Resources


def invoke(settings: Settings, args: Sequence[str]) -> Result:
    """``adstream ARGS`` on ``settings``; the result holds the exit code, stdout and stderr apart."""
    resources = Resources(settings)
    try:
        return CliRunner().invoke(app, list(args), obj=resources, prog_name="adstream")
    finally:
        resources.close()
