"""gold/ivt_hourly and the IVT tags of silver (spark_jobs.ivt), from the billing scenario: the billing run builds it."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest

from adstream.contracts import Table
from spark_jobs import ivt
from tests.spark_jobs.billing.data import NOW, H

pytestmark = pytest.mark.slow


def ivt_rows(spark, settings) -> dict[tuple, object]:
    gold = spark.read.format("delta").load(settings.lake_path(Table.GOLD_IVT_HOURLY))
    return {(row.campaign_id, row.publisher_id): row for row in gold.where(gold.hour == H).collect()}


def test_ivt_is_counted_per_campaign_publisher_and_hour_by_reason(spark, scenario):
    rows = ivt_rows(spark, scenario.settings)
    assert set(rows) == {("cmp-cpm", None), ("cmp-cpc", None), ("cmp-cpa", None), ("cmp-cpc", "pub-a")}
    # pub-a's events of the hour: f13 (valid impression), f14 (SIVT click, charged), f15 + f16 (GIVT), f17 (a
    # click the ledger refused as a duplicate: not invalid traffic), f18 + f19 (f14's burst; f19 charged) and
    # f20 (its user, 300 s after f14: valid).
    pub_a = rows[("cmp-cpc", "pub-a")]
    assert (pub_a.events, pub_a.clicks, pub_a.givt_events, pub_a.sivt_events, pub_a.ivt_events, pub_a.ivt_clicks) == (
        8, 4, 2, 3, 5, 3,
    )  # fmt: skip
    assert (pub_a.ivt_rate, pub_a.click_ivt_rate) == (Decimal("0.625000"), Decimal("0.750000"))
    assert pub_a.ivt_by_reason == {"known_bot_ua": 2, "user_click_rate": 1, "click_burst": 2}
    assert pub_a.ivt_charged_micros == 620_000  # f14's and f19's charges: the bill's credit
    for key in [("cmp-cpm", None), ("cmp-cpc", None), ("cmp-cpa", None)]:
        assert (rows[key].ivt_events, rows[key].ivt_by_reason, rows[key].ivt_rate) == (0, {}, Decimal("0.000000"))


def test_rebuilding_an_hour_replaces_it_and_the_tags_are_readable_without_spark(spark, scenario):
    before = {key: row.asDict() for key, row in ivt_rows(spark, scenario.settings).items()}
    assert ivt.build_ivt_hour(spark, scenario.settings, H, computed_at=NOW) == 4
    assert {key: row.asDict() for key, row in ivt_rows(spark, scenario.settings).items()} == before

    tags = ivt.ivt_summary(scenario.settings, H, H + timedelta(hours=1))
    assert list(tags.columns) == list(ivt.SUMMARY_COLUMNS)
    tagged = tags[tags["ivt_category"].notna()]
    assert sorted(zip(tagged["event_id"], tagged["ivt_category"], tagged["ivt_reason"], strict=True)) == [
        ("f14", "sivt", "user_click_rate"), ("f15", "givt", "known_bot_ua"), ("f16", "givt", "known_bot_ua"),
        ("f18", "sivt", "click_burst"), ("f19", "sivt", "click_burst"),
    ]  # fmt: skip
    assert "f06" not in set(tags["event_id"])  # 11:00 is the next hour
