"""The pure auction: eligibility rules, eCPM, ranking and the generalized second price.

Expected prices are written by hand with their arithmetic; the property tests check the
pricing rules against exact fractions, never against the code under test.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adstream.events import AuctionRecord, AudienceSplit, CampaignStatus, PricingModel, audience_arm
from auction_service.domain import AuctionContext, ServingCampaign
from auction_service.serving.auction import (
    DEFAULT_PCVR,
    AuctionOutcome,
    CampaignIndex,
    FilterReason,
    auction_record,
    ecpm_micros,
    eligible,
    run_auction,
)

AT = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
RESERVE = 10_000  # $0.01 CPM


def make_campaign(campaign_id: str = "c1", **overrides: object) -> ServingCampaign:
    values: dict[str, object] = {
        "campaign_id": campaign_id,
        "advertiser_id": "adv-1",
        "ad_id": f"ad-{campaign_id}",
        "category": "Automotive",
        "pricing_model": PricingModel.CPM,
        "bid_micros": 5_000_000,
        "flight_start": datetime(2024, 1, 1, tzinfo=UTC),
        "flight_end": datetime(2025, 1, 1, tzinfo=UTC),
        "frequency_cap_per_day": 3,
        "status": CampaignStatus.ACTIVE,
        "total_budget_micros": 100_000_000,
        "daily_budget_micros": 10_000_000,
        "spent_micros": 0,
        "spent_today_micros": 0,
    }
    values.update(overrides)
    return ServingCampaign(**values)  # type: ignore[arg-type]


def make_context(**overrides: object) -> AuctionContext:
    values: dict[str, object] = {"auction_id": "auction-1", "at": AT}
    values.update(overrides)
    return AuctionContext(**values)  # type: ignore[arg-type]


def auction(
    candidates: list[ServingCampaign], pctr: list[float], *, floor: int = 0, reserve: int = RESERVE, **kwargs: object
) -> AuctionOutcome:
    return run_auction(make_context(floor_cpm_micros=floor), candidates, pctr, reserve_price_micros=reserve, **kwargs)


# --- eCPM and the second price, per pricing model -------------------------------------------


def test_cpm_winner_pays_runner_up_ecpm_plus_one_cent() -> None:
    winner = make_campaign("c-high", bid_micros=5_000_000)
    runner_up = make_campaign("c-low", bid_micros=3_000_000)
    outcome = auction([runner_up, winner], [0.01, 0.9])
    assert outcome.winner == winner
    assert outcome.ecpm_micros == 5_000_000  # CPM: eCPM is the bid
    assert outcome.runner_up_ecpm_micros == 3_000_000
    assert outcome.clearing_price_micros == 3_010_000  # 3_000_000 + 10_000
    assert outcome.clearing_price_cpm_micros == 3_010_000
    assert outcome.pctr == 0.9
    assert (outcome.candidate_count, outcome.above_floor_count) == (2, 2)


def test_cpc_winner_pays_per_click_the_least_price_that_beats_the_runner_up() -> None:
    # CPC bid $0.50 per click at pCTR 0.02: eCPM = 500_000 x 0.02 x 1000 = 10_000_000.
    winner = make_campaign("c-cpc", pricing_model=PricingModel.CPC, bid_micros=500_000)
    runner_up = make_campaign("c-cpm", bid_micros=6_000_001)
    outcome = auction([winner, runner_up], [0.02, 0.5])
    assert outcome.winner == winner
    assert outcome.ecpm_micros == 10_000_000
    assert outcome.runner_up_ecpm_micros == 6_000_001
    # Needed eCPM 6_000_001 + 10_000 = 6_010_001; one micro per click is worth 0.02 x 1000 = 20 eCPM micros;
    # 6_010_001 / 20 = 300_500.05 -> ceil 300_501 per click.
    assert outcome.clearing_price_micros == 300_501
    assert outcome.clearing_price_cpm_micros == 6_010_020  # 300_501 x 20


def test_cpa_ecpm_uses_the_default_pcvr_and_the_price_rounds_up() -> None:
    assert DEFAULT_PCVR == 0.05
    # CPA bid $5 per conversion, pCTR 0.03, pCVR 0.05: eCPM = 5_000_000 x 0.03 x 0.05 x 1000 = 7_500_000.
    winner = make_campaign("c-cpa", pricing_model=PricingModel.CPA, bid_micros=5_000_000)
    # CPC bid $0.40 at pCTR 0.015: eCPM = 400_000 x 0.015 x 1000 = 6_000_000.
    runner_up = make_campaign("c-cpc", pricing_model=PricingModel.CPC, bid_micros=400_000)
    outcome = auction([runner_up, winner], [0.015, 0.03])
    assert outcome.winner == winner
    assert outcome.ecpm_micros == 7_500_000
    assert outcome.runner_up_ecpm_micros == 6_000_000
    # A micro per conversion is worth 0.03 x 0.05 x 1000 = 1.5 eCPM micros: 6_010_000 / 1.5 = 4_006_666.67 -> 4_006_667
    assert outcome.clearing_price_micros == 4_006_667
    assert outcome.clearing_price_cpm_micros == 6_010_000  # floor(4_006_667 x 1.5 = 6_010_000.5)


def test_cpa_pcvr_is_a_parameter() -> None:
    cpa = make_campaign("c-cpa", pricing_model=PricingModel.CPA, bid_micros=5_000_000)
    cpm = make_campaign("c-cpm", bid_micros=9_000_000)
    # pCVR 0.1: CPA eCPM = 5_000_000 x 0.03 x 0.1 x 1000 = 15_000_000 beats 9_000_000 (at 0.05 it would be 7_500_000).
    outcome = auction([cpa, cpm], [0.03, 0.5], pcvr=0.1)
    assert outcome.winner == cpa
    assert outcome.ecpm_micros == 15_000_000
    # One micro per conversion is worth 0.03 x 0.1 x 1000 = 3: 9_010_000 / 3 = 3_003_333.33 -> 3_003_334.
    assert outcome.clearing_price_micros == 3_003_334
    assert auction([cpa, cpm], [0.03, 0.5]).winner == cpm


def test_ecpm_per_pricing_model() -> None:
    assert ecpm_micros(PricingModel.CPM, 2_500_000, 0.5) == 2_500_000
    assert ecpm_micros(PricingModel.CPC, 250_000, 0.004) == 1_000_000  # 250_000 x 0.004 x 1000
    assert ecpm_micros(PricingModel.CPA, 10_000_000, 0.02, pcvr=0.05) == 10_000_000  # 10e6 x 0.02 x 0.05 x 1000
    assert ecpm_micros(PricingModel.CPC, 333, 0.3) == 99_900  # 333 x 0.3 x 1000, exact despite 0.3 in binary
    assert ecpm_micros(PricingModel.CPC, 1, 0.0015) == 1  # 1.5 rounds down


def test_price_never_exceeds_the_bid_when_the_runner_up_is_close() -> None:
    winner = make_campaign("c-a", bid_micros=5_005_000)
    runner_up = make_campaign("c-b", bid_micros=5_000_000)
    outcome = auction([winner, runner_up], [0.1, 0.1])
    assert outcome.clearing_price_micros == 5_005_000  # 5_000_000 + 10_000 would exceed the bid


def test_first_price_charges_the_bid() -> None:
    winner = make_campaign("c-cpc", pricing_model=PricingModel.CPC, bid_micros=500_000)
    runner_up = make_campaign("c-cpm", bid_micros=6_000_000)
    outcome = auction([winner, runner_up], [0.02, 0.5], first_price=True)
    assert outcome.clearing_price_micros == 500_000
    assert outcome.clearing_price_cpm_micros == 10_000_000  # 500_000 x 20


# --- ties ---------------------------------------------------------------------------------


def test_equal_ecpm_and_pctr_goes_to_the_smaller_campaign_id_in_any_order() -> None:
    a = make_campaign("c-a", bid_micros=4_000_000)
    b = make_campaign("c-b", bid_micros=4_000_000)
    for candidates in ([a, b], [b, a]):
        outcome = auction(candidates, [0.05, 0.05])
        assert outcome.winner == a
        assert outcome.runner_up_ecpm_micros == 4_000_000
        assert outcome.clearing_price_micros == 4_000_000  # a tie pays the bid: +1 cent would exceed it


def test_equal_ecpm_goes_to_the_higher_pctr_before_the_campaign_id() -> None:
    cpm = make_campaign("a-cpm", bid_micros=10_000_000)  # eCPM 10_000_000 at any pCTR
    cpc = make_campaign("z-cpc", pricing_model=PricingModel.CPC, bid_micros=500_000)  # 500_000 x 0.02 x 1000
    assert auction([cpm, cpc], [0.01, 0.02]).winner == cpc
    assert auction([cpc, cpm], [0.02, 0.01]).winner == cpc


# --- floor and reserve ----------------------------------------------------------------------


def test_single_candidate_pays_the_request_floor() -> None:
    cpm = make_campaign("c-cpm", bid_micros=5_000_000)
    outcome = auction([cpm], [0.1], floor=2_000_000)
    assert outcome.clearing_price_micros == 2_000_000
    assert outcome.runner_up_ecpm_micros is None
    assert outcome.floor_cpm_micros == 2_000_000

    cpc = make_campaign("c-cpc", pricing_model=PricingModel.CPC, bid_micros=500_000)
    # One micro per click is worth 0.03 x 1000 = 30: 2_000_000 / 30 = 66_666.67 -> 66_667 per click.
    outcome = auction([cpc], [0.03], floor=2_000_000)
    assert outcome.clearing_price_micros == 66_667
    assert outcome.clearing_price_cpm_micros == 2_000_010  # 66_667 x 30


def test_single_candidate_pays_the_reserve_without_a_request_floor() -> None:
    cpm = make_campaign("c-cpm", bid_micros=5_000_000)
    assert auction([cpm], [0.1], floor=0, reserve=250_000).clearing_price_micros == 250_000
    # The reserve also wins over a lower request floor.
    assert auction([cpm], [0.1], floor=100_000, reserve=250_000).clearing_price_micros == 250_000


def test_single_candidate_bidding_exactly_the_floor_pays_its_bid() -> None:
    cpm = make_campaign("c-cpm", bid_micros=2_000_000)
    outcome = auction([cpm], [0.1], floor=2_000_000)
    assert outcome.winner == cpm
    assert outcome.clearing_price_micros == 2_000_000


def test_candidates_below_the_floor_are_dropped_after_scoring() -> None:
    # CPC 100_000 x 0.01 x 1000 = 1_000_000 < 1_500_000; CPM 1_500_000 is exactly at the floor and stays.
    low = make_campaign("c-low", pricing_model=PricingModel.CPC, bid_micros=100_000)
    at_floor = make_campaign("c-floor", bid_micros=1_500_000)
    outcome = auction([low, at_floor], [0.01, 0.5], floor=1_500_000, filtered=Counter({"status": 2}))
    assert outcome.winner == at_floor
    assert outcome.runner_up_ecpm_micros is None  # the dropped candidate does not set the price
    assert outcome.clearing_price_micros == 1_500_000
    assert (outcome.candidate_count, outcome.above_floor_count) == (2, 1)
    assert outcome.filtered == Counter({"status": 2, "below floor": 1})


def test_no_candidate_above_the_floor_is_no_fill() -> None:
    outcome = auction([make_campaign("c1", bid_micros=900_000)], [0.5], floor=1_000_000)
    assert outcome.winner is None and not outcome.filled
    assert outcome.clearing_price_micros is None and outcome.clearing_price_cpm_micros is None
    assert outcome.filtered == Counter({"below floor": 1})
    assert auction([], []).winner is None


def test_pctrs_must_align_with_candidates_and_be_probabilities() -> None:
    with pytest.raises(ValueError, match="aligned"):
        auction([make_campaign()], [0.1, 0.2])
    for bad in (1.5, -0.1, float("nan")):
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            auction([make_campaign()], [bad])
    assert auction([make_campaign()], np.array([0.25])).pctr == 0.25


# --- eligibility ------------------------------------------------------------------------------


def only_reason(campaign: ServingCampaign, context: AuctionContext, **kwargs: object) -> Counter[str]:
    kept, filtered = eligible(
        context,
        [campaign],
        impressions_today=kwargs.get("impressions_today", {}),  # type: ignore[arg-type]
        reserved_micros=kwargs.get("reserved_micros", {}),  # type: ignore[arg-type]
    )
    assert kept == ([] if filtered else [campaign])
    return filtered


@pytest.mark.parametrize(
    ("campaign_overrides", "context_overrides", "reason"),
    [
        ({"status": CampaignStatus.PAUSED}, {}, "status"),
        ({"status": CampaignStatus.STOPPED}, {}, "status"),
        ({"category": "Betting"}, {"blocked_categories": frozenset({"Betting"})}, "blocked category"),
        ({"advertiser_id": "adv-9"}, {"blocked_advertisers": frozenset({"adv-9"})}, "blocked advertiser"),
        ({"countries": frozenset({"Canada"})}, {"country": "Italy"}, "country targeting"),
        ({"countries": frozenset({"Canada"})}, {}, "country targeting"),  # unstated country
        ({"age_min": 25, "age_max": 34}, {"age": 24}, "age targeting"),
        ({"age_min": 25, "age_max": 34}, {"age": 35}, "age targeting"),
        ({"age_max": 34}, {}, "age targeting"),  # unstated age
        ({"genders": frozenset({"F"})}, {"gender": "M"}, "gender targeting"),
        ({"genders": frozenset({"F"})}, {}, "gender targeting"),
        ({"device_types": frozenset({"ctv"})}, {"device_type": "mobile"}, "device type targeting"),
        ({"device_types": frozenset({"ctv"})}, {}, "device type targeting"),
    ],
)
def test_each_rule_filters_with_its_reason(
    campaign_overrides: dict[str, object], context_overrides: dict[str, object], reason: str
) -> None:
    assert only_reason(make_campaign(**campaign_overrides), make_context(**context_overrides)) == Counter({reason: 1})


def test_an_audience_split_serves_its_own_arm_of_the_experiments_users_only() -> None:
    # The arm is the documented hash: blake2b-64 of "experiment NUL user id", big-endian, modulo the arms.
    def arm(experiment: str, arms: int, user_id: str) -> int:
        digest = hashlib.blake2b(f"{experiment}\x00{user_id}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") % arms

    users = [f"u{i}" for i in range(2_000)]
    arms = Counter(arm("exp", 2, user) for user in users)
    assert 900 <= arms[0] <= 1_100  # about half the users in each arm
    # Another experiment splits the same users independently: about half of arm 0 is in its arm 0.
    assert 400 <= sum(arm("exp", 2, u) == 0 and arm("other", 2, u) == 0 for u in users) <= 600
    a = make_campaign("a", audience_split=AudienceSplit(experiment="exp", arm=0))
    b = make_campaign("b", audience_split=AudienceSplit(experiment="exp", arm=1))
    for user in users[:50]:
        in_arm = arm("exp", 2, user)
        kept, filtered = eligible(make_context(user_id=user), [a, b], impressions_today={}, reserved_micros={})
        assert kept == [(a, b)[in_arm]] and filtered == Counter({"audience split": 1})
    # No user id: in no arm.
    assert eligible(make_context(), [a, b], impressions_today={}, reserved_micros={})[1] == Counter(
        {"audience split": 2}
    )


def test_an_audience_split_names_an_arm_of_its_experiment() -> None:
    with pytest.raises(ValueError, match="arm 2 is not one of the experiment's 2 arms"):
        AudienceSplit(experiment="exp", arm=2)
    with pytest.raises(ValueError):
        AudienceSplit(experiment="", arm=0)


def test_matching_targeting_is_eligible() -> None:
    campaign = make_campaign(
        countries=frozenset({"Canada", "Italy"}),
        age_min=25,
        age_max=34,
        genders=frozenset({"F"}),
        device_types=frozenset({"mobile", "tablet"}),
    )
    for age in (25, 34):
        context = make_context(country="Italy", age=age, gender="F", device_type="tablet")
        assert only_reason(campaign, context) == Counter()
    # No targeting: any request, even one that states nothing.
    assert only_reason(make_campaign(), make_context()) == Counter()


def test_flight_dates_include_the_start_and_exclude_the_end() -> None:
    start, end = datetime(2024, 6, 1, tzinfo=UTC), datetime(2024, 6, 2, tzinfo=UTC)
    campaign = make_campaign(flight_start=start, flight_end=end)
    assert only_reason(campaign, make_context(at=start)) == Counter()
    assert only_reason(campaign, make_context(at=end - timedelta(microseconds=1))) == Counter()
    assert only_reason(campaign, make_context(at=end)) == Counter({"flight dates": 1})
    assert only_reason(campaign, make_context(at=start - timedelta(microseconds=1))) == Counter({"flight dates": 1})


def test_budgets_and_reserved_exposure() -> None:
    context = make_context()
    total = make_campaign(total_budget_micros=50_000_000, daily_budget_micros=10_000_000)
    assert only_reason(dataclasses.replace(total, spent_micros=50_000_000), context) == Counter({"total budget": 1})
    assert only_reason(dataclasses.replace(total, spent_micros=49_999_999), context) == Counter()
    # 50_000_000 - 49_000_000 spent - 1_000_000 in flight = 0 left.
    spent = dataclasses.replace(total, spent_micros=49_000_000)
    assert only_reason(spent, context, reserved_micros={"c1": 1_000_000}) == Counter({"total budget": 1})
    assert only_reason(spent, context, reserved_micros={"c1": 999_999, "other": 10**9}) == Counter()

    assert only_reason(dataclasses.replace(total, spent_today_micros=10_000_000), context) == Counter(
        {"daily budget": 1}
    )
    # 10_000_000 - 9_500_000 spent today - 500_000 in flight = 0 left today.
    today = dataclasses.replace(total, spent_today_micros=9_500_000)
    assert only_reason(today, context, reserved_micros={"c1": 500_000}) == Counter({"daily budget": 1})
    assert only_reason(today, context, reserved_micros={"c1": 499_999}) == Counter()


def test_frequency_cap_counts_this_users_impressions_today() -> None:
    campaign = make_campaign(frequency_cap_per_day=3)
    assert only_reason(campaign, make_context(), impressions_today={"c1": 2}) == Counter()
    assert only_reason(campaign, make_context(), impressions_today={"c1": 3}) == Counter({"frequency cap": 1})
    assert only_reason(campaign, make_context(), impressions_today={"c2": 3}) == Counter()


def test_a_campaign_counts_once_under_its_first_failing_rule() -> None:
    campaigns = [
        make_campaign("paused-and-blocked", status=CampaignStatus.PAUSED, category="Betting"),
        make_campaign("blocked-and-broke", category="Betting", spent_micros=100_000_000),
        make_campaign("ok"),
    ]
    kept, filtered = eligible(
        make_context(blocked_categories=frozenset({"Betting"})), campaigns, impressions_today={}, reserved_micros={}
    )
    assert [c.campaign_id for c in kept] == ["ok"]
    assert filtered == Counter({"status": 1, "blocked category": 1})
    assert FilterReason.STATUS == "status"


def test_budgets_beyond_int64_are_compared_exactly() -> None:
    huge = 2**70
    campaign = make_campaign(total_budget_micros=huge, daily_budget_micros=huge, spent_micros=huge - 5)
    assert only_reason(campaign, make_context(), reserved_micros={"c1": 4}) == Counter()
    assert only_reason(campaign, make_context(), reserved_micros={"c1": 5}) == Counter({"total budget": 1})
    # And a reservation beyond int64 against an ordinary budget.
    assert only_reason(make_campaign(), make_context(), reserved_micros={"c1": 2**64}) == Counter({"total budget": 1})


def first_failed_rule(
    context: AuctionContext, campaign: ServingCampaign, impressions: dict[str, int], reserved: dict[str, int]
) -> str | None:
    """The rules of the module docstring, one campaign at a time: the oracle for ``CampaignIndex``."""
    age_targeted = campaign.age_min is not None or campaign.age_max is not None
    in_age_range = context.age is not None and (campaign.age_min or 0) <= context.age <= (campaign.age_max or 999)
    held = reserved.get(campaign.campaign_id, 0)
    split = campaign.audience_split
    rules = [
        ("status", campaign.status != CampaignStatus.ACTIVE),
        ("flight dates", not campaign.flight_start <= context.at < campaign.flight_end),
        ("blocked category", campaign.category in context.blocked_categories),
        ("blocked advertiser", campaign.advertiser_id in context.blocked_advertisers),
        ("country targeting", bool(campaign.countries) and context.country not in campaign.countries),
        ("age targeting", age_targeted and not in_age_range),
        ("gender targeting", bool(campaign.genders) and context.gender not in campaign.genders),
        ("device type targeting", bool(campaign.device_types) and context.device_type not in campaign.device_types),
        (
            "audience split",
            split is not None and audience_arm(split.experiment, split.arms, context.user_id) != split.arm,
        ),
        ("total budget", campaign.total_budget_micros - campaign.spent_micros - held <= 0),
        ("daily budget", campaign.daily_budget_micros - campaign.spent_today_micros - held <= 0),
        ("frequency cap", impressions.get(campaign.campaign_id, 0) >= campaign.frequency_cap_per_day),
    ]
    return next((reason for reason, fails in rules if fails), None)


def subsets(values: tuple[str, ...]) -> st.SearchStrategy[frozenset[str]]:
    return st.frozensets(st.sampled_from(values))


SPLITS = [AudienceSplit(experiment="x", arm=0), AudienceSplit(experiment="x", arm=1),
          AudienceSplit(experiment="y", arm=2, arms=3)]  # fmt: skip
campaign_fields = st.fixed_dictionaries(
    {
        "status": st.sampled_from(list(CampaignStatus)),
        "category": st.sampled_from(["Automotive", "Betting", "Travel"]),
        "advertiser_id": st.sampled_from(["adv-1", "adv-2"]),
        "flight_start": st.sampled_from([AT - timedelta(days=1), AT, AT + timedelta(microseconds=1)]),
        "flight_end": st.sampled_from([AT, AT + timedelta(microseconds=1), AT + timedelta(days=3)]),
        "countries": subsets(("Canada", "Italy", "Chad")),
        "age_min": st.sampled_from([None, 18, 25, 35]),
        "age_max": st.sampled_from([None, 24, 34, 54]),
        "genders": subsets(("F", "M")),
        "device_types": subsets(("mobile", "desktop", "ctv")),
        "audience_split": st.sampled_from([None, *SPLITS]),
        "total_budget_micros": st.integers(min_value=1, max_value=5),
        "daily_budget_micros": st.integers(min_value=1, max_value=5),
        "spent_micros": st.integers(min_value=0, max_value=5),
        "spent_today_micros": st.integers(min_value=0, max_value=5),
        "frequency_cap_per_day": st.integers(min_value=1, max_value=3),
    }
)
contexts = st.builds(
    make_context,
    at=st.sampled_from([AT, AT + timedelta(days=2)]),
    country=st.sampled_from([None, "Canada", "Italy", "Norway"]),
    age=st.sampled_from([None, 18, 24, 25, 40, 60]),
    gender=st.sampled_from([None, "F", "M"]),
    device_type=st.sampled_from([None, "mobile", "tablet", "ctv"]),
    user_id=st.sampled_from([None, "u1", "u2", "u3", "u4"]),
    blocked_categories=subsets(("Betting", "Travel", "Gambling")),
    blocked_advertisers=subsets(("adv-2", "adv-9")),
)


@settings(max_examples=300, deadline=None)
@given(
    fields=st.lists(campaign_fields, max_size=25),
    context=contexts,
    held=st.lists(st.integers(min_value=0, max_value=4), max_size=25),
    seen=st.lists(st.integers(min_value=0, max_value=3), max_size=25),
)
def test_the_campaign_index_applies_every_rule_like_the_rules_one_by_one(
    fields: list[dict[str, object]], context: AuctionContext, held: list[int], seen: list[int]
) -> None:
    campaigns = [make_campaign(f"c{i}", **values) for i, values in enumerate(fields)]
    reserved = {f"c{i}": amount for i, amount in enumerate(held) if amount} | {"not-serving": 10**9}
    impressions = {f"c{i}": count for i, count in enumerate(seen) if count}
    expected = {c.campaign_id: first_failed_rule(context, c, impressions, reserved) for c in campaigns}

    index = CampaignIndex.build(tuple(campaigns))
    rows, filtered = index.eligible_rows(context, impressions_today=impressions, reserved_micros=reserved)
    assert index.take(rows) == [c for c in campaigns if expected[c.campaign_id] is None]
    assert filtered == Counter(reason for reason in expected.values() if reason is not None)
    # The reservations as an array by row (how the service passes them) decide the same.
    by_row = np.array([reserved.get(c.campaign_id, 0) for c in campaigns], dtype=np.int64)
    rows_by_array, filtered_by_array = index.eligible_rows(
        context, impressions_today=impressions, reserved_micros=reserved, held_by_row=by_row
    )
    assert rows_by_array.tolist() == rows.tolist() and filtered_by_array == filtered


def test_the_index_of_a_snapshot_is_built_once() -> None:
    campaigns = (make_campaign("c1"), make_campaign("c2"))
    index = CampaignIndex.of(campaigns)
    assert CampaignIndex.of(campaigns) is index
    assert CampaignIndex.of((make_campaign("c1"),)) is not index


def test_a_reload_that_changed_spend_only_updates_those_rows_of_the_index() -> None:
    campaigns = (make_campaign("c1"), make_campaign("c2"), make_campaign("c3"))
    index = CampaignIndex.of(campaigns)
    c2 = dataclasses.replace(campaigns[1], spent_micros=100_000_000, spent_today_micros=4_000_000)  # budget spent
    c3 = dataclasses.replace(campaigns[2], spent_today_micros=9_000_000)
    charged = (campaigns[0], c2, c3)
    updated = CampaignIndex.of(charged)
    assert updated is not index and updated.by_age is index.by_age  # updated, not rebuilt
    assert updated.total_left.tolist() == [100_000_000, 0, 100_000_000]
    assert updated.daily_left.tolist() == [10_000_000, 6_000_000, 1_000_000]
    rows, filtered = updated.eligible_rows(make_context(), impressions_today={}, reserved_micros={"c3": 1_000_000})
    assert updated.take(rows) == [campaigns[0]]
    assert filtered == Counter({FilterReason.TOTAL_BUDGET: 1, FilterReason.DAILY_BUDGET: 1})
    rebid = CampaignIndex.of((campaigns[0], c2, dataclasses.replace(c3, bid_micros=1)))
    assert rebid.by_age is not index.by_age and rebid.bids.cpm.tolist() == [5_000_000, 5_000_000, 1]


# --- the auctions record ------------------------------------------------------------------------


def test_auction_record_of_a_filled_and_an_empty_auction() -> None:
    context = make_context(user_id="u1", country="Italy", age=30, gender="F", device_type="mobile", channel="web")
    context = dataclasses.replace(context, content_type="display", floor_cpm_micros=1_000_000)
    winner = make_campaign("c-cpc", pricing_model=PricingModel.CPC, bid_micros=500_000, category="Grocery")
    runner_up = make_campaign("c-cpm", bid_micros=6_000_000)
    outcome = run_auction(context, [winner, runner_up], [0.02, 0.3], reserve_price_micros=RESERVE)
    record = auction_record(context, outcome, model_version="7", latency_ms=1.5)
    assert record == AuctionRecord(
        auction_id="auction-1",
        event_time=AT,
        user_id="u1",
        country="Italy",
        age=30,
        gender="F",
        device_type="mobile",
        channel="web",
        content_type="display",
        floor_micros=1_000_000,
        candidate_count=2,
        filled=True,
        campaign_id="c-cpc",
        advertiser_id="adv-1",
        ad_id="ad-c-cpc",
        ad_category="Grocery",
        pricing_model="CPC",
        bid_micros=500_000,
        clearing_price_micros=300_500,  # (6_000_000 + 10_000) / 20
        pctr=0.02,
        ecpm_micros=10_000_000,
        runner_up_ecpm_micros=6_000_000,
        model_version="7",
        latency_ms=1.5,
        clearing_price_cpm_micros=6_010_000,  # 300_500 per click x 0.02 x 1000
    )
    deal = dataclasses.replace(
        context, deals={"c-cpc": ("D-7", 1_000_000)}, request_id="req-9", imp_id="2", domain="news.example",
        placement="300x250", bid_filter_score=0.8, bid_filter_explored=True,
    )  # fmt: skip
    record = auction_record(deal, run_auction(deal, [winner], [0.02], reserve_price_micros=RESERVE), model_version="7",
                            latency_ms=1.5)  # fmt: skip
    assert (record.deal_id, record.request_id, record.imp_id, record.domain, record.placement) == (
        "D-7", "req-9", "2", "news.example", "300x250"
    )  # fmt: skip
    assert (record.bid_filter_score, record.bid_filter_explored) == (0.8, True)
    empty = run_auction(context, [], [], reserve_price_micros=RESERVE)
    record = auction_record(context, empty, model_version=None, latency_ms=0.2)
    assert (record.filled, record.campaign_id, record.clearing_price_micros, record.floor_micros) == (
        False,
        None,
        None,
        1_000_000,
    )


# --- properties ----------------------------------------------------------------------------------

PPB = 10**9  # the auction rounds pCTR and pCVR to billionths; the strategies draw them as billionths


def value_per_micro(model: PricingModel, pctr_ppb: int, pcvr_ppb: int) -> Fraction:
    """Exact eCPM micros per micro of price, from the definitions (CPC: pCTR x 1000; CPA: pCTR x pCVR x 1000)."""
    if model == PricingModel.CPM:
        return Fraction(1)
    if model == PricingModel.CPC:
        return Fraction(pctr_ppb, PPB) * 1000
    return Fraction(pctr_ppb, PPB) * Fraction(pcvr_ppb, PPB) * 1000


bidder = st.tuples(
    st.sampled_from(list(PricingModel)),
    st.integers(min_value=1, max_value=50_000_000),  # bid micros
    st.integers(min_value=0, max_value=PPB // 5),  # pCTR in billionths, up to 0.2
)
bidders = st.lists(bidder, min_size=1, max_size=6)


@settings(max_examples=400, deadline=None)
@given(
    bidders=bidders,
    floor=st.integers(min_value=0, max_value=20_000_000),
    reserve=st.integers(min_value=0, max_value=100_000),
    pcvr_ppb=st.integers(min_value=1, max_value=PPB),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_second_price_properties(
    bidders: list[tuple[PricingModel, int, int]], floor: int, reserve: int, pcvr_ppb: int, seed: int
) -> None:
    check_second_price(bidders, floor, reserve, pcvr_ppb, seed)


# Hundreds of candidates whose eCPMs tie or differ by a micro, around a floor that sometimes equals one
# of them: where the auction's float estimates of eCPM must hand the decision to exact integers.
crowded_bidders = st.integers(min_value=1, max_value=50_000_000).flatmap(
    lambda base_bid: st.lists(
        st.tuples(
            st.sampled_from(list(PricingModel)),
            st.integers(min_value=base_bid, max_value=base_bid + 3),
            st.sampled_from([0, 1, PPB // 10, PPB // 10 + 1, PPB // 3, PPB]),
        ),
        min_size=2,
        max_size=300,
    )
)


@settings(max_examples=150, deadline=None)
@given(bidders=crowded_bidders, floor_pick=st.integers(min_value=0), pcvr_ppb=st.sampled_from([1, PPB // 20, PPB]))
def test_second_price_properties_with_many_near_ties(
    bidders: list[tuple[PricingModel, int, int]], floor_pick: int, pcvr_ppb: int
) -> None:
    ecpms = sorted(math.floor(bid * value_per_micro(model, ppb, pcvr_ppb)) for model, bid, ppb in bidders)
    floor = ecpms[floor_pick % len(ecpms)]  # exactly some candidate's eCPM
    check_second_price(bidders, floor, 0, pcvr_ppb, floor_pick)


def check_second_price(
    bidders: list[tuple[PricingModel, int, int]], floor: int, reserve: int, pcvr_ppb: int, seed: int
) -> None:
    campaigns = [
        make_campaign(f"c{i}", pricing_model=model, bid_micros=bid) for i, (model, bid, _) in enumerate(bidders)
    ]
    pctr = [ppb / PPB for _, _, ppb in bidders]
    outcome = auction(campaigns, pctr, floor=floor, reserve=reserve, pcvr=pcvr_ppb / PPB)

    effective_floor = max(floor, reserve)
    values = {
        c.campaign_id: value_per_micro(c.pricing_model, ppb, pcvr_ppb)
        for c, (_, _, ppb) in zip(campaigns, bidders, strict=True)
    }
    ecpm = {c.campaign_id: math.floor(c.bid_micros * values[c.campaign_id]) for c in campaigns}
    above = [c for c in campaigns if c.bid_micros * values[c.campaign_id] >= effective_floor]
    assert outcome.above_floor_count == len(above)
    if not above:
        assert outcome.winner is None
        return

    winner = outcome.winner
    assert winner is not None
    value = values[winner.campaign_id]
    assert outcome.ecpm_micros == ecpm[winner.campaign_id]
    # The winner has the maximal eCPM among the candidates above the floor.
    assert all(ecpm[winner.campaign_id] >= ecpm[c.campaign_id] for c in above)
    others = [c for c in above if c is not winner]
    assert outcome.runner_up_ecpm_micros == (max(ecpm[c.campaign_id] for c in others) if others else None)

    price = outcome.clearing_price_micros
    assert price is not None
    # Never above the bid, never below the floor converted to the winner's unit.
    assert price <= winner.bid_micros
    assert price * value >= effective_floor
    # Its eCPM at the price keeps its rank: at or above the runner-up's plus one cent, unless capped at the bid.
    needed = effective_floor if not others else outcome.runner_up_ecpm_micros + 10_000  # type: ignore[operator]
    assert price * value >= needed or price == winner.bid_micros
    # And it is the least such price: one micro less would not keep the rank.
    assert price == 0 or (price - 1) * value < needed
    # Per thousand impressions, the price sits between the floor and the winner's eCPM.
    assert effective_floor <= outcome.clearing_price_cpm_micros <= ecpm[winner.campaign_id]  # type: ignore[operator]

    # The input order does not matter.
    order = list(range(len(campaigns)))
    random.Random(seed).shuffle(order)
    shuffled = auction(
        [campaigns[i] for i in order], [pctr[i] for i in order], floor=floor, reserve=reserve, pcvr=pcvr_ppb / PPB
    )
    assert (shuffled.winner, shuffled.clearing_price_micros) == (winner, price)


# --- pacing ---------------------------------------------------------------------------------------

PACED = 1_000_000  # λ = 1 in millionths


def paced(candidates: list[ServingCampaign], pctr: list[float], pacing: list[int], **kwargs: object) -> AuctionOutcome:
    return auction(candidates, pctr, pacing_ppm=np.array(pacing, dtype=np.int64), **kwargs)


def test_pacing_can_hand_the_auction_to_an_unpaced_runner_up() -> None:
    high = make_campaign("c-high", bid_micros=5_000_000)  # paced at 0.5: 2_500_000
    low = make_campaign("c-low", bid_micros=3_000_000)  # unpaced: 3_000_000
    outcome = paced([high, low], [0.1, 0.1], [500_000, PACED])
    assert outcome.winner == low
    assert (outcome.ecpm_micros, outcome.runner_up_ecpm_micros) == (3_000_000, 2_500_000)
    assert outcome.clearing_price_micros == 2_510_000  # 2_500_000 + 10_000


def test_a_paced_runner_up_lowers_the_price() -> None:
    high = make_campaign("c-high", bid_micros=5_000_000)  # paced at 0.8: 4_000_000
    low = make_campaign("c-low", bid_micros=3_000_000)  # paced at 0.5: 1_500_000
    outcome = paced([high, low], [0.1, 0.1], [800_000, 500_000])
    assert outcome.winner == high
    assert (outcome.ecpm_micros, outcome.runner_up_ecpm_micros) == (4_000_000, 1_500_000)
    assert outcome.clearing_price_micros == 1_510_000  # unpaced it would be 3_010_000


def test_a_paced_cpc_winner_pays_the_unpaced_runner_up_price() -> None:
    # CPC $0.50 at pCTR 0.02 is eCPM 10_000_000; paced at 0.7: 7_000_000, still above the CPM 6_000_000.
    winner = make_campaign("c-cpc", pricing_model=PricingModel.CPC, bid_micros=500_000)
    runner_up = make_campaign("c-cpm", bid_micros=6_000_000)
    outcome = paced([winner, runner_up], [0.02, 0.5], [700_000, PACED])
    assert outcome.winner == winner and outcome.ecpm_micros == 7_000_000
    # One micro per click is worth 20 eCPM micros: 6_010_000 / 20 = 300_500 per click, as unpaced.
    assert outcome.clearing_price_micros == 300_500
    assert outcome.clearing_price_cpm_micros == 6_010_000
    # First price charges the paced bid: 500_000 x 0.7.
    assert paced([winner, runner_up], [0.02, 0.5], [700_000, PACED], first_price=True).clearing_price_micros == 350_000


def test_a_close_runner_up_caps_the_price_at_the_paced_bid_rounded_up() -> None:
    # 5_000_001 x 0.6 = 3_000_000.6: paced eCPM 3_000_000; the runner-up's 2_995_000 + 10_000 = 3_005_000 is out of
    # reach, so the winner pays its paced bid rounded up to a whole micro: 3_000_001 (below its bid of 5_000_001).
    winner = make_campaign("c-a", bid_micros=5_000_001)
    runner_up = make_campaign("c-b", bid_micros=2_995_000)
    outcome = paced([winner, runner_up], [0.1, 0.1], [600_000, PACED])
    assert (outcome.winner, outcome.ecpm_micros) == (winner, 3_000_000)
    assert outcome.clearing_price_micros == 3_000_001


def test_pacing_applies_before_the_floor() -> None:
    # CPM 3_000_000 paced at 0.5 is 1_500_000, below the 2_000_000 floor; the CPC at pCTR 0.03 is worth 30 eCPM
    # micros per micro: 500_000 x 30 x 0.5 = 7_500_000 clears it and pays the floor, 2_000_000 / 30 -> 66_667.
    cpm = make_campaign("c-cpm", bid_micros=3_000_000)
    cpc = make_campaign("c-cpc", pricing_model=PricingModel.CPC, bid_micros=500_000)
    outcome = paced([cpm, cpc], [0.5, 0.03], [500_000, 500_000], floor=2_000_000)
    assert outcome.winner == cpc and outcome.ecpm_micros == 7_500_000
    assert outcome.runner_up_ecpm_micros is None
    assert outcome.clearing_price_micros == 66_667
    assert outcome.filtered == Counter({"below floor": 1})


def test_pacing_multipliers_must_align_and_be_in_range() -> None:
    campaign = make_campaign()
    with pytest.raises(ValueError, match="aligned"):
        paced([campaign], [0.1], [PACED, PACED])
    for bad in (0, -1, PACED + 1):
        with pytest.raises(ValueError, match="pacing multiplier"):
            paced([campaign], [0.1], [bad])
    with pytest.raises(ValueError, match="integer"):
        auction([campaign], [0.1], pacing_ppm=np.array([0.5]))


pacing = st.one_of(st.integers(min_value=1, max_value=PACED), st.sampled_from([1, PACED - 1, PACED]))  # λ
paced_bidders = st.lists(st.builds(lambda bid, lam: (*bid, lam), bidder, pacing), min_size=1, max_size=6)


@settings(max_examples=400, deadline=None)
@given(
    bidders=paced_bidders,
    floor=st.integers(min_value=0, max_value=20_000_000),
    reserve=st.integers(min_value=0, max_value=100_000),
    pcvr_ppb=st.integers(min_value=1, max_value=PPB),
)
def test_paced_second_price_properties(
    bidders: list[tuple[PricingModel, int, int, int]], floor: int, reserve: int, pcvr_ppb: int
) -> None:
    """The pacing rule of the module docstring, from exact fractions: a candidate bids λ x its bid."""
    campaigns = [
        make_campaign(f"c{i}", pricing_model=model, bid_micros=bid) for i, (model, bid, *_) in enumerate(bidders)
    ]
    pctr = [ppb / PPB for _, _, ppb, _ in bidders]
    pacing = [ppm for *_, ppm in bidders]
    outcome = paced(campaigns, pctr, pacing, floor=floor, reserve=reserve, pcvr=pcvr_ppb / PPB)

    effective_floor = max(floor, reserve)
    value = {
        c.campaign_id: value_per_micro(c.pricing_model, b[2], pcvr_ppb) for c, b in zip(campaigns, bidders, strict=True)
    }
    paced_bid = {c.campaign_id: Fraction(c.bid_micros * ppm, PACED) for c, ppm in zip(campaigns, pacing, strict=True)}
    paced_value = {c.campaign_id: paced_bid[c.campaign_id] * value[c.campaign_id] for c in campaigns}
    paced_ecpm = {campaign_id: math.floor(exact) for campaign_id, exact in paced_value.items()}
    above = [c for c in campaigns if paced_value[c.campaign_id] >= effective_floor]
    assert outcome.above_floor_count == len(above)
    if not above:
        assert outcome.winner is None
        return

    winner = outcome.winner
    assert winner is not None
    win_id = winner.campaign_id
    assert outcome.ecpm_micros == paced_ecpm[win_id]
    assert all(paced_ecpm[win_id] >= paced_ecpm[c.campaign_id] for c in above)  # maximal paced eCPM
    others = [c for c in above if c is not winner]
    assert outcome.runner_up_ecpm_micros == (max(paced_ecpm[c.campaign_id] for c in others) if others else None)

    price = outcome.clearing_price_micros
    assert price is not None
    cap = math.ceil(paced_bid[win_id])  # the paced bid, rounded up to a whole micro
    assert price <= cap <= winner.bid_micros
    assert price * value[win_id] >= effective_floor
    needed = effective_floor if not others else outcome.runner_up_ecpm_micros + 10_000  # type: ignore[operator]
    assert price * value[win_id] >= needed or price == cap
    # Minimal for its rank: one micro less would not reach the runner-up's paced eCPM + a cent (or the floor).
    assert price == 0 or (price - 1) * value[win_id] < needed
    assert outcome.clearing_price_cpm_micros is not None
    # Per thousand impressions: at least the floor; above the paced eCPM only by the rounding up of the paced bid.
    assert effective_floor <= outcome.clearing_price_cpm_micros
    assert outcome.clearing_price_cpm_micros <= paced_ecpm[win_id] or price > paced_bid[win_id]
    assert outcome.clearing_price_cpm_micros <= paced_value[win_id] + value[win_id]

    # Pacing never makes a winner pay more: unpaced, the same campaign would pay at least as much.
    unpaced = auction(campaigns, pctr, floor=floor, reserve=reserve, pcvr=pcvr_ppb / PPB)
    if unpaced.winner == winner:
        assert unpaced.clearing_price_micros is not None and price <= unpaced.clearing_price_micros


@settings(max_examples=200, deadline=None)
@given(bidders=bidders, floor=st.integers(min_value=0, max_value=20_000_000), pcvr_ppb=st.integers(1, PPB))
def test_unpaced_multipliers_are_no_pacing(
    bidders: list[tuple[PricingModel, int, int]], floor: int, pcvr_ppb: int
) -> None:
    campaigns = [
        make_campaign(f"c{i}", pricing_model=model, bid_micros=bid) for i, (model, bid, _) in enumerate(bidders)
    ]
    pctr = [ppb / PPB for _, _, ppb in bidders]
    for first_price in (False, True):
        plain = auction(campaigns, pctr, floor=floor, pcvr=pcvr_ppb / PPB, first_price=first_price)
        ones = paced(
            campaigns, pctr, [PACED] * len(campaigns), floor=floor, pcvr=pcvr_ppb / PPB, first_price=first_price
        )
        assert ones == plain


# Hundreds of paced candidates whose paced eCPMs tie or differ by a micro, around a floor equal to one of
# them: the float estimates, scaled by λ, must still hand every close call to exact integers.
crowded_paced = st.integers(min_value=1, max_value=50_000_000).flatmap(
    lambda base_bid: st.lists(
        st.tuples(
            st.sampled_from(list(PricingModel)),
            st.integers(min_value=base_bid, max_value=base_bid + 3),
            st.sampled_from([0, 1, PPB // 10, PPB // 10 + 1, PPB // 3, PPB]),
            st.sampled_from([1, 333_333, 500_000, 500_001, 999_999, PACED]),
        ),
        min_size=2,
        max_size=300,
    )
)


@settings(max_examples=100, deadline=None)
@given(bidders=crowded_paced, floor_pick=st.integers(min_value=0), pcvr_ppb=st.sampled_from([1, PPB // 20, PPB]))
def test_paced_auction_with_many_near_ties_picks_the_exact_best(
    bidders: list[tuple[PricingModel, int, int, int]], floor_pick: int, pcvr_ppb: int
) -> None:
    exact = [Fraction(bid * ppm, PACED) * value_per_micro(model, ppb, pcvr_ppb) for model, bid, ppb, ppm in bidders]
    ecpms = [math.floor(value) for value in exact]
    floor = sorted(ecpms)[floor_pick % len(ecpms)]  # exactly some candidate's paced eCPM
    campaigns = [
        make_campaign(f"c{i:03}", pricing_model=model, bid_micros=bid) for i, (model, bid, *_) in enumerate(bidders)
    ]
    outcome = paced(
        campaigns,
        [ppb / PPB for _, _, ppb, _ in bidders],
        [ppm for *_, ppm in bidders],
        floor=floor,
        reserve=0,
        pcvr=pcvr_ppb / PPB,
    )
    kept = [i for i, value in enumerate(exact) if value >= floor]
    assert outcome.above_floor_count == len(kept)
    best = max(ecpms[i] for i in kept)
    # Ties go to the higher pCTR, then the smaller campaign id.
    expected = min((i for i in kept if ecpms[i] == best), key=lambda i: (-bidders[i][2], campaigns[i].campaign_id))
    assert outcome.winner == campaigns[expected]
    rest = [ecpms[i] for i in kept if i != expected]
    assert outcome.runner_up_ecpm_micros == (max(rest) if rest else None)


# --- the optimizer's bids -------------------------------------------------------------------------

placed_bidders = st.lists(
    st.tuples(bidder, st.integers(min_value=1, max_value=50_000_000), pacing), min_size=1, max_size=6
)


@settings(max_examples=300, deadline=None)
@given(bidders=placed_bidders, floor=st.integers(min_value=0, max_value=20_000_000), pcvr_ppb=st.integers(1, PPB))
def test_placed_bids_auction_as_if_they_were_the_campaigns_bids(
    bidders: list[tuple[tuple[PricingModel, int, int], int, int]], floor: int, pcvr_ppb: int
) -> None:
    """The optimizer's bid replaces the campaign's everywhere: the same outcome as campaigns bidding it, paced
    or not, second or first price; the record carries the bid placed."""
    base = [make_campaign(f"c{i}", pricing_model=m, bid_micros=bid) for i, ((m, bid, _), _, _) in enumerate(bidders)]
    as_bid = [dataclasses.replace(c, bid_micros=placed) for c, (_, placed, _) in zip(base, bidders, strict=True)]
    pctr = [ppb / PPB for (_, _, ppb), _, _ in bidders]
    placed = np.array([placed for _, placed, _ in bidders], dtype=np.int64)
    lam = np.array([ppm for *_, ppm in bidders], dtype=np.int64)
    for first_price in (False, True):
        for pacing_ppm in (None, lam):
            kwargs = {"floor": floor, "pcvr": pcvr_ppb / PPB, "first_price": first_price, "pacing_ppm": pacing_ppm}
            with_placed = auction(base, pctr, bid_micros=placed, **kwargs)
            expected = auction(as_bid, pctr, **kwargs)
            assert (with_placed.winner is None) == (expected.winner is None)
            if expected.winner is None:
                continue
            assert with_placed.winner.campaign_id == expected.winner.campaign_id
            assert with_placed.clearing_price_micros == expected.clearing_price_micros
            assert (with_placed.ecpm_micros, with_placed.runner_up_ecpm_micros) == (
                expected.ecpm_micros, expected.runner_up_ecpm_micros,
            )  # fmt: skip
            assert with_placed.placed_bid_micros == expected.winner.bid_micros
            record = auction_record(make_context(), with_placed, model_version="1", latency_ms=1.0)
            assert record.bid_micros == expected.winner.bid_micros


def test_placed_bids_must_align_and_be_in_range() -> None:
    campaign = make_campaign("c1")
    for bad in (np.array([1, 2]), np.array([0]), np.array([1.5]), np.array([10**10])):
        with pytest.raises(ValueError, match="bid"):
            auction([campaign], [0.1], bid_micros=bad)
