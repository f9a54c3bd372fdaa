"""``adstream campaigns create|stop|show|seed``: campaign instructions published to Kafka, or a campaign shown.

    adstream campaigns create --advertiser ADV --ad-id AD --category CAT \\
        --pricing-model CPC --bid 0.40 --budget 500 --daily-budget 100 --end 2026-06-30 \\
        [--start ISO] [--countries FR,DE] \\
        [--age-min 18] [--age-max 44] [--genders F] [--devices mobile,tablet] [--frequency-cap 5] [--campaign-id ID]
    adstream campaigns stop CAMPAIGN_ID
    adstream campaigns show CAMPAIGN_ID
    adstream campaigns seed N [--seed S]

Money is in currency units (USD), the bid per thousand impressions (CPM), per click (CPC)
or per conversion (CPA); times are ISO 8601, UTC without an offset. A command returns once
the broker acknowledged its instructions, and prints their campaign ids; the ad manager
applies them. ``seed`` without ``--seed`` draws a random seed and prints it.
"""

from __future__ import annotations

import random
import sys
from datetime import UTC, datetime
from typing import Annotated

import typer
from kafka.errors import KafkaError
from pydantic import ValidationError

from adstream.contracts import Topic
from adstream.events import CampaignInstruction, CampaignSpec, PricingModel
from adstream.messaging import BrokerUnavailable, ensure_topics
from adstream.settings import Settings
from auction_service.campaign_store import store
from auction_service.campaign_store.instructions import (
    CatalogMissing,
    create_instruction,
    parse_list,
    parse_money,
    parse_time,
    publish_instructions,
    read_ad_catalog,
    seed_instructions,
    stop_instruction,
)
from cli.lazy import commands_app
from cli.resources import current

commands = commands_app(name="campaigns", help=__doc__.splitlines()[0], no_args_is_help=True)


def _money(text: str) -> int:
    try:
        return parse_money(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def _time(text: str) -> datetime:
    try:
        return parse_time(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def _explain(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(part) for part in error['loc']) or 'campaign'}: {error['msg'].removeprefix('Value error, ')}"
        for error in exc.errors()
    )


def _publish(settings: Settings, command: str, instructions: list[CampaignInstruction]) -> None:
    """Publishes and prints each campaign id once Kafka acknowledged them all; exits 1 when it did not."""
    try:
        ensure_topics(settings, [Topic.CAMPAIGN_INSTRUCTIONS])
        publish_instructions(settings, instructions)
    except (BrokerUnavailable, KafkaError) as exc:
        print(f"{command} failed: the instructions were not acknowledged by Kafka: {exc}", file=sys.stderr)
        raise typer.Exit(1) from None
    for instruction in instructions:
        print(instruction.campaign_id)


@commands.command()
def create(
    ctx: typer.Context,
    advertiser: Annotated[str, typer.Option()],
    ad_id: Annotated[str, typer.Option(help="the creative: an ad_id of silver/ads")],
    category: Annotated[str, typer.Option()],
    pricing_model: Annotated[PricingModel, typer.Option(case_sensitive=False)],
    bid: Annotated[
        int, typer.Option(parser=_money, metavar="USD", help="USD per 1000 impressions, click or conversion")
    ],
    budget: Annotated[int, typer.Option(parser=_money, metavar="USD", help="total budget, USD")],
    daily_budget: Annotated[int, typer.Option(parser=_money, metavar="USD", help="daily budget, USD")],
    end: Annotated[datetime, typer.Option(parser=_time, metavar="ISO", help="flight end, ISO 8601")],
    start: Annotated[
        datetime | None, typer.Option(parser=_time, metavar="ISO", help="flight start, ISO 8601 (default: now)")
    ] = None,
    countries: Annotated[str, typer.Option(help="comma-separated, e.g. FR,DE")] = "",
    age_min: Annotated[int | None, typer.Option()] = None,
    age_max: Annotated[int | None, typer.Option()] = None,
    genders: Annotated[str, typer.Option(help="F, M or F,M")] = "",
    devices: Annotated[str, typer.Option(help="mobile, desktop, tablet, ctv")] = "",
    frequency_cap: Annotated[int, typer.Option(help="impressions per user per UTC day")] = 10,
    campaign_id: Annotated[str | None, typer.Option(help="default: a new id")] = None,
) -> None:
    """Create a campaign."""
    now = datetime.now(UTC)
    try:
        spec = CampaignSpec(
            advertiser_id=advertiser,
            ad_id=ad_id,
            category=category,
            targeting={  # a dict, so its errors are reported under "targeting"
                "countries": parse_list(countries),
                "age_min": age_min,
                "age_max": age_max,
                "genders": parse_list(genders),
                "device_types": parse_list(devices),
            },
            pricing_model=pricing_model,
            bid_micros=bid,
            total_budget_micros=budget,
            daily_budget_micros=daily_budget,
            flight_start=start or now,
            flight_end=end,
            frequency_cap_per_day=frequency_cap,
        )
    except ValidationError as exc:
        raise typer.BadParameter(f"create: {_explain(exc)}") from None
    _publish(current(ctx).settings, "create", [create_instruction(spec, now=now, campaign_id=campaign_id)])


@commands.command()
def stop(ctx: typer.Context, campaign_id: Annotated[str, typer.Argument()]) -> None:
    """Stop a campaign for good."""
    _publish(current(ctx).settings, "stop", [stop_instruction(campaign_id, now=datetime.now(UTC))])


@commands.command()
def show(ctx: typer.Context, campaign_id: Annotated[str, typer.Argument()]) -> None:
    """Print a campaign and its spend from the store."""
    resources = current(ctx)
    with resources.campaign_sessions() as session:
        view = store.get_campaign(session, campaign_id, now=datetime.now(UTC))
    if view is None:
        url = resources.campaign_engine.url
        print(f"unknown campaign {campaign_id!r} (not in the store at {url!r})", file=sys.stderr)
        raise typer.Exit(1)
    print(view.model_dump_json(indent=2))


@commands.command()
def seed(
    ctx: typer.Context,
    n: Annotated[int, typer.Argument(metavar="N")],
    seed: Annotated[int | None, typer.Option(help="default: a random seed, printed")] = None,
) -> None:
    """Create N realistic campaigns from the ad catalog silver/ads."""
    if n < 1:
        raise typer.BadParameter("seed: N must be at least 1")
    settings = current(ctx).settings
    seed = seed if seed is not None else random.SystemRandom().randrange(2**32)
    try:
        instructions = seed_instructions(read_ad_catalog(settings), n, seed, datetime.now(UTC))
    except CatalogMissing as exc:
        print(f"seed failed: {exc}", file=sys.stderr)
        raise typer.Exit(1) from None
    print(f"seed {seed}: {len(instructions)} campaigns", file=sys.stderr)
    _publish(settings, "seed", instructions)
