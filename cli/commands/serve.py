"""``adstream serve``: the auction service under uvicorn, on BIND_HOST:AUCTION_PORT (AUCTION_REPLICAS processes)."""

from __future__ import annotations

import sys

import typer

from adstream.settings import child_process_env
from auction_service.api.app import create_app
from auction_service.fastpath.replicas import supervise
from auction_service.fastpath.server import run
from cli.lazy import commands_app
from cli.resources import current

commands = commands_app()


@commands.command("serve")
def serve_command(ctx: typer.Context) -> None:
    """The auction service under uvicorn, on BIND_HOST:AUCTION_PORT; AUCTION_REPLICAS > 1 runs that many
    processes on the port and starts again any that exits."""
    settings = current(ctx).settings
    if settings.auction_replicas > 1:
        health = f"http://{settings.bind_host}:{settings.auction_port}/healthz"
        command = [sys.executable, "-m", "cli", "serve"]
        # Replica i serves metrics on this port + i; the port may come from an env file, not the environment.
        env = child_process_env(AUCTION_METRICS_PORT=str(settings.auction_metrics_port))
        raise typer.Exit(supervise(command, settings.auction_replicas, env, health))
    run(create_app(settings), host=settings.bind_host, port=settings.auction_port, fast_path=settings.auction_fast_path)
