"""The bid filter's pure parts: the label and revenue rule, the rows it learns from, the threshold rule, and a
filter trained on a synthetic auction log where some placements, countries and domains never fill."""

import json
import math
import time
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from auction_service.serving.features import hour_and_day_of_week
from ml.bid_filter import (
    LABEL,
    REVENUE,
    AuctionLogError,
    BidFilter,
    RequestFeatures,
    at_threshold,
    choose_threshold,
    request_features,
    revenue_cpm_micros,
    train_bid_filter,
    training_rows,
)
from tests.ml.auction_logs import synthetic_auction_log

T0 = pd.Timestamp("2026-11-29 13:05:00", tz="UTC")  # a Sunday


def request(**values) -> RequestFeatures:
    defaults = {
        "publisher_id": "exchange-a", "domain": "news1.example.com", "placement": "300x250",
        "device_type": "desktop", "country": "USA", "channel": "web", "content_type": "display",
        "hour": 14, "day_of_week": 3,
    }  # fmt: skip
    return RequestFeatures(**{**defaults, **values})


# --- the auction log -------------------------------------------------------------------------------


def test_revenue_follows_the_documented_rule():
    log = pd.DataFrame(
        {
            "filled": [True, True, True, True, False, True],
            "pricing_model": ["CPC", "CPM", "CPC", "CPA", None, "CPM"],
            # cpm price present: it wins whatever the pricing model; the others are older records
            "clearing_price_cpm_micros": pd.array([2_500_000, None, None, None, None, 0], dtype="Int64"),
            "clearing_price_micros": pd.array([400_000, 1_500_000, 300_000, 9_000_000, None, 0], dtype="Int64"),
            "ecpm_micros": pd.array([2_600_000, 1_600_000, 900_000, 700_000, 5_000, 100], dtype="Int64"),
        }
    )
    assert revenue_cpm_micros(log).tolist() == [2_500_000, 1_500_000, 900_000, 700_000, 0, 0]


def test_learns_from_openrtb_requests_no_filter_screened_or_explored():
    log = pd.DataFrame(
        {
            "event_time": [T0] * 5,
            "request_id": ["r1", None, "r3", "r4", "r5"],  # r2: a /v1/auction request
            "bid_filter_explored": pd.array([None, None, True, False, None], dtype="boolean"),  # r4: passed on score
            "filled": [True, True, False, True, True],
            "clearing_price_cpm_micros": pd.array([1_000, 1_000, None, 1_000, 0], dtype="Int64"),
        }
    )
    rows = training_rows(log)
    assert rows["request_id"].tolist() == ["r1", "r3", "r5"]
    assert rows[LABEL].tolist() == [1, 0, 0]  # r5 filled at a price of zero: it earns nothing
    assert rows[REVENUE].tolist() == [1_000, 0, 0]
    assert rows["domain"].isna().all() and rows["placement"].isna().all()  # an older table lacks them


def test_a_log_without_event_time_is_refused():
    with pytest.raises(AuctionLogError, match="lacks event_time"):
        training_rows(pd.DataFrame({"filled": [True]}))


@pytest.mark.parametrize(
    ("at", "hour", "day_of_week"),
    [
        (datetime(2026, 11, 29, 13, 5, tzinfo=UTC), 13, 1),  # Sunday
        (datetime(2026, 11, 30, 0, 0, tzinfo=UTC), 0, 2),  # Monday
        (datetime(2026, 12, 5, 23, 59, tzinfo=UTC), 23, 7),  # Saturday
    ],
)
def test_hour_and_day_of_week_are_counted_as_serving_counts_them(at, hour, day_of_week):
    frame = pd.DataFrame({"event_time": [pd.Timestamp(at)], "publisher_id": ["p"], "domain": [None],
                          "placement": ["video"], "device_type": [None], "country": ["USA"], "channel": ["app"],
                          "content_type": ["video"]})  # fmt: skip
    (features,) = request_features(frame)
    assert (features.hour, features.day_of_week) == (hour, day_of_week) == hour_and_day_of_week(at)
    assert features == RequestFeatures("p", None, "video", None, "USA", "app", "video", hour, day_of_week)


# --- the threshold -----------------------------------------------------------------------------


def test_the_threshold_is_the_highest_that_keeps_the_revenue_target():
    scores = np.array([0.4, 0.1, 0.3, 0.2])
    revenue = np.array([99, 0, 0, 1])
    labels = np.array([1, 0, 0, 1])
    choice = choose_threshold(scores, revenue, labels, 0.99)
    # Shedding 0.1, 0.2 and 0.3 loses 1 of 100: exactly 99 % kept. Shedding 0.4 too would lose all.
    assert (choice.threshold, choice.revenue_retained, choice.shed_share) == (0.4, 0.99, 0.75)
    assert choice.no_fill_shed_share == 1.0


def test_requests_with_equal_scores_are_shed_together_or_not_at_all():
    scores = np.array([0.1, 0.1, 0.2])
    revenue = np.array([0, 5, 95])
    choice = choose_threshold(scores, revenue, np.array([0, 1, 1]), 0.99)
    assert (choice.threshold, choice.shed_share, choice.revenue_retained) == (0.1, 0.0, 1.0)


def test_a_target_of_all_revenue_sheds_only_requests_below_the_lowest_earner():
    scores = np.array([0.05, 0.1, 0.2, 0.3, 0.9])
    revenue = np.array([0, 0, 1, 0, 50])
    choice = choose_threshold(scores, revenue, (revenue > 0).astype(int), 1.0)
    assert (choice.threshold, choice.shed_share, choice.revenue_retained) == (0.2, 0.4, 1.0)


def test_requests_without_revenue_cannot_set_a_threshold():
    with pytest.raises(AuctionLogError, match="no revenue"):
        choose_threshold(np.array([0.1, 0.2]), np.array([0, 0]), np.array([0, 0]))


def test_figures_at_a_given_threshold():
    choice = at_threshold(np.array([0.1, 0.5, 0.6, 0.9]), np.array([0, 10, 0, 30]), np.array([0, 1, 0, 1]), 0.6)
    assert (choice.revenue_retained, choice.shed_share, choice.no_fill_shed_share) == (0.75, 0.5, 0.5)


# --- the model ---------------------------------------------------------------------------------


def test_a_score_is_the_sigmoid_of_the_bias_and_the_weights_of_its_tokens():
    weights = {"pl=300x250": 2.0, "pl*geo=300x250|USA": 0.5, "geo=FRA": 9.0}
    bid_filter = BidFilter(bias=-1.0, weights=weights, threshold=0.5)
    assert bid_filter.score(request()) == pytest.approx(1 / (1 + math.exp(-1.5)))
    assert bid_filter.score(request(placement="728x90")) == pytest.approx(1 / (1 + math.exp(1.0)))  # unseen: 0
    assert bid_filter.passes(0.5) and not bid_filter.passes(0.4999)


def test_the_exported_table_scores_as_the_model_did():
    bid_filter = BidFilter(-0.25, {"dom=a.com": -3.0, "h=14": 0.1}, 0.3, 0.002, 0.99, {"shed_share": 0.6})
    loaded = BidFilter.from_json(bid_filter.to_json())
    for features in (request(), request(domain="a.com"), request(hour=3)):
        assert loaded.score(features) == bid_filter.score(features)
    assert (loaded.threshold, loaded.time_saved_per_shed_s, loaded.holdout) == (0.3, 0.002, {"shed_share": 0.6})


@pytest.mark.parametrize(
    "change", [{"format": 2}, {"bias": float("nan")}, {"threshold": 1.5}, {"weights": {"h=1": float("inf")}}]
)
def test_a_table_that_cannot_serve_is_refused(change):
    data = {**json.loads(BidFilter(0.0, {"h=1": 1.0}, 0.5).to_json()), **change}
    with pytest.raises(ValueError, match=r"format|finite"):
        BidFilter.from_json(json.dumps(data))


# --- trained on a synthetic auction log ---------------------------------------------------------


@pytest.fixture(scope="module")
def trained():
    log = synthetic_auction_log(12_000, seed=3)  # 60 % of requests unfillable by construction
    return train_bid_filter(log, revenue_target=0.99)


def test_it_sheds_most_unfillable_requests_and_keeps_the_revenue_target(trained):
    holdout, bid_filter = trained.holdout, trained.bid_filter
    shed = bid_filter.scores(request_features(holdout)) < bid_filter.threshold
    unfillable = ~holdout["fillable"].to_numpy(dtype=bool)
    assert shed[unfillable].mean() >= 0.8
    revenue = holdout[REVENUE].to_numpy()
    assert revenue[~shed].sum() / revenue.sum() >= 0.99
    assert trained.metrics["revenue_retained"] == revenue[~shed].sum() / revenue.sum()
    assert trained.metrics["no_fill_shed_share"] >= 0.8
    assert trained.metrics["roc_auc"] > 0.9
    assert trained.metrics["out_of_time_revenue_retained"] > 0.97


def test_it_learns_which_placements_countries_and_domains_never_fill(trained):
    bid_filter = trained.bid_filter
    for never_fills in (
        request(placement="320x50"), request(country="NGA"), request(domain="mfa3.example.net"),
        request(placement="728x90", device_type="mobile"),
    ):  # fmt: skip
        assert not bid_filter.passes(bid_filter.score(never_fills)), never_fills
    for fills in (request(), request(placement="728x90"), request(placement="video", content_type="video")):
        assert bid_filter.passes(bid_filter.score(fills)), fills


def test_the_holdout_is_the_latest_requests(trained):
    assert trained.train["event_time"].max() < trained.holdout["event_time"].min()
    assert len(trained.holdout) == 2_400


def test_time_saved_per_shed_request_is_the_mean_logged_latency_of_those_shed(trained):
    holdout, bid_filter = trained.holdout, trained.bid_filter
    shed = bid_filter.scores(request_features(holdout)) < bid_filter.threshold
    assert bid_filter.time_saved_per_shed_s == pytest.approx(holdout.loc[shed, "latency_ms"].mean() / 1000)


def test_scoring_one_request_takes_microseconds(trained):
    # Loose on purpose (shared cores); the bound itself is measured by `adstream bench bid-filter`.
    requests = request_features(trained.holdout)
    timings = []
    for features in requests:
        began = time.perf_counter()
        trained.bid_filter.score(features)
        timings.append(time.perf_counter() - began)
    assert np.percentile(timings, 99) < 500e-6


@pytest.mark.parametrize(
    ("log", "message"),
    [
        (synthetic_auction_log(200, seed=1), "fewer than 1000"),
        (synthetic_auction_log(2_000, seed=1).assign(filled=False), "single class"),
        (synthetic_auction_log(2_000, seed=1, unfillable_share=1.0), "single class"),
    ],
)
def test_a_log_that_cannot_train_is_refused(log, message):
    with pytest.raises(AuctionLogError, match=message):
        train_bid_filter(log, min_requests=1000)


def test_a_holdout_without_revenue_is_refused():
    log = synthetic_auction_log(2_000, seed=2)
    late = log["event_time"] >= log["event_time"].quantile(0.7)
    log.loc[late, "filled"] = False
    with pytest.raises(AuctionLogError, match=r"holdout \(latest requests\) carries no revenue"):
        train_bid_filter(log)
