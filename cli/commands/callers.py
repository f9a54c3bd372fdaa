"""``adstream callers add|list|revoke``: the API keys of the auction endpoints' callers, in the campaign store.

    adstream callers add --caller pub-news --kind publisher --max-floor-cpm 20 [--first-price]
    adstream callers list [--in-force]
    adstream callers revoke KEY_ID

``add`` prints the new key, ``<key_id>.<secret>``, alone on stdout, once: only its SHA-256
is stored, so it cannot be shown again (make a new key and revoke the old one instead). The
caller sends it in the ``X-Api-Key`` header. ``--max-floor-cpm`` (USD per thousand
impressions) caps the floor its requests may set; ``--first-price`` lets it ask for OpenRTB
first-price auctions (``at=1``). The auction service sees a new or revoked key within 5 s.
"""

from __future__ import annotations

import sys
from datetime import datetime
from decimal import Decimal
from typing import Annotated

import typer

from adstream.events import MICROS_PER_UNIT
from auction_service.campaign_store import callers
from auction_service.campaign_store.callers import CallerKind, RevokeOutcome
from auction_service.campaign_store.instructions import parse_money
from cli.lazy import commands_app
from cli.resources import current

commands = commands_app(name="callers", help=__doc__.splitlines()[0], no_args_is_help=True)


def _money(text: str) -> int:
    try:
        return parse_money(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def _usd(micros: int) -> str:
    return f"{Decimal(micros) / MICROS_PER_UNIT:f}"


def _time(moment: datetime | None) -> str:
    return "-" if moment is None else moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@commands.command()
def add(
    ctx: typer.Context,
    caller: Annotated[str, typer.Option(help="the publisher or exchange id; auctions record it as publisher_id")],
    kind: Annotated[CallerKind, typer.Option(case_sensitive=False)],
    max_floor_cpm: Annotated[
        int, typer.Option(parser=_money, metavar="USD", help="the highest floor its requests may set, USD CPM")
    ],
    first_price: Annotated[bool, typer.Option(help="may ask for first-price auctions (OpenRTB at=1)")] = False,
) -> None:
    """Make an API key for a caller; prints the key once."""
    with current(ctx).campaign_sessions() as session:
        try:
            issued = callers.create_key(
                session,
                caller_id=caller,
                kind=kind,
                max_floor_cpm_micros=max_floor_cpm,
                first_price_allowed=first_price,
            )
        except ValueError as exc:
            raise typer.BadParameter(f"add: {exc}") from None
    print(issued.api_key)
    print(
        f"key {issued.key_id} for {issued.kind} {issued.caller_id}: floors capped at USD {_usd(max_floor_cpm)} CPM, "
        f"first price {'allowed' if first_price else 'refused'}. The key above is shown once: store it now.",
        file=sys.stderr,
    )


COLUMNS = ("key_id", "caller", "kind", "max_floor_cpm", "first_price", "created_at", "revoked_at")


@commands.command("list")
def list_command(
    ctx: typer.Context,
    in_force: Annotated[bool, typer.Option("--in-force", help="leave out revoked keys")] = False,
) -> None:
    """List the keys (never their secrets), by caller."""
    with current(ctx).campaign_sessions() as session:
        keys = callers.list_keys(session, include_revoked=not in_force)
    rows = [COLUMNS] + [
        (
            key.key_id,
            key.caller_id,
            str(key.kind),
            _usd(key.max_floor_cpm_micros),
            "yes" if key.first_price_allowed else "no",
            _time(key.created_at),
            _time(key.revoked_at),
        )
        for key in keys
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(len(COLUMNS))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


@commands.command()
def revoke(ctx: typer.Context, key_id: Annotated[str, typer.Argument()]) -> None:
    """Revoke a key for good; the auction service refuses it within 5 s."""
    with current(ctx).campaign_sessions() as session:
        outcome = callers.revoke_key(session, key_id)
    if outcome is RevokeOutcome.UNKNOWN_KEY:
        url = current(ctx).campaign_engine.url
        print(f"unknown key {key_id!r} (not in the store at {url!r})", file=sys.stderr)
        raise typer.Exit(1)
    print(f"{key_id}: {outcome}")
