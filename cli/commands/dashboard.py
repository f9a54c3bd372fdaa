"""`adstream dashboard`: the live dashboard (dashboard.app) on BIND_HOST:DASHBOARD_PORT."""

from __future__ import annotations

import typer
import uvicorn

from cli.lazy import commands_app
from cli.resources import current
from dashboard.app import create_app

commands = commands_app()


@commands.command()
def dashboard(ctx: typer.Context) -> None:
    """Serve the live dashboard: campaigns, KPIs per minute, serving, quality and finance, read-only."""
    settings = current(ctx).settings
    uvicorn.run(create_app(settings), host=settings.bind_host, port=settings.dashboard_port, log_level="warning")
