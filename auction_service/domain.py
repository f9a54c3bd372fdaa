"""The auction's view of campaigns and requests: plain, immutable values shared by the store and the auction.

The campaign store (``auction_service.campaign_store.store``) turns its rows into ``ServingCampaign``;
both API flavours (our JSON, OpenRTB) turn a request into ``AuctionContext``; the pure
auction (``auction_service.serving.auction``) reads only these. Money is integer micros.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from adstream.days import (
    DAY_LENGTH_S,
    MICROS_PER_S,
    DayClock,
    check_day_length,
    micros_since_epoch,
)
from adstream.events import AudienceSplit, CampaignGoals, CampaignStatus, Creative, Deal, PacingMode, PricingModel

NO_GOALS = CampaignGoals()  # frozen: one instance serves every campaign without goals
DEFAULT_CREATIVE = Creative()  # likewise for campaigns that state no creative details


@dataclass(frozen=True, slots=True)
class ServingCampaign:
    campaign_id: str
    advertiser_id: str
    ad_id: str
    category: str
    pricing_model: PricingModel
    bid_micros: int  # per thousand impressions (CPM), per click (CPC) or per conversion (CPA)
    flight_start: datetime
    flight_end: datetime
    frequency_cap_per_day: int
    status: CampaignStatus
    total_budget_micros: int
    daily_budget_micros: int
    spent_micros: int  # all time, from the spend ledger
    spent_today_micros: int  # the current UTC day
    countries: frozenset[str] = frozenset()  # empty: any
    age_min: int | None = None
    age_max: int | None = None
    genders: frozenset[str] = frozenset()
    device_types: frozenset[str] = frozenset()
    audience_split: AudienceSplit | None = None  # one arm of an experiment's users only
    pacing_mode: PacingMode = PacingMode.EVEN
    goals: CampaignGoals = NO_GOALS  # what the optimizer bids toward, and its bounds
    creative: Creative = DEFAULT_CREATIVE  # what an exchange renders: domain, landing page, sizes, video
    deals: tuple[Deal, ...] = ()  # the private-marketplace deals it buys through


@dataclass(frozen=True, slots=True)
class AuctionContext:
    """One ad request: who asks, where, and the seller's rules."""

    auction_id: str
    at: datetime  # UTC
    user_id: str | None = None
    country: str | None = None
    age: int | None = None
    gender: str | None = None
    device_type: str | None = None
    channel: str | None = None  # "web" or "app"
    content_type: str | None = None  # "display" or "video"
    floor_cpm_micros: int = 0  # the seller's floor, per thousand impressions
    blocked_categories: frozenset[str] = field(default_factory=frozenset)
    blocked_advertisers: frozenset[str] = field(default_factory=frozenset)
    publisher_id: str | None = None  # the caller, from its API key; None for an anonymous local caller
    # OpenRTB: the campaigns whose creative fits the imp (None: any), campaigns that already filled another
    # imp of the request, and each campaign that bids through a deal: campaign id -> (deal id, its floor).
    eligible_campaigns: frozenset[str] | None = None
    excluded_campaigns: frozenset[str] = field(default_factory=frozenset)
    deals: Mapping[str, tuple[str, int]] | None = None
    # Of them, the campaigns whose deal is at a fixed price (OpenRTB deal ``at`` 3): the deal's floor is the price;
    # and those whose deal overrides the auction's type: first price (``at`` 1) or second price (``at`` 2).
    fixed_price_campaigns: frozenset[str] = field(default_factory=frozenset)
    first_price_campaigns: frozenset[str] = field(default_factory=frozenset)
    second_price_campaigns: frozenset[str] = field(default_factory=frozenset)
    # What the auction log keeps of an OpenRTB request, and what the bid-request filter made of it.
    request_id: str | None = None
    imp_id: str | None = None
    domain: str | None = None
    placement: str | None = None
    bid_filter_score: float | None = None
    bid_filter_explored: bool | None = None


def fits_int64(*values: int) -> bool:
    """Whether numpy int64 holds every value. Budgets and reservations are compared as int64; beyond
    it (over nine trillion dollars in micros) Python integers decide."""
    return all(-(2**63) < value < 2**63 for value in values)


def spend_changed_rows(old: Sequence[ServingCampaign], new: Sequence[ServingCampaign]) -> list[int] | None:
    """The rows where ``new`` differs from ``old`` in spend only, or None when anything else differs.

    A reload after a charge replaces a few campaigns by copies with new spend: what is built
    per snapshot (``CampaignIndex``, ``CampaignFeatures``) then updates those rows, not all.
    """
    if len(old) != len(new):
        return None
    rows = [row for row, (before, after) in enumerate(zip(old, new, strict=True)) if before is not after]
    for row in rows:
        before, after = old[row], new[row]
        if replace(after, spent_micros=before.spent_micros, spent_today_micros=before.spent_today_micros) != before:
            return None
    return rows


# --- the day of daily budgets and pacing (adstream.days), for the pure pacing functions ---


def day_index(at: datetime, day_length_s: int = DAY_LENGTH_S) -> int:
    """The day ``at`` falls in: whole days of ``day_length_s`` since the Unix epoch (naive is UTC)."""
    return DayClock(day_length_s).index(at)


def day_bounds(index: int, day_length_s: int = DAY_LENGTH_S) -> tuple[datetime, datetime]:
    """The start (included) and end (excluded) of day ``index``."""
    return DayClock(day_length_s).bounds(index)


def fraction_of_day(at: datetime, day_start: datetime, day_length_s: int = DAY_LENGTH_S) -> float:
    """The share of the day starting at ``day_start`` gone at ``at``, clipped to [0, 1]."""
    check_day_length(day_length_s)
    gone = (micros_since_epoch(at) - micros_since_epoch(day_start)) / (day_length_s * MICROS_PER_S)
    return min(1.0, max(0.0, gone))
