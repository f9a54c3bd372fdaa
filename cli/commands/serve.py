"""``adstream serve``: the auction service under uvicorn, on BIND_HOST:AUCTION_PORT."""

from __future__ import annotations

import typer

from auction_service.api.app import create_app
from auction_service.fastpath.server import run
from cli.lazy import commands_app
from cli.resources import current

commands = commands_app()


@commands.command("serve")
def serve_command(ctx: typer.Context) -> None:
    """The auction service under uvicorn, on BIND_HOST:AUCTION_PORT."""
    settings = current(ctx).settings
    run(create_app(settings), host=settings.bind_host, port=settings.auction_port, fast_path=settings.auction_fast_path)
