"""The dashboard's sections from small frames: sums before ratios, the window, the campaign table, bills."""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd
import pytest

from adstream.decisions import Served
from adstream.events import PLATFORMS
from dashboard import views

T0 = pd.Timestamp(datetime(2026, 12, 6, 12, 0, tzinfo=UTC))


def kpi_row(minute: int, campaign: str = "c1", **values: object) -> dict:
    row = {
        "campaign_id": campaign, "minute": T0 + pd.Timedelta(minutes=minute), "channel": "web",
        "device_type": "desktop", "content_type": "news", "impressions": 0, "clicks": 0, "conversions": 0,
        "video_starts": 0, "video_completes": 0, "spend_micros": 0, "ad_relevance_score": None,
        "ivt_impressions": 0, "ivt_clicks": 0,
    }  # fmt: skip
    return row | values


def test_kpis_sum_campaigns_before_the_ratios_and_weight_relevance_by_impressions():
    kpis = pd.DataFrame([
        kpi_row(0, "c1", impressions=100, clicks=1, spend_micros=1_000_000, ad_relevance_score=0.01),
        kpi_row(0, "c2", impressions=300, clicks=11, spend_micros=3_000_000, ad_relevance_score=0.05),
        kpi_row(0, "c3", channel="app", impressions=10, clicks=5, video_starts=4, video_completes=3),
    ])  # fmt: skip
    section = views.kpi_section(kpis)
    web = section["latest"]["channel"]["web"]
    assert web["impressions"] == 400
    assert web["ctr"] == pytest.approx(12 / 400)  # not the mean of 1 % and 3.67 %
    assert web["rpai"] == pytest.approx(4.0 / 400)
    assert web["ad_relevance_score"] == pytest.approx((100 * 0.01 + 300 * 0.05) / 400)
    assert web["ad_completion_rate"] is None  # no video started
    app = section["latest"]["channel"]["app"]
    assert app["ad_completion_rate"] == pytest.approx(0.75) and app["ad_relevance_score"] is None
    assert section["latest_minute"] == T0.isoformat()


def test_kpi_charts_cover_the_hour_ending_at_the_newest_minute_with_gaps_as_null():
    kpis = pd.DataFrame([
        kpi_row(-90, impressions=50, clicks=50),  # outside the hour before the newest minute
        kpi_row(0, impressions=100, clicks=2),
        kpi_row(2, impressions=100, clicks=4),
        kpi_row(2, channel="app", impressions=10, clicks=1),
    ])  # fmt: skip
    section = views.kpi_section(kpis, minutes=60)
    epoch = int(T0.timestamp())
    assert section["minutes"] == [epoch, epoch + 120]
    assert section["series"]["channel"]["web"]["ctr"] == [pytest.approx(0.02), pytest.approx(0.04)]
    assert section["series"]["channel"]["app"]["ctr"] == [None, pytest.approx(0.1)]  # no app row at minute 0


def test_no_kpi_rows_give_empty_charts_and_a_frame_without_its_columns_is_refused():
    assert views.kpi_section(pd.DataFrame())["minutes"] == []
    with pytest.raises(KeyError):
        views.kpi_section(pd.DataFrame([{"minute": T0, "impressions": 1}]))


def line(campaign_id: str, spent_today: int, status: str = "active", **values: object) -> views.CampaignLine:
    fields = {
        "campaign_id": campaign_id, "status": status, "pricing_model": "CPC", "pacing_mode": "even",
        "spent_micros": spent_today, "total_budget_micros": 50_000_000, "spent_today_micros": spent_today,
        "daily_budget_micros": 20_000_000,
    }  # fmt: skip
    return views.CampaignLine(**(fields | values))


def test_the_campaign_table_shows_the_days_biggest_spenders_with_their_platforms():
    lines = [line("small", 1_000), line("big", 9_000, conversion_value_micros=2_000_000), line("gone", 0, "stopped")]
    by_platform = pd.DataFrame([
        {"campaign_id": "big", "platform": "web/desktop", "impressions": 400, "clicks": 8, "conversions": 2,
         "spend_micros": 1_000_000},
    ])  # fmt: skip
    multipliers = tuple(1_500_000 if p == "web/desktop" else 0 for p in PLATFORMS)
    decided = {"big": Served(3, 0, multipliers)}
    reasons = {"big": {"web/desktop": "exploit", "app/ctv": "pause"}}
    section = views.campaigns_section(lines, by_platform, decided, reasons, {"big": "2026-12-06T12:00:00"}, shown=2)
    assert section["total"] == 3 and section["by_status"] == {"active": 2, "stopped": 1}
    assert [row["campaign_id"] for row in section["rows"]] == ["big", "small"]
    platforms = {p["platform"]: p for p in section["rows"][0]["platforms"]}
    web = platforms["web/desktop"]
    assert web["ecpm_micros"] == 2_500_000  # 1 USD over 400 impressions, per thousand
    assert web["ctr"] == pytest.approx(0.02) and web["cvr"] == pytest.approx(0.25)
    assert web["roi"] == pytest.approx((2 * 2_000_000 - 1_000_000) / 1_000_000)
    assert web["multiplier"] == 1.5 and web["reason"] == "exploit"
    paused = platforms["app/ctv"]  # decided, never served: no figures, the pause and its reason
    assert paused["impressions"] == 0 and paused["ecpm_micros"] is None and paused["multiplier"] == 0
    assert paused["reason"] == "pause"
    assert (
        section["rows"][1]["platforms"] == [] and section["rows"][1]["decided_at"] is None
    )  # neither served nor decided


def test_roi_is_left_out_where_the_campaign_states_no_conversion_value():
    by_platform = pd.DataFrame([{"campaign_id": "c", "platform": "app/mobile", "impressions": 10, "clicks": 1,
                                 "conversions": 1, "spend_micros": 500}])  # fmt: skip
    section = views.campaigns_section([line("c", 500)], by_platform, {}, {}, {})
    (platform,) = section["rows"][0]["platforms"]
    assert platform["roi"] is None and platform["multiplier"] is None and platform["ecpm_micros"] == 50_000


def test_bills_are_shown_per_hour_newest_first_with_the_held_back_campaigns_counted():
    hour = pd.Timestamp(datetime(2026, 12, 6, 10, tzinfo=UTC))
    bill = pd.DataFrame([
        {"hour": hour, "campaign_id": "a", "status": "final", "spend_micros": 1_000_000,
         "gross_spend_micros": 1_200_000, "ivt_credit_micros": 200_000},
        {"hour": hour, "campaign_id": "b", "status": "held_back", "spend_micros": 500_000,
         "gross_spend_micros": 500_000, "ivt_credit_micros": 0},
        {"hour": hour + pd.Timedelta(hours=1), "campaign_id": None, "status": "provisional", "spend_micros": 0,
         "gross_spend_micros": 0, "ivt_credit_micros": 0},
    ])  # fmt: skip
    section = views.finance_section(bill, [(hour, "final"), (hour + pd.Timedelta(hours=1), "provisional")])
    newest, older = section["hours"]
    assert newest["status"] == "provisional" and newest["campaigns"] == 0 and newest["spend_micros"] == 0
    assert older["status"] == "final" and older["campaigns"] == 2 and older["held_back"] == 1
    assert (older["spend_micros"], older["gross_spend_micros"], older["ivt_credit_micros"]) == (
        1_500_000, 1_700_000, 200_000,
    )  # fmt: skip


def test_quality_reads_invalid_traffic_over_the_newest_hour_and_calibration_of_the_newest_hour():
    kpis = pd.DataFrame([
        kpi_row(-120, impressions=1000, ivt_impressions=1000),  # two hours before: not counted
        kpi_row(0, impressions=90, ivt_impressions=10, ivt_clicks=3),
    ])  # fmt: skip
    calibration = pd.DataFrame([
        {"model_version": "4", "hour": T0, "impressions": 100, "expected_clicks": 2.0, "clicks": 3, "alert": True},
        {"model_version": "4", "hour": T0, "impressions": 100, "expected_clicks": 2.0, "clicks": 1, "alert": False},
    ])  # fmt: skip
    stats = {"model_version": "4", "scorer": "compiled", "calibration": {"kind": "platt"}}
    section = views.quality_section(stats, kpis, calibration)
    assert section["ivt"] == {"impressions": 90, "ivt_impressions": 10, "ivt_clicks": 3, "ivt_rate": 0.1}
    (row,) = section["observed_over_expected"]
    assert row["observed_over_expected"] == pytest.approx(1.0) and row["alerts"] == 1
    assert section["model_version"] == "4" and section["calibration"] == {"kind": "platt"}


def test_serving_reads_latency_percentiles_and_why_auctions_went_unfilled():
    auctions = pd.DataFrame({
        "event_time": [T0 + pd.Timedelta(seconds=s) for s in range(5)],
        "filled": [True, True, False, False, False], "candidate_count": [3, 2, 0, 0, 4],
        "latency_ms": [1.0, 2.0, 3.0, 4.0, 100.0],
        "bid_filter_score": [0.9, None, 0.1, None, None], "bid_filter_explored": [False, None, True, None, None],
    })  # fmt: skip
    stats = {"auctions": 10, "filled": 4, "no_fill": 6, "fill_rate": 0.4, "events": {"charged": 2}}
    section = views.serving_section(stats, 2.5, auctions)
    assert section["fill_rate"] == 0.4 and section["auctions_per_s"] == 2.5 and section["events"] == {"charged": 2}
    recent = section["recent"]
    assert recent["latency_ms"]["p50"] == 3.0 and recent["latency_ms"]["p99"] > 90
    assert recent["no_fill_reasons"] == {"no campaign matched": 2, "no candidate cleared the floor or pacing": 1}
    assert recent["bid_filter_share"] == pytest.approx(0.4) and recent["bid_filter_explored_share"] == 0.5
    assert views.serving_section(None, None, auctions.iloc[:0])["recent"] is None
