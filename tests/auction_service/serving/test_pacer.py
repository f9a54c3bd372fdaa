"""Pacing at run time on a real redis-server: one controller for the fleet, its hand-over, and what auctions read."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
import redis
from deltalake import DeltaTable

from adstream.contracts import Table
from adstream.events import CampaignStatus, PacingMode, PricingModel
from auction_service.domain import ServingCampaign, day_bounds, day_index
from auction_service.serving.pacer import Multipliers, Pacer, parse_serve, plan_budget, throttled_rows
from auction_service.serving.pacing import PPM, PacingController, PacingState
from ml.calibrate import land_pacing_minutes
from tests.conftest import make_settings, shared_namespace

DAY_S = 3600
DAY_START, _ = day_bounds(day_index(datetime(2026, 12, 6, 10, tzinfo=UTC), DAY_S), DAY_S)


def campaign(campaign_id: str, mode: PacingMode = PacingMode.EVEN, daily: int = 3_600_000, spent_today: int = 0):
    return ServingCampaign(
        campaign_id=campaign_id, advertiser_id="adv", ad_id="ad", category="Books", pricing_model=PricingModel.CPM,
        bid_micros=2_000_000, flight_start=DAY_START - timedelta(days=1), flight_end=DAY_START + timedelta(days=9),
        frequency_cap_per_day=10, status=CampaignStatus.ACTIVE, total_budget_micros=100 * daily,
        daily_budget_micros=daily, spent_micros=spent_today, spent_today_micros=spent_today, pacing_mode=mode,
    )  # fmt: skip


@pytest.fixture
def fleet(shared_store_url):
    """Two replicas' pacers on one shared store, updating every 10 s of the test's clock."""
    namespace = shared_namespace()
    clients = [redis.Redis.from_url(shared_store_url) for _ in range(2)]
    pacers = [Pacer(c, namespace, PacingController(day_length_s=DAY_S), update_s=10.0) for c in clients]
    yield pacers
    for c in clients:
        c.close()


def test_one_replica_runs_the_controllers_and_every_replica_reads_the_multipliers(fleet):
    a, b = fleet
    # A day of 3,600 s and $3.60: the flat plan is $0.001 a second. "fast" spends 3x that, "asap" too.
    at = DAY_START + timedelta(seconds=600)
    campaigns = (campaign("fast"), campaign("asap", PacingMode.ASAP), campaign("on-plan"))
    for step in range(30):  # five minutes of updates
        now = at + timedelta(seconds=10 * step)
        spent = {
            "fast": 3_000 * (600 + 10 * step),
            "asap": 3_000 * (600 + 10 * step),
            "on-plan": 1_000 * (600 + 10 * step),
        }
        assert a.tick(now, campaigns, spent) is True  # the first to ask holds the lease
        assert b.tick(now, campaigns, spent) is False
    assert (a.is_leader, b.is_leader) == (True, False) and a.updates == 30 and b.updates == 0
    served = b.multipliers(campaigns)
    lam = dict(zip(("fast", "asap", "on-plan"), served.lambda_ppm.tolist(), strict=True))
    assert lam["asap"] == PPM  # asap is never paced
    assert lam["fast"] < 0.5 * PPM  # three times ahead of plan: bid down hard
    assert lam["on-plan"] > 0.9 * PPM
    assert b.multipliers(campaigns) is served  # one array per snapshot and reading
    # The report the API and the CLI show.
    report = b.report(campaigns[0], at + timedelta(seconds=300), spent_today=3_000 * 900)
    assert abs(report.plan_micros - 900_000) <= 1 and report.spent_micros == 2_700_000  # a quarter of the day
    assert report.pacing_multiplier == lam["fast"] / PPM and report.mode == PacingMode.EVEN


def test_a_controller_killed_mid_day_is_taken_over_from_the_shared_state(fleet, shared_store_url):
    a, b = fleet
    campaigns = (campaign("fast"),)
    at = DAY_START + timedelta(seconds=600)
    for step in range(12):
        now = at + timedelta(seconds=10 * step)
        a.tick(now, campaigns, {"fast": 3_000 * (600 + 10 * step)})
    before = a.states(["fast"])["fast"]
    assert before.lambda_ppm < PPM
    # A is killed: it renews nothing. Within its lease (3 updates) B keeps out, then takes over ...
    now = at + timedelta(seconds=120)
    assert b.tick(now, campaigns, {"fast": 3_000 * 720}) is False
    redis.Redis.from_url(shared_store_url).delete(a.key("leader"))  # the lease runs out
    later = now + timedelta(seconds=1)
    assert b.tick(later, campaigns, {"fast": 3_000 * 721}) is True
    after = b.states(["fast"])["fast"]
    # ... stepping from A's last state, not from a fresh one (λ = 1).
    expected = PacingController(day_length_s=DAY_S).update(
        before, now=later, spent_today_micros=3_000 * 721, daily_budget_micros=3_600_000, curve=a.curve
    )
    assert after == expected and after.lambda_ppm < PPM


def test_the_last_multipliers_keep_serving_when_the_store_does_not_answer(fleet):
    a, _ = fleet
    campaigns = (campaign("fast"),)
    a.tick(DAY_START + timedelta(seconds=600), campaigns, {"fast": 10_000_000})
    lam = a.multipliers(campaigns).lambda_ppm.tolist()
    gone = Pacer(redis.Redis.from_url("redis://127.0.0.1:1/0", socket_timeout=0.2), a.ns, a.controller, 10.0)
    gone._serve = a._serve
    assert gone.tick(DAY_START + timedelta(seconds=610), campaigns, {}) is False  # no lease without a store
    assert gone.multipliers(campaigns).lambda_ppm.tolist() == lam


def test_malformed_multipliers_serve_unpaced():
    serve = parse_serve({b"a": b"500000 0", b"b": b"0 0", b"c": b"x", b"d": b"1000000 1000000", b"e": b"250000 10"})
    assert serve == {"a": (500_000, 0), "e": (250_000, 10)}
    multipliers = Multipliers.of((campaign("a"), campaign("b")), serve)
    assert multipliers.lambda_ppm.tolist() == [500_000, PPM] and not multipliers.any_throttled


def test_a_throttled_campaign_sits_out_its_share_of_auctions():
    multipliers = Multipliers.of((campaign("a"), campaign("b")), {"a": (100_000, 750_000)})
    rows = np.zeros(20_000, dtype=np.intp)  # campaign "a", 20,000 auctions
    out = throttled_rows(multipliers, rows, np.random.default_rng(1))
    assert out.mean() == pytest.approx(0.75, abs=0.01)
    assert not throttled_rows(multipliers, np.ones(1000, dtype=np.intp), np.random.default_rng(2)).any()


def test_the_plan_spreads_the_daily_budget_or_what_is_left_of_the_total():
    assert plan_budget(campaign("a", daily=5_000_000)) == 5_000_000
    nearly_spent = replace(
        campaign("b", daily=5_000_000), total_budget_micros=2_000_000, spent_micros=1_500_000,
        spent_today_micros=500_000,
    )  # fmt: skip
    assert plan_budget(nearly_spent) == 1_000_000  # 0.5 spent today + 0.5 left of the total


def test_a_state_round_trips_through_the_store(fleet):
    a, _ = fleet
    state = PacingState(PacingMode.EVEN, 420_000, 10_000, day_index=5, updated_at=DAY_START, interval_us=10_000_000)
    a.client.hset(a.key("state"), "x", " ".join(f"{k}={v}" for k, v in state.to_fields().items()))
    assert a.states(["x", "missing"]) == {"x": state}


def test_the_leader_logs_each_minute_and_the_lake_lands_it_once(fleet, tmp_path):
    a, _ = fleet
    settings = make_settings(tmp_path, shared_store_namespace=a.ns)
    campaigns = (campaign("fast"), campaign("asap", PacingMode.ASAP))
    at = DAY_START + timedelta(minutes=10)
    for step in range(13):  # two minutes and a bit of updates: three minutes logged
        a.tick(at + timedelta(seconds=10 * step), campaigns, {"fast": 3_000 * (600 + 10 * step)})
    logged = a.client.lrange(a.key("minutes"), 0, -1)
    assert len(logged) == 3 * len(campaigns)
    assert land_pacing_minutes(settings, a.client) == 6
    assert a.client.llen(a.key("minutes")) == 0
    # A refresh cut off after writing, before trimming: the same rows land again, over themselves.
    a.client.rpush(a.key("minutes"), *logged)
    land_pacing_minutes(settings, a.client)
    rows = DeltaTable(settings.delta_rs_location(Table.GOLD_PACING_MINUTE)[0]).to_pandas()
    assert len(rows) == 6 and set(rows["campaign_id"]) == {"fast", "asap"}
    fast = rows[rows["campaign_id"] == "fast"].sort_values("minute")
    assert fast["minute"].tolist() == [pd.Timestamp(at + timedelta(minutes=m)) for m in range(3)]
    assert (fast["pacing_multiplier"] < 1).all() and (fast["mode"] == "even").all()
    assert fast["spent_today_micros"].tolist() == [1_800_000, 1_980_000, 2_160_000]
    assert (rows[rows["campaign_id"] == "asap"]["pacing_multiplier"] == 1).all()
