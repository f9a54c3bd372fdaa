"""The optimizer's tick without Kafka: events folded in, decisions for optimized campaigns, only changes sent."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from scipy import stats

from adstream.decisions import unpack
from adstream.events import PLATFORMS, CampaignDecision, CampaignGoals, PricingModel
from optimizer.service import ROUND_S, Optimizer, event_values, pooled_priors, round_quantiles
from optimizer.windows import CLICKS, CONVERSIONS, IMPRESSIONS, SPEND
from tests.auction_service.serving.test_auction import make_campaign

NOW = datetime(2026, 12, 6, 12, 0, 30, tzinfo=UTC)
GOALS = CampaignGoals(optimize=True, conversion_value_micros=20_000_000)


def _event(event_type: str, campaign: str = "opt", at: datetime = NOW, **fields) -> dict:
    return {"event_type": event_type, "campaign_id": campaign, "event_time": at.isoformat(), "channel": "web",
            "device_type": "mobile", "charge_status": "not_billable", "cost_micros": 0, **fields}  # fmt: skip


def test_only_delivered_valid_events_count_and_only_charges_carry_spend():
    events = [
        _event("impression"), _event("click", charge_status="charged", cost_micros=400_000),
        _event("conversion"), _event("video_start"), _event("click", ivt_category="givt"),
        _event("click", charge_status="duplicate_auction"), _event("impression", channel="dooh"),
    ]  # fmt: skip
    ids, platforms, times, values = event_values(events)
    assert ids == ["opt"] * 4 and platforms.tolist() == [0, 0, 0, -1]
    assert values[:, [IMPRESSIONS, CLICKS, CONVERSIONS, SPEND]].tolist() == [
        [1, 0, 0, 0], [0, 1, 0, 400_000], [0, 0, 1, 0], [1, 0, 0, 0],
    ]  # fmt: skip
    assert times[0] == NOW.timestamp()


def test_priors_pool_a_categorys_campaigns_per_platform_toward_the_markets_platform_rate():
    totals = np.zeros((3, 8, 4))
    totals[0, 0] = [10_000, 500, 50, 0]  # "cars" on platform 0: 5 % CTR, 10 % CVR over a lot of data
    totals[1, 0] = [10_000, 500, 50, 0]
    everyone = np.zeros((5, 8, 4))
    everyone[:3] = totals
    everyone[3, 1] = [50_000, 1_000, 20, 0]  # the market on platform 1: 2 % CTR, 2 % CVR
    ctr, cvr = pooled_priors(totals, np.array([0, 0, 1]), 2, everyone=everyone)  # cars, cars, books
    assert ctr.shape == cvr.shape == (3, 8)
    # The market on platform 0 is the two cars campaigns: CTR (1,000 + 30) / 21,000; CVR (100 + 50) / 2,000.
    market_ctr0, market_cvr0 = 1_030 / 21_000, 150 / 2_000
    assert ctr[0, 0] == ctr[1, 0] and abs(ctr[0, 0] - (1_000 + 1_000 * market_ctr0) / 21_000) < 1e-12
    assert abs(cvr[0, 0] - (100 + 1_000 * market_cvr0) / 2_000) < 1e-12
    # Books has no data: on platform 0 the market's rate; on platform 1 the market's (20 + 50) / 2,000 CVR,
    # well below the 5 % prior, which a campaign with no data of its own on it starts from.
    assert (ctr[2, 0], cvr[2, 0]) == (market_ctr0, market_cvr0)
    assert abs(cvr[2, 1] - 70 / 2_000) < 1e-12 and abs(ctr[2, 1] - (1_000 + 30) / 51_000) < 1e-12
    # Where nobody has data: the prior's prior.
    assert (ctr[2, 7], cvr[2, 7]) == (0.03, 0.05)


def test_a_rounds_draws_depend_on_the_campaign_and_round_alone_and_are_uniform():
    draws = round_quantiles("c1", 7)
    assert draws.shape == (2, len(PLATFORMS)) and (round_quantiles("c1", 7) == draws).all()
    assert (round_quantiles("c1", 8) != draws).all() and (round_quantiles("c2", 7) != draws).all()
    pooled = np.concatenate([round_quantiles(f"c{i}", i % 5).ravel() for i in range(2_000)])
    assert pooled.min() >= 0.0 and pooled.max() < 1.0
    assert stats.kstest(pooled, "uniform").pvalue > 1e-3  # 32,000 draws against U(0, 1)


def test_a_tick_decides_for_optimized_campaigns_and_sends_only_what_changed():
    optimizer = Optimizer()
    # Web/mobile converts 10 % of clicks at 1 USD a click (value 2 USD a click): bid up to the bound.
    events = [_event("impression", at=NOW - timedelta(seconds=s % 1_700)) for s in range(40_000)]
    events += [_event("click", charge_status="charged", cost_micros=1_000_000, at=NOW - timedelta(seconds=s % 1_700))
               for s in range(4_000)]  # fmt: skip
    events += [_event("conversion", at=NOW - timedelta(seconds=s)) for s in range(400)]
    assert optimizer.fold(events) == 44_400
    campaigns = [
        make_campaign("opt", pricing_model=PricingModel.CPC, bid_micros=1_000_000, goals=GOALS, category="cars"),
        make_campaign("static", pricing_model=PricingModel.CPC, bid_micros=1_000_000, category="cars"),
    ]
    applied = optimizer.tick(campaigns, NOW)
    (decided,) = applied
    record = CampaignDecision.model_validate(decided.record)  # the JSON built from columns is a valid record
    ppm = decided.multipliers_ppm
    assert record.campaign_id == "opt"  # the static one: no decision
    assert [p.platform for p in record.platforms] == list(PLATFORMS)
    web_mobile = record.platforms[0]
    assert web_mobile.multiplier > 1.5 and web_mobile.reason in ("value", "explore")
    assert (web_mobile.impressions, web_mobile.clicks, web_mobile.conversions) == (40_000, 4_000, 400)
    assert web_mobile.spend_micros == 4_000_000_000 and web_mobile.cpc_micros == 1_000_000
    assert all(p.reason in ("value", "explore") and p.multiplier > 0 for p in record.platforms[1:])  # the prior's
    assert ppm[0] == round(web_mobile.multiplier * 1_000_000)
    # What the posteriors shrank toward: web/mobile's pooled rates (4,000 + 1,000 x 4,030 / 41,000 clicks over
    # 41,000 impressions; 400 + 1,000 x 450 / 5,000 conversions over 5,000 clicks), elsewhere the priors' prior.
    assert web_mobile.prior_ctr == pytest.approx(0.099958, rel=1e-4)
    assert web_mobile.prior_cvr == pytest.approx(0.098, rel=1e-4)
    elsewhere = [(p.prior_ctr, p.prior_cvr) for p in record.platforms[1:]]
    assert elsewhere == [(pytest.approx(0.03), pytest.approx(0.05))] * 7
    assert 200 <= record.ctr_prior_strength <= 20_000 and 20 <= record.cvr_prior_strength <= 2_000
    assert record.data_until == NOW  # the newest event folded in
    assert unpack(f"{record.version} {decided.data_until_us} " + " ".join(map(str, ppm))).multipliers_ppm == tuple(ppm)
    # The same data a second later, in the same round of draws: nothing is sent again...
    optimizer.mark_sent(applied)
    assert optimizer.tick(campaigns, NOW + timedelta(seconds=1)) == []
    # ...until its next round; a fresh optimizer on the same data at the same time decides the same.
    assert [d.campaign_id for d in optimizer.tick(campaigns, NOW + timedelta(seconds=ROUND_S + 1))] == ["opt"]
    twin = Optimizer()
    twin.fold(events)
    (again,) = twin.tick(campaigns, NOW)
    assert again.multipliers_ppm.tolist() == ppm.tolist() and again.record["platforms"] == decided.record["platforms"]
