"""``adstream ad-manager``: applies campaign-instructions to the campaign store until SIGTERM or SIGINT."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from types import FrameType
from typing import Annotated

import typer

from adstream.messaging import BrokerUnavailable
from auction_service.campaign_store.ad_manager import is_alive, run
from cli.lazy import commands_app
from cli.resources import current

log = logging.getLogger("auction_service.campaign_store.ad_manager")

commands = commands_app()


@commands.command("ad-manager")
def ad_manager_command(
    ctx: typer.Context,
    check: Annotated[bool, typer.Option("--check", help="exit 0 if a running ad manager polled recently")] = False,
) -> None:
    """Apply campaign-instructions to the campaign store; SIGTERM or SIGINT finishes the current batch and exits."""
    settings = current(ctx).settings
    if check:  # the container health check
        raise typer.Exit(0 if is_alive(settings) else 1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop_event = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        log.info("%s: stopping after the current batch", signal.Signals(signum).name)
        stop_event.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        stats = run(settings, stop_event)
    except BrokerUnavailable as exc:
        print(f"ad manager failed: {exc}", file=sys.stderr)
        raise typer.Exit(1) from None
    print(f"ad manager stopped: {dict(stats.outcomes)}", flush=True)
