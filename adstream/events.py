"""The versioned record schemas of the Kafka topics ``ad-feedback`` and ``auctions``, kept in one place.

The auction service validates and publishes with these models; the streaming job
parses with the Spark schema derived from the same models (``spark_ddl``), and
the feature and billing jobs read the silver tables that carry these columns.
Money is integer micros (1 USD = 1,000,000), never a float.

A change that old readers cannot parse is a new ``SCHEMA_VERSION``; adding an
optional field is not.
"""

from __future__ import annotations

import hashlib
import types
import typing
from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

SCHEMA_VERSION = 1
MICROS_PER_UNIT = 1_000_000
# Far above any real campaign and far below the store's 64-bit integers: a bid or budget past them is a
# typo or an attack, refused wherever an instruction is read (CLI, API, the ad manager's topic).
MAX_BID_MICROS = 1_000 * MICROS_PER_UNIT
MAX_BUDGET_MICROS = 100_000_000 * MICROS_PER_UNIT


class EventType(StrEnum):
    IMPRESSION = "impression"
    CLICK = "click"
    CONVERSION = "conversion"
    VIDEO_START = "video_start"
    VIDEO_COMPLETE = "video_complete"
    WIN = "win"  # an exchange's win notice (OpenRTB nurl): never billed, it carries the exchange's price


class PricingModel(StrEnum):
    CPM = "CPM"  # billed per impression (the bid is per thousand)
    CPC = "CPC"  # billed per click
    CPA = "CPA"  # billed per conversion


# The one event type each pricing model pays for.
BILLABLE_EVENT: dict[PricingModel, EventType] = {
    PricingModel.CPM: EventType.IMPRESSION,
    PricingModel.CPC: EventType.CLICK,
    PricingModel.CPA: EventType.CONVERSION,
}


class ChargeStatus(StrEnum):
    """What the ledger did with an event; only ``charged`` carries a cost."""

    CHARGED = "charged"
    NOT_BILLABLE = "not_billable"  # not the type its pricing model pays for (a CPC campaign's impression)
    DUPLICATE_AUCTION = "duplicate_auction"  # the auction's billable event was charged under another event_id
    OVER_BUDGET = "over_budget"  # charging it would take spend past the total or the day's budget
    OUT_OF_ORDER = "out_of_order"  # a click with no impression before it, a conversion with no click
    INVALID_TRAFFIC = "invalid_traffic"  # tagged GIVT by the service: never charged
    UNKNOWN_CAMPAIGN = "unknown_campaign"


# Events the ledger refused as no delivery of their own: out of order, for an unknown campaign, the
# auction's billable event again under another id (a second pixel of one impression), and GIVT (tagged
# too). An event refused as over budget, or not the billable type, was still delivered.
NOT_DELIVERED: tuple[str, ...] = tuple(
    status.value
    for status in (ChargeStatus.OUT_OF_ORDER, ChargeStatus.UNKNOWN_CAMPAIGN, ChargeStatus.DUPLICATE_AUCTION,
                   ChargeStatus.INVALID_TRAFFIC)
)  # fmt: skip


class IvtCategory(StrEnum):
    """The IAB/MRC split of invalid traffic."""

    GIVT = "givt"  # general: known bots, non-browser agents, data-center IPs, duplicate or too-fast clicks
    SIVT = "sivt"  # sophisticated: here, per-user and per-IP click-rate outliers found by the stream


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=True)


class FeedbackEvent(_Record):
    """One record of ``ad-feedback`` (key: auction_id), as the auction service publishes it.

    The service fills the auction's fields (campaign, ad, pricing, pctr, cost) from
    its own auction log, so a client cannot set what it is charged.
    """

    schema_version: Literal[1] = SCHEMA_VERSION
    event_id: str = Field(min_length=1, max_length=64)
    event_type: EventType
    event_time: AwareDatetime
    auction_id: str = Field(min_length=1, max_length=64)
    campaign_id: str
    advertiser_id: str
    ad_id: str
    user_id: str | None = None
    device_type: str | None = None
    channel: str | None = None  # "web" or "app"
    content_type: str | None = None  # "display" or "video"
    pricing_model: PricingModel
    cost_micros: int = Field(ge=0)  # what this event is billed; 0 unless it is the billable type
    currency: str = "USD"
    pctr: float | None = Field(default=None, ge=0, le=1)
    model_version: str | None = None
    # Added fields (optional, so records of earlier services still parse). event_time above is the
    # one the ledger stored when it first saw the event_id: a retry, even hours later, keeps it.
    charge_status: ChargeStatus | None = None
    publisher_id: str | None = Field(default=None, max_length=64)  # the auction's caller (its API key's owner)
    recorded_at: AwareDatetime | None = None  # when the ledger stored it
    ivt_category: IvtCategory | None = None  # None: valid traffic as far as the service could tell
    ivt_reason: str | None = Field(default=None, max_length=128)
    user_agent: str | None = Field(default=None, max_length=512)
    ip: str | None = Field(default=None, max_length=45)
    raw_pctr: float | None = Field(default=None, ge=0, le=1)  # the model's score before calibration
    exchange_price_cpm_micros: int | None = Field(default=None, ge=0)  # a win notice's clearing price (media cost)


class RefusedEvent(_Record):
    """One record of ``refused-events``: an event the service refused (unsigned, tampered, expired,
    unknown auction ...), never charged, landed by the stream in ``quarantine/events``."""

    schema_version: Literal[1] = SCHEMA_VERSION
    event_id: str | None = Field(default=None, max_length=64)
    event_type: str | None = Field(default=None, max_length=32)
    auction_id: str | None = Field(default=None, max_length=64)
    reason: str = Field(max_length=64)  # a short code, e.g. "signature_invalid"
    detail: str = Field(max_length=512)  # the message the caller got
    refused_at: AwareDatetime
    user_agent: str | None = Field(default=None, max_length=512)
    ip: str | None = Field(default=None, max_length=45)


class AuctionRecord(_Record):
    """One record of ``auctions`` (key: auction_id): the request context, the outcome and its price."""

    schema_version: Literal[1] = SCHEMA_VERSION
    auction_id: str = Field(min_length=1, max_length=64)
    event_time: AwareDatetime
    user_id: str | None = None
    country: str | None = None
    age: int | None = None
    gender: str | None = None
    device_type: str | None = None
    channel: str | None = None
    content_type: str | None = None
    floor_micros: int = Field(ge=0)
    candidate_count: int = Field(ge=0)
    filled: bool
    campaign_id: str | None = None  # the winner's, when filled
    advertiser_id: str | None = None
    ad_id: str | None = None
    ad_category: str | None = None
    pricing_model: PricingModel | None = None
    bid_micros: int | None = None  # in the winner's billing unit (CPM: per thousand impressions)
    clearing_price_micros: int | None = None  # same unit; never above the bid
    pctr: float | None = None
    ecpm_micros: int | None = None
    runner_up_ecpm_micros: int | None = None
    model_version: str | None = None
    latency_ms: float = Field(ge=0)
    publisher_id: str | None = Field(default=None, max_length=64)
    currency: str = "USD"
    raw_pctr: float | None = None  # the winner's model score before calibration (pctr is the calibrated one)
    # OpenRTB requests: what the bid-request filter reads, and what it decided.
    request_id: str | None = Field(default=None, max_length=64)  # the BidRequest's id (one per imp auctioned)
    imp_id: str | None = Field(default=None, max_length=64)
    domain: str | None = Field(default=None, max_length=253)  # site.domain, else app.bundle / app.domain
    placement: str | None = Field(default=None, max_length=32)  # "300x250", "16:9" (flexible), "video", "banner"
    deal_id: str | None = Field(default=None, max_length=64)  # the winner's deal, when it bid through one
    clearing_price_cpm_micros: int | None = None  # the clearing price per thousand impressions
    bid_filter_score: float | None = None  # None: no filter served
    bid_filter_explored: bool | None = None  # passed as exploration, whatever its score


_SPARK_TYPES: dict[type, str] = {
    str: "string",
    int: "bigint",
    float: "double",
    bool: "boolean",
    datetime: "timestamp",
    AwareDatetime: "timestamp",
}


def _spark_type(annotation: object) -> str:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        (inner,) = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return _spark_type(inner)
    if typing.get_origin(annotation) is Literal:
        return _spark_type(type(typing.get_args(annotation)[0]))
    if typing.get_origin(annotation) is typing.Annotated:
        return _spark_type(typing.get_args(annotation)[0])
    if isinstance(annotation, type) and issubclass(annotation, StrEnum):
        return "string"  # an enum travels as its value
    if typing.get_origin(annotation) is list:
        return f"array<{_spark_type(typing.get_args(annotation)[0])}>"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"struct<{', '.join(_spark_fields(annotation))}>"
    return _SPARK_TYPES[annotation]  # type: ignore[index]


def _spark_fields(model: type[BaseModel]) -> list[str]:
    hints = typing.get_type_hints(model, include_extras=True)
    return [f"{name}: {_spark_type(hints[name])}" for name in model.model_fields]


def spark_ddl(model: type[BaseModel]) -> str:
    """The Spark DDL schema of ``model``'s JSON, field for field (for ``from_json`` and table schemas)."""
    hints = typing.get_type_hints(model, include_extras=True)
    return ", ".join(f"{name} {_spark_type(hints[name])}" for name in model.model_fields)


class CampaignStatus(StrEnum):
    ACTIVE = "active"
    PAUSED = "paused"
    STOPPED = "stopped"  # final: a stopped campaign never serves again


class AudienceSplit(_Record):
    """One arm of a split-audience experiment: the campaign serves only the users whose id hashes, salted with
    the experiment's name, to ``arm`` of ``arms`` (``arm_of``). Campaigns on different arms of one experiment
    never meet the same user, so they neither compete in one auction nor set each other's prices: an A/B
    test between them. A request without a user id is in no arm."""

    experiment: str = Field(min_length=1, max_length=64)
    arm: int = Field(ge=0, le=15)
    arms: int = Field(default=2, ge=2, le=16)

    @model_validator(mode="after")
    def _arm_in_range(self) -> AudienceSplit:
        if self.arm >= self.arms:
            raise ValueError(f"arm {self.arm} is not one of the experiment's {self.arms} arms (0 to {self.arms - 1})")
        return self


def audience_arm(experiment: str, arms: int, user_id: str | None) -> int | None:
    """The arm of ``arms`` a user is in for ``experiment``: a stable hash, independent between experiments."""
    if not user_id:
        return None
    digest = hashlib.blake2b(f"{experiment}\x00{user_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % arms


class Targeting(_Record):
    """Who a campaign may be shown to; an empty list or a missing bound means "any"."""

    countries: list[str] = Field(default_factory=list, max_length=250)
    age_min: int | None = Field(default=None, ge=13, le=120)
    age_max: int | None = Field(default=None, ge=13, le=120)
    genders: list[Literal["F", "M"]] = Field(default_factory=list)
    device_types: list[Literal["mobile", "desktop", "tablet", "ctv"]] = Field(default_factory=list)
    audience_split: AudienceSplit | None = None

    @model_validator(mode="after")
    def _age_range(self) -> Targeting:
        if self.age_min is not None and self.age_max is not None and self.age_min > self.age_max:
            raise ValueError(f"age_min {self.age_min} is above age_max {self.age_max}")
        return self


class PacingMode(StrEnum):
    """How a campaign spends its daily budget over the day (auction_service.serving.pacing)."""

    EVEN = "even"  # along the day's traffic curve
    ASAP = "asap"  # as fast as the market allows, until the daily budget stops it


# The inventory segments the optimizer tells apart: channel x device type ("web/mobile", ...).
CHANNELS = ("web", "app")
DEVICE_TYPES = ("mobile", "desktop", "tablet", "ctv")
PLATFORMS = tuple(f"{channel}/{device}" for channel in CHANNELS for device in DEVICE_TYPES)
Platform = Literal[
    "web/mobile", "web/desktop", "web/tablet", "web/ctv", "app/mobile", "app/desktop", "app/tablet", "app/ctv"
]


class CampaignGoals(_Record):
    """What the campaign optimizer works toward (``optimizer``), and the bounds it bids within.

    With ``optimize`` on, the optimizer sets a bid multiplier per platform from the campaign's
    value: the conversion value, or the target CPA when that is what the advertiser states (one of
    the two is required). The multiplier stays within 0-2x; ``max_bid_micros`` and a platform's
    limit in ``platform_bid_limits_micros`` cap the bid it gives (in the bid's unit)."""

    optimize: bool = False
    conversion_value_micros: int | None = Field(default=None, gt=0, le=MAX_BID_MICROS)
    target_cpa_micros: int | None = Field(default=None, gt=0, le=MAX_BID_MICROS)
    max_bid_micros: int | None = Field(default=None, gt=0, le=MAX_BID_MICROS)
    platform_bid_limits_micros: dict[Platform, int] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _a_value_to_optimize_for(self) -> CampaignGoals:
        if self.conversion_value_micros is not None and self.target_cpa_micros is not None:
            raise ValueError("state a conversion value or a target CPA, not both")
        if self.optimize and self.conversion_value_micros is None and self.target_cpa_micros is None:
            raise ValueError("optimize needs a conversion value or a target CPA to optimize for")
        if any(not 0 < limit <= MAX_BID_MICROS for limit in self.platform_bid_limits_micros.values()):
            raise ValueError(f"a platform's bid limit must be in (0, {MAX_BID_MICROS}] micros")
        return self

    @property
    def value_micros(self) -> int:
        """What a conversion is worth to the advertiser: its value, else its target CPA; 0 when neither."""
        return self.conversion_value_micros or self.target_cpa_micros or 0


class BannerSize(_Record):
    w: int = Field(ge=1, le=10_000)
    h: int = Field(ge=1, le=10_000)


# The IAB fixed display sizes our HTML creative renders (an image scaled into the slot, the title under it).
STANDARD_BANNER_SIZES: tuple[tuple[int, int], ...] = (
    (300, 250), (336, 280), (728, 90), (970, 250), (970, 90), (468, 60), (320, 50), (320, 100), (300, 50),
    (160, 600), (120, 600), (300, 600), (250, 250), (200, 200),
)  # fmt: skip
_DOMAIN = r"^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$"
_HTTP_URL = r"^https?://[^\s\x00-\x1f<>\"]+$"


class VideoCreative(_Record):
    """A linear video ad: a media file an exchange's player fetches (VAST ``MediaFile``)."""

    url: str = Field(min_length=10, max_length=2048, pattern=_HTTP_URL)
    mime: str = Field(default="video/mp4", max_length=64, pattern=r"^(video|application)/[A-Za-z0-9.+-]+$")
    duration_s: int = Field(ge=1, le=600)
    width: int = Field(default=1280, ge=1, le=10_000)
    height: int = Field(default=720, ge=1, le=10_000)
    bitrate_kbps: int | None = Field(default=None, ge=1, le=100_000)


class Creative(_Record):
    """What an exchange renders and checks: the advertiser's domain (OpenRTB ``adomain``), the landing page
    the click-through leads to, the banner sizes the ad is made for, and an optional video. The title and
    image come from the ad (``ad_id``) in silver/ads."""

    adomain: str | None = Field(default=None, min_length=4, max_length=253, pattern=_DOMAIN)
    landing_url: str | None = Field(default=None, max_length=2048, pattern=_HTTP_URL)
    banner_sizes: list[BannerSize] = Field(
        default_factory=lambda: [BannerSize(w=w, h=h) for w, h in STANDARD_BANNER_SIZES], max_length=50
    )
    video: VideoCreative | None = None


class Deal(_Record):
    """A private-marketplace deal the campaign buys through: its id at the exchange, its floor (USD micros per
    thousand impressions), and the buyer seats it allows (empty: any)."""

    deal_id: str = Field(min_length=1, max_length=64)
    floor_cpm_micros: int = Field(default=0, ge=0, le=MAX_BID_MICROS)
    seats: list[str] = Field(default_factory=list, max_length=100)


class CampaignSpec(_Record):
    """A campaign as its manager states it. Budgets and bids in integer micros of ``currency``;
    the bid is per thousand impressions (CPM), per click (CPC) or per conversion (CPA)."""

    advertiser_id: str = Field(min_length=1, max_length=64)
    ad_id: str = Field(min_length=1, max_length=64)  # the creative, an ad of silver/ads
    category: str = Field(min_length=1, max_length=64)
    targeting: Targeting = Field(default_factory=Targeting)
    pricing_model: PricingModel
    bid_micros: int = Field(gt=0, le=MAX_BID_MICROS)
    total_budget_micros: int = Field(gt=0, le=MAX_BUDGET_MICROS)
    daily_budget_micros: int = Field(gt=0, le=MAX_BUDGET_MICROS)
    flight_start: AwareDatetime
    flight_end: AwareDatetime
    frequency_cap_per_day: int = Field(default=10, ge=1, le=1000)  # impressions per user per UTC day
    currency: Literal["USD"] = "USD"
    pacing_mode: PacingMode = PacingMode.EVEN
    goals: CampaignGoals = Field(default_factory=CampaignGoals)
    creative: Creative = Field(default_factory=Creative)
    deals: list[Deal] = Field(default_factory=list, max_length=50)

    @model_validator(mode="after")
    def _consistent(self) -> CampaignSpec:
        if self.flight_end <= self.flight_start:
            raise ValueError("flight_end must be after flight_start")
        if self.daily_budget_micros > self.total_budget_micros:
            raise ValueError("daily_budget_micros cannot exceed total_budget_micros")
        if self.goals.max_bid_micros is not None and self.goals.max_bid_micros < self.bid_micros:
            raise ValueError("goals.max_bid_micros cannot be below bid_micros")
        if len({deal.deal_id for deal in self.deals}) < len(self.deals):
            raise ValueError("deals: each deal_id once")
        return self


class InstructionAction(StrEnum):
    CREATE = "create"
    STOP = "stop"


class CampaignInstruction(_Record):
    """One record of ``campaign-instructions`` (key: campaign_id); the ad manager applies each once."""

    schema_version: Literal[1] = SCHEMA_VERSION
    instruction_id: str = Field(min_length=1, max_length=64)  # idempotency key: a replay changes nothing
    action: InstructionAction
    campaign_id: str = Field(min_length=1, max_length=64)
    issued_at: AwareDatetime
    campaign: CampaignSpec | None = None  # required for create, absent for stop

    @model_validator(mode="after")
    def _campaign_matches_action(self) -> CampaignInstruction:
        if self.action == InstructionAction.CREATE and self.campaign is None:
            raise ValueError("a create instruction needs the campaign")
        if self.action == InstructionAction.STOP and self.campaign is not None:
            raise ValueError("a stop instruction carries no campaign")
        return self


class PlatformDecision(_Record):
    """One platform of a campaign's decision: the multiplier, why, and what it was decided on."""

    platform: Platform
    multiplier: float = Field(ge=0, le=2)  # of the base bid; 0 pauses the platform
    reason: str = Field(max_length=16)  # optimizer.decide.Reason, by name
    impressions: int = Field(ge=0)  # the window's, as the optimizer read them
    clicks: int = Field(ge=0)
    conversions: int = Field(ge=0)
    spend_micros: int = Field(ge=0)
    ctr: float = Field(ge=0, le=1)  # the posterior means
    cvr: float = Field(ge=0, le=1)
    cvr_drawn: float = Field(ge=0, le=1)  # the Thompson draw the multiplier was set from
    ctr_trend_per_bucket: float  # the least-squares slopes over the window's buckets
    cvr_trend_per_bucket: float
    cpc_micros: float | None = None  # spend per click over the window; None without clicks
    roi_per_click_micros: float | None = None  # drawn CVR x value - CPC
    p_losing: float = Field(ge=0, le=1)  # P(CVR x value < CPC) under the posterior
    prior_ctr: float | None = Field(default=None, ge=0, le=1)  # the pooled rates the posteriors shrink toward
    prior_cvr: float | None = Field(default=None, ge=0, le=1)


class CampaignDecision(_Record):
    """One record of ``campaign-decisions`` (key: campaign_id): the optimizer's multipliers for a campaign,
    with their inputs and reasons; ``version`` orders a campaign's decisions (microseconds since the epoch)."""

    schema_version: Literal[1] = SCHEMA_VERSION
    decision_id: str = Field(min_length=1, max_length=96)
    campaign_id: str = Field(min_length=1, max_length=64)
    version: int = Field(gt=0)
    decided_at: AwareDatetime
    window_start: AwareDatetime
    data_until: AwareDatetime | None = None  # every event Kafka held before it was read: the freshness
    value_micros: int = Field(ge=0)  # the conversion value (or target CPA) optimized for
    base_bid_micros: int = Field(gt=0)
    ctr_prior_strength: float | None = Field(default=None, ge=0)  # the trials each prior weighed at this tick
    cvr_prior_strength: float | None = Field(default=None, ge=0)
    platforms: list[PlatformDecision] = Field(min_length=len(PLATFORMS), max_length=len(PLATFORMS))
