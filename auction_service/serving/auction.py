"""The auction: which campaigns may serve a request, how they rank, and what the winner pays.

Pure functions over ``auction_service.domain`` values: no I/O, no clock (the request
time is ``AuctionContext.at``), no pandas. The caller filters with ``eligible`` (or, for
many requests over one snapshot of campaigns, with its ``CampaignIndex``), scores every
eligible campaign in one batch, and hands the pCTRs to ``run_auction``. Both work on
numpy arrays where a Python loop over hundreds of campaigns would cost milliseconds,
and decide money with exact integers.

Rules, in one place:

- **Eligibility** (``eligible``): active status, ``flight_start <= at < flight_end``,
  category and advertiser not blocked, targeting, the audience split (a campaign in one
  arm of an experiment serves only the users ``adstream.events.audience_arm`` puts in
  that arm; a request without a user id is in none), remaining budget, frequency cap.
  A campaign that targets an attribute the request does not state (no country, age,
  gender or device type) is *not* eligible: an advertiser who pays to reach women aged
  25-34 must not be charged for a user we know nothing about. The reserved (in-flight)
  exposure counts against both the total and the daily budget, since the auctions it
  stands for will be billed today. Each filtered campaign counts once, under the first
  rule it fails, in the order of ``FilterReason``.
- **eCPM** (micros per thousand impressions, rounded down): CPM ``bid``, CPC
  ``bid x pCTR x 1000``, CPA ``bid x pCTR x pCVR x 1000`` with ``pcvr`` defaulting to
  ``DEFAULT_PCVR``. pCTR and pCVR are rounded to ``1e-9`` first, so the money arithmetic
  is exact integer arithmetic (a model estimate has far fewer significant digits).
  Rounding down makes "eCPM >= floor" exact, since the floor is an integer.
- **Floor**: the larger of the request's floor and the reserve price. Candidates whose
  eCPM is below it are dropped after scoring ("below floor").
- **Ranking**: higher eCPM, then higher pCTR, then smaller ``campaign_id``. pCTR (not
  the bid) breaks ties because bids of different pricing models are in different units;
  at equal value the ad the user is likelier to click is the better one.
- **Price** (generalized second price, in the winner's billing unit): the least price
  whose eCPM reaches the runner-up's eCPM plus one cent (``PRICE_INCREMENT_MICROS``), or
  the floor when the winner is alone; never above the bid. Converting an eCPM threshold
  to a price rounds *up* (ceil), so the price still clears the threshold; the floor
  converted the same way is never above the bid, because the winner's own eCPM clears
  the floor. ``first_price=True`` (OpenRTB ``at=1``) charges the bid.
- **Deals** (OpenRTB ``pmp``; ``AuctionContext.deals``): a campaign bidding through a deal answers to the
  deal's floor, and a deal may set its own auction type. Campaigns rank as above whatever their deal; the
  *winner's* deal decides its price: fixed price (``fixed_price_campaigns``) the deal's floor, first price
  (``first_price_campaigns``) the bid, second price (``second_price_campaigns``) the generalized second price
  (never below the deal's floor), and a winner without such a deal the auction's own type (``first_price``).
- ``clearing_price_cpm_micros`` is that price per thousand impressions, rounded down so
  it stays within [floor, the winner's eCPM].
- **Pacing** (``pacing_ppm``: each candidate's multiplier λ, in millionths, from ``pacing``):
  a paced candidate bids λ x its bid. Its paced eCPM, floor(exact eCPM x λ), replaces the
  eCPM in the floor, the ranking and the price, and is the outcome's ``ecpm_micros`` (and
  ``runner_up_ecpm_micros``). The price is the generalized second price of the paced bids:
  the least price whose (unpaced) eCPM reaches the runner-up's paced eCPM plus one cent, or
  the floor when alone, never above the paced bid rounded up to a whole micro (first price
  charges that). So a winner never pays more paced than unpaced, and pays less when the cap
  binds or the runner-up is paced (Conitzer et al., "Multiplicative Pacing Equilibria in
  Auction Markets"); dividing the price by the winner's own λ would instead make pacing raise
  its price. The clearing CPM is still at least the floor; it passes the paced eCPM only when
  the price is that rounded-up paced bid, and then by less than one micro of price's worth
  (before rounding down).
  Without ``pacing_ppm`` every λ is 1 and the rules above hold as written.
- **The optimizer's bids** (``bid_micros``: each candidate's bid for this request's platform,
  from ``optimizer`` decisions: base bid x platform multiplier, capped at the campaign's max bid
  and the platform's limit): it replaces the campaign's bid everywhere above, in its eCPM, its
  price cap and the record. Pacing applies on top, so a candidate bids base x multiplier x λ.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from itertools import repeat
from typing import ClassVar

import numpy as np

from adstream.events import MAX_BID_MICROS, AuctionRecord, CampaignStatus, PricingModel, audience_arm
from auction_service.domain import AuctionContext, ServingCampaign, fits_int64, spend_changed_rows
from ml.calibration import category_codes, pricing_codes

DEFAULT_PCVR = 0.05  # conversions per click for CPA campaigns, until a conversion model exists
PRICE_INCREMENT_MICROS = 10_000  # one cent: what the winner pays above the runner-up's eCPM
PROBABILITY_SCALE = 1_000_000_000  # pCTR and pCVR are rounded to 1e-9 for exact integer money
PACING_SCALE = 1_000_000  # the pacing multiplier λ is given in millionths; this is λ = 1 (unpaced)
IMPRESSIONS_PER_CPM = 1000


class FilterReason(StrEnum):
    """Why a campaign left the auction; eligibility rules are checked in this order."""

    STATUS = "status"
    FLIGHT_DATES = "flight dates"
    BLOCKED_CATEGORY = "blocked category"
    BLOCKED_ADVERTISER = "blocked advertiser"
    COUNTRY = "country targeting"
    AGE = "age targeting"
    GENDER = "gender targeting"
    DEVICE_TYPE = "device type targeting"
    AUDIENCE_SPLIT = "audience split"  # the user is in another arm of the campaign's experiment
    CREATIVE = "creative or deal"  # OpenRTB: its creative does not fit the imp, or a private auction has no deal
    SAME_REQUEST = "filled another imp"  # OpenRTB: it won another imp of the same request
    TOTAL_BUDGET = "total budget"
    DAILY_BUDGET = "daily budget"
    FREQUENCY_CAP = "frequency cap"
    PACING_THROTTLE = "pacing throttle"  # sat this auction out at its pacing throttle rate (serving.pacer)
    OPTIMIZER_PAUSE = "optimizer pause"  # the optimizer paused it on this platform (serving.decisions)
    BELOW_FLOOR = "below floor"  # checked by run_auction, after scoring


@dataclass(frozen=True, slots=True)
class AuctionOutcome:
    """The result of one auction. Prices are integer micros; ``winner`` is None when nothing cleared."""

    auction_id: str
    winner: ServingCampaign | None
    clearing_price_micros: int | None  # in the winner's billing unit
    clearing_price_cpm_micros: int | None  # the same price per thousand impressions
    pctr: float | None  # the winner's, as the model gave it
    ecpm_micros: int | None  # the winner's
    runner_up_ecpm_micros: int | None  # None when the winner was alone
    floor_cpm_micros: int  # the floor applied: max(request floor, reserve price)
    candidate_count: int  # eligible campaigns, before the floor
    above_floor_count: int
    filtered: Counter[str] = field(default_factory=Counter)
    placed_bid_micros: int | None = None  # the winner's bid here: the optimizer's when it set one, before λ

    @property
    def filled(self) -> bool:
        return self.winner is not None


@dataclass(frozen=True, slots=True)
class CandidateBids:
    """The candidates' bids as floats, aligned with them, for eCPM *estimates* (``_Ecpms``):
    estimate = cpm + pCTR_q x (cpc + pCVR_q x cpa), each array zero where the pricing model differs."""

    cpm: np.ndarray  # the bid, for CPM (eCPM is the bid)
    cpc: np.ndarray  # bid x 1000 / 1e9, for CPC (pCTR in billionths)
    cpa: np.ndarray  # bid x 1000 / 1e18, for CPA (pCTR and pCVR in billionths)
    pricing: np.ndarray  # ml.calibration.pricing_codes: which offset of the calibration each one takes
    category: np.ndarray  # ml.calibration.category_codes: which category offset of the calibration each one takes

    @classmethod
    def of(cls, candidates: Sequence[ServingCampaign]) -> CandidateBids:
        n = len(candidates)
        bids = np.fromiter((campaign.bid_micros for campaign in candidates), dtype=np.float64, count=n)
        models = [campaign.pricing_model for campaign in candidates]
        cpc = np.fromiter((model == PricingModel.CPC for model in models), dtype=bool, count=n)
        cpa = np.fromiter((model == PricingModel.CPA for model in models), dtype=bool, count=n)
        return cls(
            cpm=np.where(cpc | cpa, 0.0, bids),
            cpc=np.where(cpc, bids * 1e-6, 0.0),
            cpa=np.where(cpa, bids * 1e-15, 0.0),
            pricing=pricing_codes(models),
            category=category_codes([campaign.category for campaign in candidates]),
        )

    def take(self, rows: np.ndarray) -> CandidateBids:
        return CandidateBids(self.cpm[rows], self.cpc[rows], self.cpa[rows], self.pricing[rows], self.category[rows])

    def with_bids(self, bid_micros: np.ndarray) -> CandidateBids:
        """The same candidates bidding ``bid_micros`` instead (each in its own pricing model's unit)."""
        bids = np.asarray(bid_micros, dtype=np.float64)
        return CandidateBids(
            cpm=np.where(self.pricing == 0, bids, 0.0),
            cpc=np.where(self.pricing == 1, bids * 1e-6, 0.0),
            cpa=np.where(self.pricing == 2, bids * 1e-15, 0.0),
            pricing=self.pricing,
            category=self.category,
        )


def eligible(
    context: AuctionContext,
    campaigns: Iterable[ServingCampaign],
    *,
    impressions_today: Mapping[str, int],
    reserved_micros: Mapping[str, int],
) -> tuple[list[ServingCampaign], Counter[str]]:
    """The campaigns that may serve ``context``, and how many were filtered for each reason.

    ``impressions_today`` is this user's impressions today per campaign_id (empty for an
    unknown user); ``reserved_micros`` the in-flight exposure held per campaign_id. For many
    requests over the same campaigns, build a ``CampaignIndex`` once instead.
    """
    index = CampaignIndex.build(tuple(campaigns))
    rows, filtered = index.eligible_rows(context, impressions_today=impressions_today, reserved_micros=reserved_micros)
    return index.take(rows), filtered


_NO_ROWS = np.empty(0, dtype=np.intp)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

# The rules ``CampaignIndex`` decides with precomputed masks, in order (budgets and frequency
# follow). Each has one bit of a byte per row, the first rule the highest bit, so the first
# rule a row fails is the number of leading zeros of its byte (8: it failed none).
_MASKED_RULES = (
    FilterReason.STATUS,
    FilterReason.FLIGHT_DATES,
    FilterReason.BLOCKED_CATEGORY,
    FilterReason.BLOCKED_ADVERTISER,
    FilterReason.COUNTRY,
    FilterReason.AGE,
    FilterReason.GENDER,
    FilterReason.DEVICE_TYPE,
)
_BIT = {reason: np.uint8(1 << (7 - i)) for i, reason in enumerate(_MASKED_RULES)}
_LEADING_ZEROS = np.array([8 - byte.bit_length() for byte in range(256)], dtype=np.intp)


def _object_array(values: Sequence[object]) -> np.ndarray:
    array = np.empty(len(values), dtype=object)
    array[:] = values  # element by element, even for values numpy could take for sequences
    return array


def _micros_since_epoch(moment: datetime) -> int:
    """Exact integer microseconds, so array comparisons agree with datetime comparisons."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // _MICROSECOND


def _bits(failing: Sequence[bool] | np.ndarray, reason: FilterReason) -> np.ndarray:
    """A rule's failing rows as its bit (uint8 per row, 0 where the row passes)."""
    return np.asarray(failing, dtype=np.uint8) * _BIT[reason]


def _bits_by_key(keys: Sequence[str | tuple[str, ...]], reason: FilterReason) -> dict[str, np.ndarray]:
    """For a blocking rule: key -> the rows with that key (a row may have several), as the rule's bit (in
    one pass: a snapshot may hold as many advertisers as campaigns)."""
    rows_by_key: dict[str, list[int]] = {}
    for row, row_keys in enumerate(keys):
        for key in (row_keys,) if isinstance(row_keys, str) else row_keys:
            rows_by_key.setdefault(key, []).append(row)
    by_key = {}
    for key, rows in rows_by_key.items():
        bits = np.zeros(len(keys), dtype=np.uint8)
        bits[rows] = _BIT[reason]
        by_key[key] = bits
    return by_key


@dataclass(frozen=True)
class _TargetingBits:
    """One set-valued targeting rule (countries, genders, device types) over a snapshot's rows."""

    targeted: np.ndarray  # rows with a target set: they fail an unstated value, or one no set holds
    by_value: dict[str, np.ndarray]  # value -> the targeted rows whose set lacks it

    @classmethod
    def build(cls, sets: Sequence[frozenset[str]], reason: FilterReason) -> _TargetingBits:
        targeted = [bool(targets) for targets in sets]
        values = {value for targets in sets for value in targets}
        by_value = {v: _bits([bool(t) and v not in t for t in sets], reason) for v in values}
        return cls(_bits(targeted, reason), by_value)

    def failing(self, value: str | None) -> np.ndarray:
        return self.targeted if value is None else self.by_value.get(value, self.targeted)


@dataclass(frozen=True)
class _AudienceSplits:
    """The campaigns of split-audience experiments: per (experiment, arms), its rows' arms (-1: not in it)."""

    arms_by_experiment: dict[tuple[str, int], np.ndarray]  # int8 per row

    @classmethod
    def build(cls, campaigns: Sequence[ServingCampaign]) -> _AudienceSplits:
        arms: dict[tuple[str, int], np.ndarray] = {}
        for row, campaign in enumerate(campaigns):
            if (split := campaign.audience_split) is not None:
                key = (split.experiment, split.arms)
                arms.setdefault(key, np.full(len(campaigns), -1, dtype=np.int8))[row] = split.arm
        return cls(arms)

    def failing(self, rows: np.ndarray, user_id: str | None) -> np.ndarray | None:
        """Which of ``rows`` are in an experiment's other arms than ``user_id``'s (None: no row is)."""
        failing = None
        for (experiment, arms), arm_of_row in self.arms_by_experiment.items():
            row_arms = arm_of_row[rows]
            arm = audience_arm(experiment, arms, user_id)
            other = (row_arms >= 0) & (row_arms != (-2 if arm is None else arm))
            failing = other if failing is None else failing | other
        return failing


@dataclass(frozen=True, eq=False)
class CampaignIndex:
    """``eligible`` over one snapshot of campaigns, as numpy arrays built once per snapshot.

    Each masked rule's failing rows are precomputed per value a request can state (status,
    blocked category or advertiser, targeting per country, gender and device type, age
    range per age) or one comparison of arrays (flight dates), held as that rule's bit of
    a byte per row. A request ORs its rules' bits: a row is kept when its byte is 0 and
    counted under its first failing rule otherwise, so each campaign counts once, under
    its first failing rule, as the module docstring says. Budgets and frequency need the
    request's reservations and impressions, so they are checked after, for the rows that
    passed every masked rule.
    """

    campaigns: tuple[ServingCampaign, ...]
    by_row: np.ndarray  # the campaigns again, as an object array (taking rows from it is one call)
    campaign_ids: np.ndarray  # object array of str
    row_of: dict[str, int]  # campaign id -> row
    inactive: np.ndarray
    flight_start: np.ndarray  # int64 microseconds since the epoch
    flight_end: np.ndarray
    every_flight: tuple[int, int]  # (latest start, earliest end): in between no campaign is out of its flight
    by_category: dict[str, np.ndarray]
    by_advertiser: dict[str, np.ndarray]
    countries: _TargetingBits
    genders: _TargetingBits
    device_types: _TargetingBits
    audience_splits: _AudienceSplits
    age_targeted: np.ndarray
    age_min: np.ndarray  # float, -inf when unbounded
    age_max: np.ndarray  # float, +inf when unbounded
    by_age: dict[int | None, np.ndarray]  # filled on first use of each age (requests state 13 to 120)
    total_left: np.ndarray  # int64 micros: total budget - spent
    daily_left: np.ndarray  # int64 micros: daily budget - spent today
    frequency_cap: np.ndarray
    bids: CandidateBids  # by row
    int64_safe: bool  # every budget left fits int64
    no_row: np.ndarray
    _last: ClassVar[CampaignIndex | None] = None

    @classmethod
    def of(cls, campaigns: tuple[ServingCampaign, ...]) -> CampaignIndex:
        """The index of ``campaigns``, built on first use: a service replaces its snapshot tuple whole
        when campaigns change, so the last index built serves every request until then."""
        last = cls._last
        if last is None or last.campaigns is not campaigns:
            rows = None if last is None else spend_changed_rows(last.campaigns, campaigns)
            last = cls._last = cls.build(campaigns) if rows is None else last.with_spend(campaigns, rows)
        return last

    def with_spend(self, campaigns: tuple[ServingCampaign, ...], rows: Sequence[int]) -> CampaignIndex:
        """This index for ``campaigns``, which differ from its own in the spend of ``rows`` only."""
        total_left, daily_left = self.total_left.copy(), self.daily_left.copy()
        for row in rows:
            campaign = campaigns[row]
            total = campaign.total_budget_micros - campaign.spent_micros
            daily = campaign.daily_budget_micros - campaign.spent_today_micros
            if not (self.int64_safe and fits_int64(total, daily)):
                return self.build(campaigns)
            total_left[row], daily_left[row] = total, daily
        return replace(
            self, campaigns=campaigns, by_row=_object_array(campaigns), total_left=total_left, daily_left=daily_left
        )

    @classmethod
    def build(cls, campaigns: tuple[ServingCampaign, ...]) -> CampaignIndex:
        total_left = [c.total_budget_micros - c.spent_micros for c in campaigns]
        daily_left = [c.daily_budget_micros - c.spent_today_micros for c in campaigns]
        int64_safe = fits_int64(*total_left, *daily_left)
        flight_start = [_micros_since_epoch(c.flight_start) for c in campaigns]
        flight_end = [_micros_since_epoch(c.flight_end) for c in campaigns]
        return cls(
            campaigns=campaigns,
            by_row=_object_array(campaigns),
            campaign_ids=_object_array([c.campaign_id for c in campaigns]),
            row_of={c.campaign_id: row for row, c in enumerate(campaigns)},
            inactive=_bits([c.status != CampaignStatus.ACTIVE for c in campaigns], FilterReason.STATUS),
            flight_start=np.array(flight_start, dtype=np.int64),
            flight_end=np.array(flight_end, dtype=np.int64),
            every_flight=(max(flight_start, default=0), min(flight_end, default=0)),
            by_category=_bits_by_key([c.category for c in campaigns], FilterReason.BLOCKED_CATEGORY),
            by_advertiser=_bits_by_key(  # OpenRTB's badv names advertiser domains
                [(c.advertiser_id, c.creative.adomain) if c.creative.adomain else c.advertiser_id for c in campaigns],
                FilterReason.BLOCKED_ADVERTISER,
            ),
            countries=_TargetingBits.build([c.countries for c in campaigns], FilterReason.COUNTRY),
            genders=_TargetingBits.build([c.genders for c in campaigns], FilterReason.GENDER),
            device_types=_TargetingBits.build([c.device_types for c in campaigns], FilterReason.DEVICE_TYPE),
            audience_splits=_AudienceSplits.build(campaigns),
            age_targeted=np.array([c.age_min is not None or c.age_max is not None for c in campaigns], dtype=bool),
            age_min=np.array([-np.inf if c.age_min is None else c.age_min for c in campaigns], dtype=np.float64),
            age_max=np.array([np.inf if c.age_max is None else c.age_max for c in campaigns], dtype=np.float64),
            by_age={},
            total_left=np.array(total_left if int64_safe else [0] * len(campaigns), dtype=np.int64),
            daily_left=np.array(daily_left if int64_safe else [0] * len(campaigns), dtype=np.int64),
            frequency_cap=np.array([c.frequency_cap_per_day for c in campaigns], dtype=np.int64),
            bids=CandidateBids.of(campaigns),
            int64_safe=int64_safe,
            no_row=np.zeros(len(campaigns), dtype=np.uint8),
        )

    def take(self, rows: np.ndarray) -> list[ServingCampaign]:
        return self.by_row[rows].tolist()

    def eligible_rows(
        self,
        context: AuctionContext,
        *,
        impressions_today: Mapping[str, int],
        reserved_micros: Mapping[str, int],
        held_by_row: np.ndarray | None = None,
    ) -> tuple[np.ndarray, Counter[str]]:
        """The rows (ascending) of the campaigns that may serve ``context``, and the filter counts, as ``eligible``.

        ``held_by_row``, when given, is ``reserved_micros`` again as an int64 array by row (read
        in one gather instead of a lookup per candidate: ``ExposureBook.held_by_row``).
        """
        failed = (
            self.inactive
            | self._flight_bits(_micros_since_epoch(context.at))
            | self._blocked_bits(self.by_category, context.blocked_categories)
            | self._blocked_bits(self.by_advertiser, context.blocked_advertisers)
            | self.countries.failing(context.country)
            | self._age_bits(context.age)
            | self.genders.failing(context.gender)
            | self.device_types.failing(context.device_type)
        )
        first_failed = np.bincount(_LEADING_ZEROS[failed], minlength=9).tolist()
        filtered: Counter[str] = Counter(
            {reason: count for reason, count in zip(_MASKED_RULES, first_failed, strict=False) if count}
        )
        if not first_failed[8]:
            return _NO_ROWS, filtered
        rows = np.flatnonzero(failed == 0)
        if self.audience_splits.arms_by_experiment:
            other_arm = self.audience_splits.failing(rows, context.user_id)
            if other_arm is not None and (count := int(np.count_nonzero(other_arm))):
                filtered[FilterReason.AUDIENCE_SPLIT] += count
                rows = rows[~other_arm]
        if context.eligible_campaigns is not None or context.excluded_campaigns:
            rows = self._restricted(rows, context, filtered)
        return self._affordable(rows, filtered, impressions_today, reserved_micros, held_by_row), filtered

    def _restricted(self, rows: np.ndarray, context: AuctionContext, filtered: Counter[str]) -> np.ndarray:
        """``rows`` less the campaigns outside ``eligible_campaigns`` or in ``excluded_campaigns``."""
        ids = self.campaign_ids[rows].tolist()
        allowed, excluded = context.eligible_campaigns, context.excluded_campaigns
        if allowed is not None:
            fits = np.fromiter((campaign_id in allowed for campaign_id in ids), dtype=bool, count=len(ids))
            if count := int(np.count_nonzero(~fits)):
                filtered[FilterReason.CREATIVE] += count
        else:
            fits = np.ones(len(ids), dtype=bool)
        if excluded:
            again = fits & np.fromiter((campaign_id in excluded for campaign_id in ids), dtype=bool, count=len(ids))
            if count := int(np.count_nonzero(again)):
                filtered[FilterReason.SAME_REQUEST] += count
                fits &= ~again
        return rows[fits]

    def _flight_bits(self, at: int) -> np.ndarray:
        latest_start, earliest_end = self.every_flight
        if latest_start <= at < earliest_end:
            return self.no_row
        return _bits((self.flight_start > at) | (self.flight_end <= at), FilterReason.FLIGHT_DATES)

    def _blocked_bits(self, by_key: Mapping[str, np.ndarray], blocked: frozenset[str]) -> np.ndarray:
        bits = self.no_row
        for key in blocked:
            if key in by_key:
                bits = bits | by_key[key]
        return bits

    def _age_bits(self, age: int | None) -> np.ndarray:
        age_bits = self.by_age.get(age)
        if age_bits is None:
            out_of_range = True if age is None else (self.age_min > age) | (self.age_max < age)  # None: in no range
            age_bits = self.by_age[age] = _bits(self.age_targeted & out_of_range, FilterReason.AGE)
        return age_bits

    def _affordable(
        self,
        rows: np.ndarray,
        filtered: Counter[str],
        impressions_today: Mapping[str, int],
        reserved_micros: Mapping[str, int],
        held_by_row: np.ndarray | None,
    ) -> np.ndarray:
        """``rows`` less those out of total or daily budget (reservations counted) or at the frequency cap.

        The books are read with ``get`` only (other threads write them under their own locks).
        """
        held: np.ndarray | int = 0
        if held_by_row is not None:
            held = held_by_row[rows]
        elif reserved_micros:
            row_ids = self.campaign_ids[rows].tolist()
            try:
                held = np.fromiter(map(reserved_micros.get, row_ids, repeat(0)), dtype=np.int64, count=rows.size)
            except OverflowError:  # a reservation beyond int64: Python integers decide
                return self._affordable_exactly(rows, filtered, impressions_today, reserved_micros)
        if not self.int64_safe:
            return self._affordable_exactly(rows, filtered, impressions_today, reserved_micros)
        # "budget - spent - reserved <= 0" as "left <= reserved": no subtraction that could overflow.
        over_total = self.total_left[rows] <= held
        over_daily = (self.daily_left[rows] <= held) & ~over_total
        keep = ~(over_total | over_daily)
        capped = np.zeros(0, dtype=bool)
        # A user has seen a few campaigns today: look those up, not every candidate.
        at_cap = [
            row
            for campaign_id, seen in impressions_today.items()
            if (row := self.row_of.get(campaign_id)) is not None and seen >= self.frequency_cap[row]
        ]
        if at_cap:
            # A mask over every campaign, read at ``rows``: a fraction of np.isin's sort on the hot path.
            seen_at_cap = np.zeros(len(self.campaigns), dtype=bool)
            seen_at_cap[at_cap] = True
            capped = keep & seen_at_cap[rows]
            keep &= ~capped
        for reason, dropped in (
            (FilterReason.TOTAL_BUDGET, over_total),
            (FilterReason.DAILY_BUDGET, over_daily),
            (FilterReason.FREQUENCY_CAP, capped),
        ):
            count = int(np.count_nonzero(dropped))
            if count:
                filtered[reason] += count
        return rows[keep]

    def _affordable_exactly(
        self,
        rows: np.ndarray,
        filtered: Counter[str],
        impressions_today: Mapping[str, int],
        reserved_micros: Mapping[str, int],
    ) -> np.ndarray:
        kept = []
        for row in rows.tolist():
            campaign = self.campaigns[row]
            campaign_id, held = campaign.campaign_id, reserved_micros.get(campaign.campaign_id, 0)
            if campaign.total_budget_micros - campaign.spent_micros - held <= 0:
                filtered[FilterReason.TOTAL_BUDGET] += 1
            elif campaign.daily_budget_micros - campaign.spent_today_micros - held <= 0:
                filtered[FilterReason.DAILY_BUDGET] += 1
            elif impressions_today.get(campaign_id, 0) >= campaign.frequency_cap_per_day:
                filtered[FilterReason.FREQUENCY_CAP] += 1
            else:
                kept.append(row)
        return np.array(kept, dtype=np.intp)


def quantize_probability(probability: float) -> int:
    """A probability as an integer number of billionths (the unit of all auction money arithmetic)."""
    return round(probability * PROBABILITY_SCALE)


def _value_per_micro(pricing_model: PricingModel, pctr_q: int, pcvr_q: int) -> tuple[int, int]:
    """eCPM micros earned per micro of price, as an exact fraction (numerator, denominator)."""
    if pricing_model == PricingModel.CPM:
        return 1, 1
    if pricing_model == PricingModel.CPC:
        return pctr_q * IMPRESSIONS_PER_CPM, PROBABILITY_SCALE
    return pctr_q * pcvr_q * IMPRESSIONS_PER_CPM, PROBABILITY_SCALE * PROBABILITY_SCALE


def _ecpm(pricing_model: PricingModel, bid_micros: int, pctr_q: int, pcvr_q: int) -> int:
    numerator, denominator = _value_per_micro(pricing_model, pctr_q, pcvr_q)
    return bid_micros * numerator // denominator


def ecpm_micros(pricing_model: PricingModel, bid_micros: int, pctr: float, *, pcvr: float = DEFAULT_PCVR) -> int:
    """Expected micros per thousand impressions of a bid, rounded down."""
    return _ecpm(pricing_model, bid_micros, quantize_probability(pctr), quantize_probability(pcvr))


def _price_reaching(ecpm_target: int, numerator: int, denominator: int, bid_micros: int) -> int:
    """The least price whose eCPM reaches ``ecpm_target`` (ceil), capped at ``bid_micros``."""
    if ecpm_target <= 0:
        return 0
    if numerator == 0:  # a zero pCTR reaches no positive eCPM at any price
        return bid_micros
    return min(bid_micros, -(-ecpm_target * denominator // numerator))


def _paced_bid(bid_micros: int, pacing_ppm: int) -> int:
    """λ x the bid, rounded up to a whole micro: the winner's eCPM at it still clears every
    threshold its paced eCPM clears, and it is never above the bid."""
    return -(-bid_micros * pacing_ppm // PACING_SCALE)


def _checked_pacing(pacing_ppm: np.ndarray | None, candidate_count: int) -> np.ndarray | None:
    if pacing_ppm is None:
        return None
    values = np.asarray(pacing_ppm)
    if values.shape != (candidate_count,):
        raise ValueError(
            f"expected {candidate_count} pacing multipliers aligned with the candidates, not {values.shape}"
        )
    if not np.issubdtype(values.dtype, np.integer):
        raise ValueError(f"pacing multipliers must be integer millionths, got dtype {values.dtype}")
    if not np.all((values > 0) & (values <= PACING_SCALE)):
        raise ValueError(f"every pacing multiplier must be in (0, {PACING_SCALE}] millionths")
    return values.astype(np.int64, copy=False)


def _checked_bids(bid_micros: np.ndarray | None, candidate_count: int) -> np.ndarray | None:
    if bid_micros is None:
        return None
    values = np.asarray(bid_micros)
    if values.shape != (candidate_count,) or not np.issubdtype(values.dtype, np.integer):
        raise ValueError(f"expected {candidate_count} integer bids aligned with the candidates, not {values.shape}")
    if not np.all((values > 0) & (values <= MAX_BID_MICROS)):
        raise ValueError(f"every bid must be in (0, {MAX_BID_MICROS}] micros")
    return values.astype(np.int64, copy=False)


def _checked_pctrs(pctr: Sequence[float] | np.ndarray, candidate_count: int) -> np.ndarray:
    values = np.asarray(pctr, dtype=np.float64)
    if values.shape != (candidate_count,):
        raise ValueError(f"expected {candidate_count} pCTRs aligned with the candidates, got shape {values.shape}")
    if not np.all((values >= 0) & (values <= 1)):  # also rejects NaN
        raise ValueError("every pCTR must be a probability in [0, 1]")
    return values


class _Ecpms:
    """The candidates' exact (paced) eCPMs, computed only where they decide something.

    Exact eCPMs are Python integers (``_ecpm``), too slow to compute for every one of
    hundreds of candidates per request. A float64 estimate of each is within a tiny
    relative error of the exact value before rounding down, so ``margin`` (far wider
    than that error, plus the 1 the rounding down can take) bounds |estimate - exact|.
    The exact value is then needed only for a candidate within ``margin`` of the floor
    and for the candidates that can rank first or second: any campaign whose exact
    eCPM reaches the second best exact value has an estimate above the second best
    estimate minus twice the margin. Pacing scales each estimate by λ: one more float
    product, whose error is as tiny relative to the result, so the margin, taken from the
    paced estimates, still bounds the error.
    """

    def __init__(
        self,
        candidates: Sequence[ServingCampaign],
        bids: CandidateBids,
        pctr_q: np.ndarray,
        pcvr_q: int,
        pacing_ppm: np.ndarray | None = None,
        bid_micros: np.ndarray | None = None,
    ) -> None:
        self._candidates = candidates
        self._pctr_q = pctr_q
        self._pcvr_q = pcvr_q
        self._pacing_ppm = pacing_ppm
        self._bids = bid_micros
        self.estimate = bids.cpm + pctr_q * (bids.cpc + pcvr_q * bids.cpa)
        if pacing_ppm is not None:
            self.estimate = self.estimate * (pacing_ppm * (1 / PACING_SCALE))
        largest = float(self.estimate.max()) if len(candidates) else 0.0
        self.margin = 1.0 + 1e-9 * largest
        self._exact: dict[int, int] = {}

    def exact(self, index: int) -> int:
        ecpm = self._exact.get(index)
        if ecpm is None:
            campaign = self._candidates[index]
            bid = campaign.bid_micros if self._bids is None else int(self._bids[index])
            if self._pacing_ppm is None:
                ecpm = _ecpm(campaign.pricing_model, bid, int(self._pctr_q[index]), self._pcvr_q)
            else:
                numerator, denominator = _value_per_micro(
                    campaign.pricing_model, int(self._pctr_q[index]), self._pcvr_q
                )
                paced = int(self._pacing_ppm[index])
                ecpm = bid * numerator * paced // (denominator * PACING_SCALE)
            self._exact[index] = ecpm
        return ecpm

    def rows_at_or_above(self, floor: int | np.ndarray) -> np.ndarray:
        """The indices (ascending) of the candidates whose exact eCPM is at least ``floor`` (one for all, or
        one per candidate)."""
        above = self.estimate - self.margin >= floor
        for index in np.flatnonzero(~above & (self.estimate + self.margin >= floor)).tolist():
            above[index] = self.exact(index) >= (floor if isinstance(floor, int) else int(floor[index]))
        return np.flatnonzero(above)

    def top_two_and_ties(self, rows: np.ndarray) -> dict[int, int]:
        """Exact eCPMs of every row of ``rows`` that can rank first or second (ties included)."""
        estimates = self.estimate[rows]
        second = np.partition(estimates, -2)[-2] if rows.size > 1 else estimates[0]
        return {index: self.exact(index) for index in rows[estimates > second - 2 * self.margin].tolist()}


def run_auction(
    context: AuctionContext,
    candidates: Sequence[ServingCampaign],
    pctr: Sequence[float] | np.ndarray,
    *,
    reserve_price_micros: int,
    pcvr: float = DEFAULT_PCVR,
    first_price: bool = False,
    filtered: Mapping[str, int] | None = None,
    bids: CandidateBids | None = None,
    pacing_ppm: np.ndarray | None = None,
    bid_micros: np.ndarray | None = None,
) -> AuctionOutcome:
    """Rank the eligible ``candidates`` by (paced) eCPM and price the winner (rules in the module docstring).

    ``pctr[i]`` is the model's pCTR for ``candidates[i]``. ``filtered`` (the counts from
    ``eligible``) is carried into the outcome, with the "below floor" count added. ``bids``
    saves building the candidates' bid arrays when the caller has them (``CampaignIndex.bids``).
    ``pacing_ppm[i]``, when given, is ``candidates[i]``'s pacing multiplier λ in millionths
    (an integer array; ``PACING_SCALE`` is unpaced). ``bid_micros[i]``, when given, is the bid
    ``candidates[i]`` places here instead of its campaign's (the optimizer's, module docstring);
    ``bids`` must then be of those bids.
    """
    if not 0 < pcvr <= 1:
        raise ValueError(f"pcvr must be in (0, 1], got {pcvr}")
    pctr_values = _checked_pctrs(pctr, len(candidates))
    pacing = _checked_pacing(pacing_ppm, len(candidates))
    placed = _checked_bids(bid_micros, len(candidates))
    pctr_q = np.rint(pctr_values * PROBABILITY_SCALE).astype(np.int64)
    pcvr_q = quantize_probability(pcvr)
    floor = max(context.floor_cpm_micros, reserve_price_micros)
    floors: int | np.ndarray = floor
    if context.deals:  # a campaign bidding through a deal answers to the deal's floor
        deals, open_market = context.deals, (None, floor)
        floors = np.fromiter(
            (max(deals.get(c.campaign_id, open_market)[1], reserve_price_micros) for c in candidates),
            dtype=np.int64,
            count=len(candidates),
        )
    reasons: Counter[str] = Counter(filtered or {})

    if bids is None:
        bids = CandidateBids.of(candidates) if placed is None else CandidateBids.of(candidates).with_bids(placed)
    ecpms = _Ecpms(candidates, bids, pctr_q, pcvr_q, pacing, placed)
    above = ecpms.rows_at_or_above(floors)
    if above.size < len(candidates):  # a Counter keeps zero counts; add none
        reasons[FilterReason.BELOW_FLOOR] += len(candidates) - above.size

    if not above.size:
        return AuctionOutcome(
            auction_id=context.auction_id,
            winner=None,
            clearing_price_micros=None,
            clearing_price_cpm_micros=None,
            pctr=None,
            ecpm_micros=None,
            runner_up_ecpm_micros=None,
            floor_cpm_micros=floor,
            candidate_count=len(candidates),
            above_floor_count=0,
            filtered=reasons,
        )

    # Only the runner-up's eCPM sets the price, so the two best values suffice; the winner is
    # the first, by the tie-break rule, of the campaigns with the best eCPM.
    contenders = ecpms.top_two_and_ties(above)
    best_ecpm, *runner_up = heapq.nlargest(2, contenders.values())
    runner_up_ecpm = runner_up[0] if runner_up else None
    best_index = min(
        (index for index, ecpm in contenders.items() if ecpm == best_ecpm),
        key=lambda index: (-int(pctr_q[index]), candidates[index].campaign_id),
    )
    winner = candidates[best_index]
    numerator, denominator = _value_per_micro(winner.pricing_model, int(pctr_q[best_index]), pcvr_q)
    placed_bid = winner.bid_micros if placed is None else int(placed[best_index])
    bid = placed_bid if pacing is None else _paced_bid(placed_bid, int(pacing[best_index]))
    if not isinstance(floors, int):
        floor = int(floors[best_index])
    if context.fixed_price_campaigns and winner.campaign_id in context.fixed_price_campaigns:
        price = _price_reaching(floor, numerator, denominator, bid)  # a fixed-price deal: its floor is the price
    elif winner.campaign_id in context.first_price_campaigns or (
        first_price and winner.campaign_id not in context.second_price_campaigns
    ):
        price = bid
    else:
        # With one floor, the runner-up's eCPM is at or above it, so beating it by a cent also clears it;
        # a deal's floor may be above the runner-up's.
        target = floor if runner_up_ecpm is None else max(floor, runner_up_ecpm + PRICE_INCREMENT_MICROS)
        price = _price_reaching(target, numerator, denominator, bid)
    return AuctionOutcome(
        auction_id=context.auction_id,
        winner=winner,
        clearing_price_micros=price,
        clearing_price_cpm_micros=price * numerator // denominator,
        pctr=float(pctr_values[best_index]),
        ecpm_micros=best_ecpm,
        runner_up_ecpm_micros=runner_up_ecpm,
        floor_cpm_micros=floor,
        candidate_count=len(candidates),
        above_floor_count=above.size,
        filtered=reasons,
        placed_bid_micros=placed_bid,
    )


def auction_record(
    context: AuctionContext,
    outcome: AuctionOutcome,
    *,
    model_version: str | None,
    latency_ms: float,
    raw_pctr: float | None = None,
) -> AuctionRecord:
    """The ``auctions`` topic record of one auction (filled or not)."""
    winner = outcome.winner
    return AuctionRecord(
        auction_id=context.auction_id,
        event_time=context.at,
        user_id=context.user_id,
        country=context.country,
        age=context.age,
        gender=context.gender,
        device_type=context.device_type,
        channel=context.channel,
        content_type=context.content_type,
        floor_micros=outcome.floor_cpm_micros,
        candidate_count=outcome.candidate_count,
        filled=winner is not None,
        campaign_id=None if winner is None else winner.campaign_id,
        advertiser_id=None if winner is None else winner.advertiser_id,
        ad_id=None if winner is None else winner.ad_id,
        ad_category=None if winner is None else winner.category,
        pricing_model=None if winner is None else winner.pricing_model,
        bid_micros=None if winner is None else outcome.placed_bid_micros or winner.bid_micros,
        clearing_price_micros=outcome.clearing_price_micros,
        pctr=outcome.pctr,
        ecpm_micros=outcome.ecpm_micros,
        runner_up_ecpm_micros=outcome.runner_up_ecpm_micros,
        model_version=model_version,
        latency_ms=latency_ms,
        publisher_id=context.publisher_id,
        raw_pctr=raw_pctr,
        request_id=context.request_id,
        imp_id=context.imp_id,
        domain=context.domain,
        placement=context.placement,
        deal_id=deal_of(context, winner),
        clearing_price_cpm_micros=outcome.clearing_price_cpm_micros,
        bid_filter_score=context.bid_filter_score,
        bid_filter_explored=context.bid_filter_explored,
    )


def deal_of(context: AuctionContext, winner: ServingCampaign | None) -> str | None:
    """The deal the winner bid through, if any."""
    if winner is None or not context.deals:
        return None
    terms = context.deals.get(winner.campaign_id)
    return None if terms is None else terms[0]
