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


def test_a_campaign_that_won_nothing_gets_a_budget_no_single_charge_can_mostly_exhaust():
    spend = {"a": 100_000}  # a: 0.5 x 0.10 USD x 2 = 0.10 USD, the smallest budget booked
    units = {"a": 1_500_000, "clicks": 1_500_000, "views": 4_001, "cheap": 1_000}
    budgets = forecast.booked_budgets(
        spend, ["a", "clicks", "views", "cheap"], probe_auctions=10, day_auctions=20, pressure=0.5,
        unit_charges_micros=units,
    )  # fmt: skip
    # clicks: 50 x 1.50 USD = 75 USD; views: 50 x 0.004001 USD = 0.20005 -> 0.21 USD (up to a whole
    # cent); cheap: 50 x 0.001 USD = 0.05 USD is below the smallest budget booked, so 0.10 USD.
    assert budgets == {"a": 100_000, "clicks": 75_000_000, "views": 210_000, "cheap": 100_000}


def test_the_unit_charge_is_the_bid_per_click_or_conversion_and_a_thousandth_of_a_cpm_bid():
    probe = forecast.probe_instructions(CATALOG, 30, seed=7, now=NOW)
    by_model = {i.campaign.pricing_model: i.campaign for i in probe}
    assert set(by_model) == {"CPM", "CPC", "CPA"}
    for model, spec in by_model.items():
        expected = -(-spec.bid_micros // 1000) if model == "CPM" else spec.bid_micros
        assert forecast.unit_charge_micros(spec) == expected


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


def test_the_top_spending_cpc_and_cpm_campaigns_are_booked_as_optimized_with_a_static_twin():
    probe = forecast.probe_instructions(CATALOG, 12, seed=7, now=NOW)
    spend = {i.campaign_id: 1_000 * (n + 1) for n, i in enumerate(probe)}  # the later seeded, the more spent
    models = [i.campaign.pricing_model for i in probe]
    cpm, cpa = models.index("CPM"), models.index("CPA")
    spend[probe[cpa].campaign_id] = 100_000  # spent most, but pays per conversion: not paired
    spend[probe[cpm].campaign_id] = 50_000
    bases = forecast.pair_bases(probe, spend, 2)
    last_cpc = max(n for n, model in enumerate(models) if model == "CPC")
    assert bases == [probe[cpm].campaign_id, probe[last_cpc].campaign_id]
    assert forecast.pair_bases(probe, {}, 2) == []  # nobody spent: no pair
    budgets = {i.campaign_id: 5_000_000 for i in probe}
    booked = forecast.booked_instructions(CATALOG, probe, budgets, seed=7, now=NOW, asap_share=0.5, pairs=bases, days=3)
    assert len(booked) == 14
    # Three days: a total budget of three daily budgets, for every campaign.
    assert all(b.campaign.total_budget_micros == 3 * b.campaign.daily_budget_micros for b in booked)
    by_id = {b.campaign_id: b.campaign for b in booked}
    for base in bases:
        optimized, twin = by_id[forecast.booked_id(base)], by_id[forecast.twin_id(base)]
        assert optimized.goals.optimize and not twin.goals.optimize
        # The same campaign otherwise, each on its own arm of one audience split, with half the budget.
        split = optimized.targeting.audience_split
        assert (split.experiment, split.arm, split.arms) == (f"optimizer-ab:{base}", 0, 2)
        assert twin.targeting.audience_split == split.model_copy(update={"arm": 1})
        assert optimized.model_copy(update={"goals": twin.goals, "targeting": twin.targeting}) == twin
        assert twin.targeting.model_copy(update={"audience_split": None}) == next(
            i.campaign.targeting for i in probe if i.campaign_id == base
        )
        assert twin.pacing_mode == PacingMode.EVEN and twin.daily_budget_micros == 2_500_000
        assert twin.total_budget_micros == 7_500_000
        # The value of a conversion at 5 % of clicks (CPC), and 3 % of impressions clicked (CPM).
        value = optimized.goals.conversion_value_micros
        per_click = twin.bid_micros if twin.pricing_model == "CPC" else twin.bid_micros / 1000 / 0.03
        assert value == round(per_click / 0.05)


def test_each_run_seeds_the_same_campaigns_under_ids_of_its_own():
    probe = forecast.probe_instructions(CATALOG, 6, seed=7, now=NOW)
    first, second = forecast.for_run(probe, "run-1"), forecast.for_run(probe, "run-2")
    ids = [{i.campaign_id for i in run} for run in (probe, first, second)]
    assert all(len(run) == 6 for run in ids) and not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert all(i.instruction_id == f"seed-{i.campaign_id}" for i in first + second)
    assert [i.campaign for i in first] == [i.campaign for i in probe] == [i.campaign for i in second]
    # Booking a renamed probe still checks it against the seed, and books ids the next run will not reuse.
    budgets = {i.campaign_id: 1_000_000 for i in first}
    booked = forecast.booked_instructions(CATALOG, first, budgets, seed=7, now=NOW, asap_share=0.5)
    assert [b.campaign_id for b in booked] == [forecast.booked_id(i.campaign_id) for i in first]
    assert not {b.campaign_id for b in booked} & {forecast.booked_id(i.campaign_id) for i in second}
    with pytest.raises(ValueError, match="seed 8"):
        forecast.booked_instructions(CATALOG, first, budgets, seed=8, now=NOW, asap_share=0.5)
