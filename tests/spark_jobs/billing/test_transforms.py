"""Billing's pure transforms: the status rule, the reconciliation's comparison, auction log prices, whole hours."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from auction_service.serving.books import billable_cost_micros
from spark_jobs.billing import transforms
from tests.spark_jobs.billing.data import H, at

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    ("hour", "watermark", "now", "active", "status"),
    [
        # The watermark exactly at the hour end plus the IVT review (300 s here) closes it.
        (H, at(11, 5), at(11, 5), True, "final"),
        (H, at(11, 4, 59), at(12, 0), True, "provisional"),  # a click burst may still reach back into the hour
        (H, at(11, 0), at(12, 0), True, "provisional"),
        (H, None, at(12, 0), False, "provisional"),  # no stream yet: partial data is never final
        (H, at(12, 0), at(11, 4), True, "provisional"),  # the review is not over
        (H, at(11, 5), at(11, 6), False, "empty"),
    ],
)
def test_bill_status(hour, watermark, now, active, status):
    assert transforms.bill_status(hour, watermark, now, has_activity=active, review_s=300) == status


def test_spend_mismatches_name_every_side():
    bill = {"c1": 100, "c2": 200, "c3": 50}
    ledger = {"c1": 100, "c2": 250, "c4": 7}
    auctions = {"c1": 100, "c2": 200, "c3": 40}
    assert transforms.spend_mismatches(bill, ledger, auctions) == [
        transforms.CampaignSpend("c2", 200, 250, 200),
        transforms.CampaignSpend("c3", 50, 0, 40),
        transforms.CampaignSpend("c4", 0, 7, 0),
    ]
    # A skipped side is not compared, but is never taken as agreeing.
    assert transforms.spend_mismatches(bill, None, auctions) == [
        transforms.CampaignSpend("c3", 50, None, 40),
    ]
    assert transforms.spend_mismatches(bill, None, None) == []


def test_the_auction_log_prices_like_the_service(spark):
    prices = [0, 1, 999, 1_000, 1_001, 1_234_567, 2_000_000]
    rows = [(f"p{i}-{model}", model, price) for i, price in enumerate(prices) for model in ("CPM", "CPC", "CPA")]
    frame = spark.createDataFrame(rows, "auction_id string, pricing_model string, clearing_price_micros bigint")
    priced = {row.auction_id: row.billable_cost_micros for row in transforms.with_billable_cost(frame).collect()}
    assert priced == {auction: billable_cost_micros(model, price) for auction, model, price in rows}


def test_hours_must_be_whole_utc_hours():
    assert transforms.hour_start(datetime(2026, 11, 24, 10)) == H  # naive is UTC
    with pytest.raises(ValueError, match="not the start of an hour"):
        transforms.hour_start(at(10, 30))
    assert list(transforms.hours_between(H, H + timedelta(hours=3))) == [H + timedelta(hours=i) for i in range(3)]


def test_media_cost_is_the_exchanges_price_of_each_impression_first_shown_in_the_hour(spark):
    schema = (
        "event_type string, event_time timestamp, auction_id string, campaign_id string, "
        "exchange_price_cpm_micros bigint, charge_status string, ivt_category string"
    )
    rows = [
        ("win", at(10, 1), "w1", "c1", 2_000_000, "not_billable", None),
        ("win", at(10, 1), "w1", "c1", 2_500_000, "not_billable", None),  # fired twice: the lower price
        ("impression", at(10, 2), "w1", "c1", None, "charged", None),
        ("win", at(10, 3), "w2", "c1", 1_000_001, "not_billable", None),
        ("impression", at(10, 4), "w2", "c1", None, "charged", None),
        ("win", at(10, 5), "w3", "c1", 9_000_000, "not_billable", None),  # won, never shown: no cost
        ("win", at(9, 58), "w4", "c2", 3_000_000, "not_billable", None),
        ("impression", at(9, 59), "w4", "c2", None, "charged", None),  # shown in the hour before
        ("impression", at(10, 1), "w4", "c2", None, "duplicate_auction", None),
        ("win", at(10, 6), "w5", "c2", 4_000_000, "not_billable", None),
        ("impression", at(10, 7), "w5", "c2", None, "invalid_traffic", "givt"),  # not delivered
        ("impression", at(10, 8), "j1", "c2", None, "charged", None),  # our JSON route: no win notice
    ]
    costs = transforms.media_costs(spark.createDataFrame(rows, schema), H, timedelta(hours=2))
    got = {row.campaign_id: (row.exchange_impressions, row.media_cost_cpm_micros) for row in costs.collect()}
    assert got == {"c1": (2, 2_000_000 + 1_000_001)}
