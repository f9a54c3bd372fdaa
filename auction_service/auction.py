"""The auction: which campaigns may serve a request, how they rank, and what the winner pays.

Pure functions over ``auction_service.domain`` values: no I/O, no clock (the request
time is ``AuctionContext.at``), no pandas. The caller filters with ``eligible``, scores
every eligible campaign in one batch, and hands the pCTRs to ``run_auction``.

Rules, in one place:

- **Eligibility** (``eligible``): active status, ``flight_start <= at < flight_end``,
  category and advertiser not blocked, targeting, remaining budget, frequency cap.
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
- ``clearing_price_cpm_micros`` is that price per thousand impressions, rounded down so
  it stays within [floor, the winner's eCPM].
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

from adstream.events import AuctionRecord, CampaignStatus, PricingModel
from auction_service.domain import AuctionContext, ServingCampaign

DEFAULT_PCVR = 0.05  # conversions per click for CPA campaigns, until a conversion model exists
PRICE_INCREMENT_MICROS = 10_000  # one cent: what the winner pays above the runner-up's eCPM
PROBABILITY_SCALE = 1_000_000_000  # pCTR and pCVR are rounded to 1e-9 for exact integer money
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
    TOTAL_BUDGET = "total budget"
    DAILY_BUDGET = "daily budget"
    FREQUENCY_CAP = "frequency cap"
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

    @property
    def filled(self) -> bool:
        return self.winner is not None


def eligible(
    context: AuctionContext,
    campaigns: Iterable[ServingCampaign],
    *,
    impressions_today: Mapping[str, int],
    reserved_micros: Mapping[str, int],
) -> tuple[list[ServingCampaign], Counter[str]]:
    """The campaigns that may serve ``context``, and how many were filtered for each reason.

    ``impressions_today`` is this user's impressions today per campaign_id (empty for an
    unknown user); ``reserved_micros`` the in-flight exposure held per campaign_id.
    """
    kept: list[ServingCampaign] = []
    filtered: Counter[str] = Counter()
    for campaign in campaigns:
        reason = _first_failed_rule(context, campaign, impressions_today, reserved_micros)
        if reason is None:
            kept.append(campaign)
        else:
            filtered[reason] += 1
    return kept, filtered


def _first_failed_rule(
    context: AuctionContext,
    campaign: ServingCampaign,
    impressions_today: Mapping[str, int],
    reserved_micros: Mapping[str, int],
) -> FilterReason | None:
    if campaign.status != CampaignStatus.ACTIVE:
        return FilterReason.STATUS
    if not campaign.flight_start <= context.at < campaign.flight_end:
        return FilterReason.FLIGHT_DATES
    if campaign.category in context.blocked_categories:
        return FilterReason.BLOCKED_CATEGORY
    if campaign.advertiser_id in context.blocked_advertisers:
        return FilterReason.BLOCKED_ADVERTISER
    # An unstated attribute (None) is never in a non-empty target set.
    if campaign.countries and context.country not in campaign.countries:
        return FilterReason.COUNTRY
    if (campaign.age_min is not None or campaign.age_max is not None) and not _age_matches(campaign, context.age):
        return FilterReason.AGE
    if campaign.genders and context.gender not in campaign.genders:
        return FilterReason.GENDER
    if campaign.device_types and context.device_type not in campaign.device_types:
        return FilterReason.DEVICE_TYPE
    reserved = reserved_micros.get(campaign.campaign_id, 0)
    if campaign.total_budget_micros - campaign.spent_micros - reserved <= 0:
        return FilterReason.TOTAL_BUDGET
    if campaign.daily_budget_micros - campaign.spent_today_micros - reserved <= 0:
        return FilterReason.DAILY_BUDGET
    if impressions_today.get(campaign.campaign_id, 0) >= campaign.frequency_cap_per_day:
        return FilterReason.FREQUENCY_CAP
    return None


def _age_matches(campaign: ServingCampaign, age: int | None) -> bool:
    if age is None:
        return False
    above_min = campaign.age_min is None or age >= campaign.age_min
    return above_min and (campaign.age_max is None or age <= campaign.age_max)


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
    """The least price whose eCPM reaches ``ecpm_target`` (ceil), capped at the bid."""
    if ecpm_target <= 0:
        return 0
    if numerator == 0:  # a zero pCTR reaches no positive eCPM at any price
        return bid_micros
    return min(bid_micros, -(-ecpm_target * denominator // numerator))


def _checked_pctrs(pctr: Sequence[float] | np.ndarray, candidate_count: int) -> np.ndarray:
    values = np.asarray(pctr, dtype=np.float64)
    if values.shape != (candidate_count,):
        raise ValueError(f"expected {candidate_count} pCTRs aligned with the candidates, got shape {values.shape}")
    if not np.all((values >= 0) & (values <= 1)):  # also rejects NaN
        raise ValueError("every pCTR must be a probability in [0, 1]")
    return values


def run_auction(
    context: AuctionContext,
    candidates: Sequence[ServingCampaign],
    pctr: Sequence[float] | np.ndarray,
    *,
    reserve_price_micros: int,
    pcvr: float = DEFAULT_PCVR,
    first_price: bool = False,
    filtered: Mapping[str, int] | None = None,
) -> AuctionOutcome:
    """Rank the eligible ``candidates`` by eCPM and price the winner (rules in the module docstring).

    ``pctr[i]`` is the model's pCTR for ``candidates[i]``. ``filtered`` (the counts from
    ``eligible``) is carried into the outcome, with the "below floor" count added.
    """
    if not 0 < pcvr <= 1:
        raise ValueError(f"pcvr must be in (0, 1], got {pcvr}")
    pctr_values = _checked_pctrs(pctr, len(candidates))
    pctr_q: list[int] = np.rint(pctr_values * PROBABILITY_SCALE).astype(np.int64).tolist()
    pcvr_q = quantize_probability(pcvr)
    floor = max(context.floor_cpm_micros, reserve_price_micros)
    reasons: Counter[str] = Counter(filtered or {})

    ecpms = [
        _ecpm(campaign.pricing_model, campaign.bid_micros, campaign_pctr, pcvr_q)
        for campaign, campaign_pctr in zip(candidates, pctr_q, strict=True)
    ]
    above_floor = [ecpm for ecpm in ecpms if ecpm >= floor]
    if len(above_floor) < len(candidates):  # a Counter keeps zero counts; add none
        reasons[FilterReason.BELOW_FLOOR] += len(candidates) - len(above_floor)

    if not above_floor:
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
    best_ecpm, *runner_up = heapq.nlargest(2, above_floor)
    runner_up_ecpm = runner_up[0] if runner_up else None
    best_index = min(
        (index for index, ecpm in enumerate(ecpms) if ecpm == best_ecpm),
        key=lambda index: (-pctr_q[index], candidates[index].campaign_id),
    )
    winner = candidates[best_index]
    numerator, denominator = _value_per_micro(winner.pricing_model, pctr_q[best_index], pcvr_q)
    if first_price:
        price = winner.bid_micros
    else:
        # The runner-up's eCPM is at or above the floor, so beating it by a cent also clears the floor.
        target = floor if runner_up_ecpm is None else runner_up_ecpm + PRICE_INCREMENT_MICROS
        price = _price_reaching(target, numerator, denominator, winner.bid_micros)
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
        above_floor_count=len(above_floor),
        filtered=reasons,
    )


def auction_record(
    context: AuctionContext, outcome: AuctionOutcome, *, model_version: str | None, latency_ms: float
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
        bid_micros=None if winner is None else winner.bid_micros,
        clearing_price_micros=outcome.clearing_price_micros,
        pctr=outcome.pctr,
        ecpm_micros=outcome.ecpm_micros,
        runner_up_ecpm_micros=outcome.runner_up_ecpm_micros,
        model_version=model_version,
        latency_ms=latency_ms,
    )
