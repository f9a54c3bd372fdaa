"""``adstream campaigns create|stop|show|seed``: campaign instructions published to Kafka, or a campaign shown.

    adstream campaigns create --advertiser ADV --ad-id AD --category CAT \\
        --pricing-model CPC --bid 0.40 --budget 500 --daily-budget 100 --end 2026-06-30 \\
        [--start ISO] [--countries FR,DE] \\
        [--age-min 18] [--age-max 44] [--genders F] [--devices mobile,tablet] [--frequency-cap 5]
        [--audience-split EXPERIMENT:ARM/ARMS] [--campaign-id ID]
    adstream campaigns stop CAMPAIGN_ID
    adstream campaigns show CAMPAIGN_ID
    adstream campaigns seed N [--seed S]

Money is in currency units (USD), the bid per thousand impressions (CPM), per click (CPC)
or per conversion (CPA); times are ISO 8601, UTC without an offset. A command returns once
the broker acknowledged its instructions, and prints their campaign ids; the ad manager
applies them. ``seed`` without ``--seed`` draws a random seed and prints it.
"""

from __future__ import annotations

import json
import random
import sys
from datetime import UTC, datetime
from typing import Annotated

import redis
import typer
from pydantic import ValidationError
from redis.exceptions import RedisError

from adstream.contracts import Topic
from adstream.days import DayClock
from adstream.events import CampaignInstruction, CampaignSpec, PacingMode, PricingModel
from adstream.messaging import BrokerUnavailable, PublishFailed, ensure_topics
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
from auction_service.serving.pacer import Pacer, plan_budget
from auction_service.serving.pacing import PacingController
from cli.lazy import commands_app
from cli.resources import Resources, current

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
    except (BrokerUnavailable, PublishFailed) as exc:
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
    pacing: Annotated[
        PacingMode, typer.Option(help="even: spread the daily budget along the day's traffic; asap: spend at once")
    ] = PacingMode.EVEN,
    optimize: Annotated[
        bool, typer.Option(help="let the optimizer set a bid multiplier per platform (needs a value to optimize for)")
    ] = False,
    conversion_value: Annotated[
        int | None, typer.Option(parser=_money, metavar="USD", help="what a conversion is worth to the advertiser")
    ] = None,
    target_cpa: Annotated[
        int | None, typer.Option(parser=_money, metavar="USD", help="the cost per conversion aimed at (or a value)")
    ] = None,
    max_bid: Annotated[
        int | None, typer.Option(parser=_money, metavar="USD", help="the optimizer's bids stay under it")
    ] = None,
    platform_bid_limit: Annotated[
        list[str] | None,
        typer.Option(metavar="PLATFORM=USD", help="a platform's bid limit, e.g. app/ctv=0.80 (repeatable)"),
    ] = None,
    audience_split: Annotated[
        str | None,
        typer.Option(metavar="EXPERIMENT:ARM/ARMS", help="serve one arm of an experiment's users, e.g. spring-ab:0/2"),
    ] = None,
    campaign_id: Annotated[str | None, typer.Option(help="default: a new id")] = None,
) -> None:
    """Create a campaign."""
    now = datetime.now(UTC)
    split = None
    if audience_split:
        experiment, _, arms = audience_split.rpartition(":")
        arm, _, of = arms.partition("/")
        if not (experiment and arm.isdigit() and of.isdigit()):
            raise typer.BadParameter(
                f"--audience-split: expected EXPERIMENT:ARM/ARMS, e.g. spring-ab:0/2, got {audience_split!r}"
            )
        split = {"experiment": experiment, "arm": int(arm), "arms": int(of)}
    limits = {}
    for item in platform_bid_limit or []:
        platform, _, usd = item.partition("=")
        limits[platform.strip()] = _money(usd)
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
                "audience_split": split,
            },
            pricing_model=pricing_model,
            bid_micros=bid,
            total_budget_micros=budget,
            daily_budget_micros=daily_budget,
            flight_start=start or now,
            flight_end=end,
            frequency_cap_per_day=frequency_cap,
            pacing_mode=pacing,
            goals={  # a dict, so its errors are reported under "goals"
                "optimize": optimize,
                "conversion_value_micros": conversion_value,
                "target_cpa_micros": target_cpa,
                "max_bid_micros": max_bid,
                "platform_bid_limits_micros": limits,
            },
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
        now = datetime.now(UTC)
        view = store.get_campaign(session, campaign_id, now=now, days=DayClock.of(resources.settings))
    if view is None:
        url = resources.campaign_engine.url
        print(f"unknown campaign {campaign_id!r} (not in the store at {url!r})", file=sys.stderr)
        raise typer.Exit(1)
    shown = view.model_dump(mode="json") | {"pacing": pacing_line(resources, campaign_id, now)}
    print(json.dumps(shown, indent=2))


def pacing_line(resources: Resources, campaign_id: str, now: datetime) -> str:
    """The campaign's pacing as the fleet's controllers left it in the shared store, in one line."""
    settings = resources.settings
    client = redis.Redis.from_url(settings.shared_store_url, socket_timeout=2.0, socket_connect_timeout=2.0)
    pacer = Pacer(client, settings.shared_store_namespace,
                  PacingController.of(DayClock.of(settings)), settings.pacing_update_s)  # fmt: skip
    with resources.campaign_sessions() as session:
        serving = store.serving_campaigns(session, now, [campaign_id], days=DayClock.of(settings))
    if not serving:
        return "not serving (stopped or out of its flight)"
    try:
        report = pacer.report(serving[0], now)
    except RedisError as exc:
        return f"unknown: the shared store at {settings.shared_store_url} did not answer ({type(exc).__name__})"
    finally:
        client.close()
    exhausts = "not today" if report.exhausts_at is None else report.exhausts_at.isoformat(timespec="seconds")
    return (
        f"{report.mode}, spent today {report.spent_micros / 1e6:,.2f} of plan {report.plan_micros / 1e6:,.2f} "
        f"(daily {plan_budget(serving[0]) / 1e6:,.2f}) USD, multiplier {report.pacing_multiplier:.3f}, "
        f"throttle {report.throttle_rate:.1%}, exhausts {exhausts}"
    )


@commands.command()
def seed(
    ctx: typer.Context,
    n: Annotated[int, typer.Argument(metavar="N")],
    seed: Annotated[int | None, typer.Option(help="default: a random seed, printed")] = None,
    asap_share: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="share of the campaigns that pace asap (the others: even)")
    ] = 0.0,
    daily_budget_usd: Annotated[
        str | None, typer.Option(metavar="LOW-HIGH", help="draw daily budgets from this range of USD, e.g. 0.50-2")
    ] = None,
) -> None:
    """Create N realistic campaigns from the ad catalog silver/ads."""
    if n < 1:
        raise typer.BadParameter("seed: N must be at least 1")
    budgets = None
    if daily_budget_usd is not None:
        low, _, high = daily_budget_usd.partition("-")
        try:
            budgets = (_money(low), _money(high))
        except (typer.BadParameter, ValueError):
            budgets = None
        if budgets is None or not 10_000 <= budgets[0] <= budgets[1]:
            raise typer.BadParameter(
                f"--daily-budget-usd: LOW-HIGH in USD, at least a cent, e.g. 0.50-2; not {daily_budget_usd!r}"
            )
    settings = current(ctx).settings
    seed = seed if seed is not None else random.SystemRandom().randrange(2**32)
    try:
        instructions = seed_instructions(
            read_ad_catalog(settings), n, seed, datetime.now(UTC), asap_share=asap_share, daily_budget_micros=budgets
        )
    except CatalogMissing as exc:
        print(f"seed failed: {exc}", file=sys.stderr)
        raise typer.Exit(1) from None
    print(f"seed {seed}: {len(instructions)} campaigns", file=sys.stderr)
    _publish(settings, "seed", instructions)
