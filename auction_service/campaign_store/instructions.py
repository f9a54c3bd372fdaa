"""Campaign instructions: built from what a manager types, published to Kafka, never written to the store directly.

The ``adstream campaigns create|stop|seed`` commands and the HTTP endpoints build their
instructions here. Money on the command line is in currency units (USD) and becomes
integer micros through Decimal; the bid is per thousand impressions (CPM), per click
(CPC) or per conversion (CPA). Times are ISO 8601; a time without an offset is UTC.
Instructions are keyed by campaign_id and published with the idempotent producer; the
publisher returns once the broker acknowledged them, and the ad manager applies them.

Seeding draws N campaigns from the ad catalog ``silver/ads``. The same seed gives the
same campaigns and instruction ids, so seeding twice with it creates nothing new.
"""

from __future__ import annotations

import math
import random
import uuid
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation

from adstream.contracts import Table, Topic
from adstream.events import (
    MICROS_PER_UNIT,
    CampaignInstruction,
    CampaignSpec,
    Creative,
    InstructionAction,
    PacingMode,
    PricingModel,
    Targeting,
    VideoCreative,
)
from adstream.messaging import Acknowledged, JsonProducer, make_producer
from adstream.settings import Settings

MAX_DECIMALS = 6  # micros

# Seeding: what a realistic mix of campaigns looks like.
CENT_MICROS = MICROS_PER_UNIT // 100
PRICING_MIX = ((PricingModel.CPC, 6), (PricingModel.CPM, 3), (PricingModel.CPA, 1))
# Display-like prices at the simulated ~3.5 % CTR and 5 % conversion rate: a CPC or CPA bid is worth
# about the same $1-$15 per thousand impressions as a CPM bid, so the three pricing models compete.
BID_RANGE_CENTS = {PricingModel.CPM: (100, 800), PricingModel.CPC: (5, 40), PricingModel.CPA: (100, 800)}
TOTAL_BUDGET_RANGE_USD = (50, 500)
CAMPAIGNS_PER_ADVERTISER = (3, 5)
FREQUENCY_CAP_RANGE = (3, 20)
VIDEO_SHARE = 0.4  # of seeded campaigns that also have a video creative
VIDEO_SECONDS = (6, 15, 30)  # the usual in-stream lengths
FLIGHT_END_RANGE_DAYS = (7, 30)  # flights start within the last day and end 7 to 30 days ahead
# Country names, as silver/users and the auction context carry them (the Advertising data names countries).
TARGET_COUNTRIES = (
    "United States", "United Kingdom", "France", "Germany", "Ireland", "Portugal", "Norway", "India", "Colombia",
    "New Zealand", "Hungary", "Uruguay",
)  # fmt: skip
TARGET_DEVICES = ("mobile", "desktop", "tablet")


class CatalogMissing(RuntimeError):
    """The ad catalog silver/ads is not there (or empty), so campaigns cannot be seeded from it."""


# --- parsing what a manager types ---


def parse_money(text: str) -> int:
    """An amount in currency units ("0.40", "500") as integer micros; refuses negatives and sub-micro digits."""
    try:
        amount = Decimal(text.strip())
    except InvalidOperation:
        raise ValueError(f"{text!r} is not an amount (use digits and a dot, e.g. 0.40)") from None
    if not amount.is_finite():
        raise ValueError(f"{text!r} is not a finite amount")
    if amount < 0:
        raise ValueError(f"{text!r} is negative; amounts must be 0 or more")
    if amount.as_tuple().exponent < -MAX_DECIMALS:
        raise ValueError(f"{text!r} has more than {MAX_DECIMALS} decimals (the smallest unit is one micro, 0.000001)")
    return int(amount * MICROS_PER_UNIT)


def parse_time(text: str) -> datetime:
    """An ISO 8601 date or time; without an offset it is taken as UTC."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO 8601 time (e.g. 2026-06-30 or 2026-06-30T12:00:00Z)") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def parse_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


# --- instructions (pure; the HTTP endpoints build theirs with these too) ---


def new_campaign_id() -> str:
    return f"cmp-{uuid.uuid4().hex}"


def create_instruction(
    spec: CampaignSpec, *, now: datetime, campaign_id: str | None = None, instruction_id: str | None = None
) -> CampaignInstruction:
    """The instruction that creates ``spec`` (a new campaign id unless one is given)."""
    return CampaignInstruction(
        instruction_id=instruction_id or f"ins-{uuid.uuid4().hex}",
        action=InstructionAction.CREATE,
        campaign_id=campaign_id or new_campaign_id(),
        issued_at=now,
        campaign=spec,
    )


def stop_instruction(campaign_id: str, *, now: datetime, instruction_id: str | None = None) -> CampaignInstruction:
    """The instruction that stops ``campaign_id`` for good."""
    return CampaignInstruction(
        instruction_id=instruction_id or f"ins-{uuid.uuid4().hex}",
        action=InstructionAction.STOP,
        campaign_id=campaign_id,
        issued_at=now,
    )


SEED_INSTRUCTION_PREFIX = "seed-"  # a seeded campaign's create instruction: seed-<campaign id>


def seed_instructions(
    ads: list[dict],
    n: int,
    seed: int,
    now: datetime,
    *,
    asap_share: float = 0.0,
    daily_budget_micros: tuple[int, int] | None = None,
) -> list[CampaignInstruction]:
    """``n`` create instructions for realistic campaigns on ``ads`` (rows of silver/ads), the same for the same seed.

    Each advertiser runs 3 to 5 campaigns on ads of one category; pricing is mostly
    CPC, some CPM, a few CPA, with bids and budgets in the usual ranges for each.
    ``asap_share`` of them (every k-th, in seed order) pace ``asap``, the others ``even``;
    ``daily_budget_micros`` (low, high), when given, draws daily budgets from that range (in whole
    cents) instead, so that a simulation can be budget-constrained over its day whatever its traffic.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not 0 <= asap_share <= 1:
        raise ValueError(f"asap_share must be within [0, 1], got {asap_share}")
    if daily_budget_micros is not None and not CENT_MICROS <= daily_budget_micros[0] <= daily_budget_micros[1]:
        raise ValueError(f"daily_budget_micros must be (low, high), 1 cent <= low <= high, got {daily_budget_micros}")
    usable = {
        ad["ad_id"]: ad
        for ad in ads
        if ad.get("ad_id") and ad.get("category") and len(ad["ad_id"]) <= 64 and len(ad["category"]) <= 64
    }
    if not usable and n:
        raise CatalogMissing("the ad catalog has no ad with an ad_id and a category")
    # Sorted, so the catalog's file order does not change what a seed draws.
    catalog = [usable[ad_id] for ad_id in sorted(usable)]
    by_category: dict[str, list[dict]] = defaultdict(list)
    for ad in catalog:
        by_category[ad["category"]].append(ad)
    rng = random.Random(seed)
    budget_rng = random.Random(f"{seed}-daily-budgets")  # apart: sizing budgets changes no other draw
    creative_rng = random.Random(f"{seed}-creatives")  # likewise
    instructions: list[CampaignInstruction] = []
    while len(instructions) < n:
        advertiser_id = f"adv-{rng.getrandbits(40):010x}"
        category = rng.choice(catalog)["category"]  # categories weighted by their share of the catalog
        campaigns = min(rng.randint(*CAMPAIGNS_PER_ADVERTISER), n - len(instructions))
        for _ in range(campaigns):
            ad = rng.choice(by_category[category])
            campaign_id = f"cmp-{rng.getrandbits(64):016x}"
            # Spread evenly over the seed order: every (1 / asap_share)-th campaign paces asap.
            asap = math.floor((len(instructions) + 1) * asap_share) > math.floor(len(instructions) * asap_share)
            spec = _seed_spec(rng, advertiser_id, ad, now)
            update: dict = {
                "pacing_mode": PacingMode.ASAP if asap else PacingMode.EVEN,
                "creative": _seed_creative(creative_rng, advertiser_id, ad),
            }
            if daily_budget_micros is not None:
                low, high = (bound // CENT_MICROS for bound in daily_budget_micros)
                daily = budget_rng.randint(low, high) * CENT_MICROS
                update |= {"daily_budget_micros": daily, "total_budget_micros": max(daily, spec.total_budget_micros)}
            instructions.append(
                create_instruction(
                    spec.model_copy(update=update),
                    now=now,
                    campaign_id=campaign_id,
                    instruction_id=f"{SEED_INSTRUCTION_PREFIX}{campaign_id}",
                )
            )
    return instructions


def _seed_spec(rng: random.Random, advertiser_id: str, ad: dict, now: datetime) -> CampaignSpec:
    pricing_model = rng.choices([model for model, _ in PRICING_MIX], weights=[weight for _, weight in PRICING_MIX])[0]
    low, high = BID_RANGE_CENTS[pricing_model]
    total_usd = rng.randint(*TOTAL_BUDGET_RANGE_USD)
    daily_usd = rng.randint(max(1, total_usd // 10), total_usd // 2)
    shortest_days, longest_days = FLIGHT_END_RANGE_DAYS
    return CampaignSpec(
        advertiser_id=advertiser_id,
        ad_id=ad["ad_id"],
        category=ad["category"],
        targeting=_seed_targeting(rng),
        pricing_model=pricing_model,
        bid_micros=rng.randint(low, high) * (MICROS_PER_UNIT // 100),
        total_budget_micros=total_usd * MICROS_PER_UNIT,
        daily_budget_micros=daily_usd * MICROS_PER_UNIT,
        flight_start=now - timedelta(seconds=rng.randint(0, 24 * 3600)),
        flight_end=now + timedelta(seconds=rng.randint(shortest_days * 24 * 3600, longest_days * 24 * 3600)),
        frequency_cap_per_day=rng.randint(*FREQUENCY_CAP_RANGE),
    )


def _seed_creative(rng: random.Random, advertiser_id: str, ad: dict) -> Creative:
    """The advertiser's domain and landing page; a share of campaigns also run a video of a usual length."""
    domain = f"{advertiser_id}.example"
    video = None
    if rng.random() < VIDEO_SHARE:
        duration = rng.choice(VIDEO_SECONDS)
        video = VideoCreative(url=f"https://cdn.{domain}/{ad['ad_id']}-{duration}s.mp4", duration_s=duration)
    return Creative(adomain=domain, landing_url=f"https://www.{domain}/ads/{ad['ad_id']}", video=video)


def _seed_targeting(rng: random.Random) -> Targeting:
    countries = sorted(rng.sample(TARGET_COUNTRIES, rng.randint(1, 3))) if rng.random() < 0.3 else []
    age_min = age_max = None
    if rng.random() < 0.25:
        age_min = rng.choice((18, 25, 35, 45))
        age_max = age_min + rng.choice((10, 15, 20, 30))
    genders = [rng.choice(("F", "M"))] if rng.random() < 0.1 else []
    devices = sorted(rng.sample(TARGET_DEVICES, rng.randint(1, 2))) if rng.random() < 0.25 else []
    return Targeting(countries=countries, age_min=age_min, age_max=age_max, genders=genders, device_types=devices)


# --- I/O: the catalog, Kafka ---


def read_ad_catalog(settings: Settings) -> list[dict]:
    """The rows (ad_id, source, category, title) of silver/ads, read with delta-rs."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    uri, options = settings.delta_rs_location(Table.SILVER_ADS)
    try:
        table = DeltaTable(uri, storage_options=options or None)
    except TableNotFoundError:
        raise CatalogMissing(
            f"the ad catalog {Table.SILVER_ADS} does not exist at {uri}; build it with "
            "`adstream ingest all` then `adstream silver ads` (or check LAKE_ROOT)"
        ) from None
    return table.to_pyarrow_table(columns=["ad_id", "source", "category", "title"]).to_pylist()


def publish_instructions(
    settings: Settings,
    instructions: Sequence[CampaignInstruction],
    *,
    producer: JsonProducer | None = None,
    timeout_s: float = 30.0,
    topic: str = Topic.CAMPAIGN_INSTRUCTIONS,
) -> list[Acknowledged]:
    """Publish to campaign-instructions keyed by campaign_id; returns once the broker acknowledged every record.

    Pass a long-lived ``producer`` (the service does); otherwise one is made and closed here.
    Raises ``PublishFailed`` (``adstream.messaging``) when the broker does not acknowledge within ``timeout_s``.
    """
    owned = producer is None
    if producer is None:
        # Undelivered after timeout_s, a record is dropped rather than reaching the topic after the caller gave up.
        producer = make_producer(settings, message_timeout_ms=int(timeout_s * 1000))
    try:
        records = [(instruction.campaign_id, instruction.model_dump(mode="json")) for instruction in instructions]
        return producer.send_all(topic, records, timeout_s)
    finally:
        if owned:
            producer.close(timeout=timeout_s)
