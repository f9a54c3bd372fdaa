"""`adstream optimize`: the campaign optimizer (optimizer.service)."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from cli.lazy import commands_app
from cli.resources import current
from optimizer import service

commands = commands_app()


@commands.command()
def optimize(
    ctx: typer.Context,
    once: Annotated[
        bool, typer.Option("--once", help="rebuild the windows from Kafka, decide once, apply, exit")
    ] = False,
    check: Annotated[bool, typer.Option("--check", help="exit 0 if a running optimizer ticked recently")] = False,
) -> None:
    """Re-bid optimized campaigns per platform every OPTIMIZER_TICK_S from live Kafka data."""
    settings = current(ctx).settings
    if check:
        raise typer.Exit(0 if service.is_alive(settings) else 1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    optimizer = service.run(settings, once=once)
    typer.echo(f"{optimizer.ticks} ticks, {len(optimizer.sent)} campaigns decided")
