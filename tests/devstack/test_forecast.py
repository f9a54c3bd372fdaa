"""make run's delivery forecast: probe campaigns unbounded, budgets booked from what each won."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from adstream.events import PacingMode
from devstack import forecast

NOW = datetime(2026, 12, 6, 9, tzinfo=UTC)
CATALOG = [{"ad_id": f"ad-{i:03d}", "source": "amazon", "category": f"cat-{i % 4}", "title": "t"} for i in range(30)]


def test_the_probe_serves_every_campaign_unpaced_with_a_budget_no_probe_spends():
    probe = forecast.probe_instructions(CATALOG, 12, seed=7, now=NOW)
    assert len(probe) == 12
    assert {i.campaign.pacing_mode for i in probe} == {PacingMode.ASAP}
    assert {i.campaign.daily_budget_micros for i in probe} == {10_000_000_000}


def test_budgets_are_the_pressure_share_of_what_each_won_scaled_to_the_day():
    spend = {"a": 2_000_000, "b": 333_333, "c": 0}  # "d" did not appear in the ledger at all
    budgets = forecast.booked_budgets(
        spend, ["a", "b", "c", "d"], probe_auctions=1_000, day_auctions=20_000, pressure=0.5
    )
    # a: 0.5 x 2 USD x 20 = 20 USD; b: 0.5 x 0.333333 x 20 = 3.33333 -> 3.33 (whole cents, down);
    # c and d won nothing: the smallest budget booked.
    assert budgets == {"a": 20_000_000, "b": 3_330_000, "c": 3_330_000, "d": 3_330_000}


def test_a_forecast_where_nobody_won_books_a_cent_and_bad_inputs_are_refused():
    assert forecast.booked_budgets({}, ["a"], probe_auctions=10, day_auctions=10, pressure=0.6) == {"a": 10_000}
    with pytest.raises(ValueError, match="auctions"):
        forecast.booked_budgets({}, ["a"], probe_auctions=0, day_auctions=10, pressure=0.6)
    with pytest.raises(ValueError, match="pressure"):
        forecast.booked_budgets({}, ["a"], probe_auctions=10, day_auctions=10, pressure=1.5)


def test_booking_keeps_each_campaign_under_a_new_id_with_its_budget_and_a_mode():
    probe = forecast.probe_instructions(CATALOG, 10, seed=7, now=NOW)
    budgets = {i.campaign_id: 1_000_000 * (n + 1) for n, i in enumerate(probe)}
    booked = forecast.booked_instructions(CATALOG, probe, budgets, seed=7, now=NOW, asap_share=0.5)
    assert [b.campaign_id for b in booked] == [forecast.booked_id(p.campaign_id) for p in probe]
    assert not {b.campaign_id for b in booked} & {p.campaign_id for p in probe}
    assert [b.campaign.daily_budget_micros for b in booked] == [1_000_000 * (n + 1) for n in range(10)]
    assert all(b.campaign.total_budget_micros == b.campaign.daily_budget_micros for b in booked)
    assert sum(b.campaign.pacing_mode == PacingMode.ASAP for b in booked) == 5
    # Everything else is the campaign the forecast served: its ad, bid, targeting, caps.
    for probed, kept in zip(probe, booked, strict=True):
        fields = ("ad_id", "pricing_model", "bid_micros", "targeting", "frequency_cap_per_day", "flight_end")
        assert all(getattr(probed.campaign, f) == getattr(kept.campaign, f) for f in fields)


def test_booking_refuses_a_probe_from_another_seed():
    probe = forecast.probe_instructions(CATALOG, 3, seed=7, now=NOW)
    budgets = {i.campaign_id: 1_000_000 for i in probe}
    with pytest.raises(ValueError, match="seed 8"):
        forecast.booked_instructions(CATALOG, probe, budgets, seed=8, now=NOW, asap_share=0.5)


def test_the_top_spending_cpc_and_cpa_campaigns_are_booked_as_optimized_with_a_static_twin():
    probe = forecast.probe_instructions(CATALOG, 12, seed=7, now=NOW)
    spend = {i.campaign_id: 1_000 * (n + 1) for n, i in enumerate(probe)}  # the later seeded, the more spent
    bases = forecast.pair_bases(probe, spend, 2)
    eligible = [i for i in probe if i.campaign.pricing_model in ("CPC", "CPA")]
    assert bases == [i.campaign_id for i in eligible[::-1][:2]]
    assert forecast.pair_bases(probe, {}, 2) == []  # nobody spent: no pair
    budgets = {i.campaign_id: 5_000_000 for i in probe}
    booked = forecast.booked_instructions(CATALOG, probe, budgets, seed=7, now=NOW, asap_share=0.5, pairs=bases)
    assert len(booked) == 14
    by_id = {b.campaign_id: b.campaign for b in booked}
    for base in bases:
        optimized, twin = by_id[forecast.booked_id(base)], by_id[forecast.twin_id(base)]
        assert optimized.goals.optimize and not twin.goals.optimize
        assert optimized.model_copy(update={"goals": twin.goals}) == twin  # the same campaign otherwise
        assert twin.pacing_mode == PacingMode.EVEN and twin.daily_budget_micros == 5_000_000
        value = optimized.goals.conversion_value_micros
        assert value == (twin.bid_micros if twin.pricing_model == "CPA" else round(twin.bid_micros / 0.05))
