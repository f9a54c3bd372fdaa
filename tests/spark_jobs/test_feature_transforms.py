"""Feature transforms: the rating-to-label rule, attribution, and no label from an example's own time or later
leaks into it."""

from datetime import UTC, datetime, timedelta

import pytest
from pyspark.sql import functions as F

from adstream.events import AuctionRecord, FeedbackEvent, spark_ddl
from spark_jobs import feature_transforms

pytestmark = pytest.mark.slow
T0 = datetime(2016, 2, 1, 12, 0, tzinfo=UTC)
ADV_SCHEMA = "source_row long, timestamp timestamp, clicked_on_ad boolean"
USERS_SCHEMA = (
    "user_id string, age int, gender string, income_band string, country string, "
    "daily_time_spent_on_site double, daily_internet_usage double, area_income double"
)
RATINGS_SCHEMA = "user_id string, ad_id string, category_name string, rating long"


def frames(spark, clicks: list[bool]):
    """One user segment, one example per hour, the given click labels, plus two simultaneous examples."""
    rows = [(i + 1, T0 + timedelta(hours=i), clicked) for i, clicked in enumerate(clicks)]
    rows.append((100, T0 + timedelta(hours=2), True))  # same time as example 3
    advertising = spark.createDataFrame(rows, ADV_SCHEMA)
    users = spark.createDataFrame(
        [(f"adv-{r[0]:06d}", 30, "F", "low", "Chad", 60.0, 150.0, 40000.0) for r in rows], USERS_SCHEMA
    )
    ratings = spark.createDataFrame([], RATINGS_SCHEMA)
    return advertising, ratings, users


T1 = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)


def auction(auction_id: str, at: datetime, ad_id: str = "amazon-ad-1", filled: bool = True) -> dict:
    winner = {
        "campaign_id": "cmp-1", "advertiser_id": "adv-1", "ad_id": ad_id, "ad_category": "Electronics",
        "pricing_model": "CPC", "bid_micros": 500_000, "clearing_price_micros": 310_000, "pctr": 0.05,
    } if filled else {}  # fmt: skip
    return AuctionRecord(
        auction_id=auction_id, event_time=at, user_id="adv-000001", device_type="mobile", floor_micros=100_000,
        candidate_count=3 if filled else 0, filled=filled, latency_ms=2.5, **winner,
    ).model_dump()  # fmt: skip


def event(event_id: str, auction_id: str, event_type: str, at: datetime, ad_id: str = "amazon-ad-1") -> dict:
    return FeedbackEvent(
        event_id=event_id, event_type=event_type, event_time=at, auction_id=auction_id, campaign_id="cmp-1",
        advertiser_id="adv-1", ad_id=ad_id, user_id="adv-000001", pricing_model="CPC",
        cost_micros=310_000 if event_type == "click" else 0,
    ).model_dump()  # fmt: skip


def auction_log(spark, auctions: list[dict], events: list[dict]):
    return (
        spark.createDataFrame(auctions, spark_ddl(AuctionRecord)),
        spark.createDataFrame(events, spark_ddl(FeedbackEvent)),
    )


def test_logged_labels_follow_the_attribution_window(spark):
    minute = timedelta(minutes=1)
    auctions, feedback = auction_log(
        spark,
        [auction(a, T1) for a in ("a1", "a2", "a3", "a5", "a6")] + [auction("a4", T1, filled=False)],
        [
            event("e1", "a1", "impression", T1), event("e2", "a1", "click", T1 + 10 * minute),
            event("e3", "a2", "impression", T1 + minute), event("e4", "a2", "click", T1 + 45 * minute),
            event("e5", "a3", "click", T1 + minute),  # a click without an impression
            event("e6", "a5", "impression", T1), event("e7", "a5", "click", T1 + 2 * minute),
            event("e8", "a5", "click", T1 + 3 * minute),
            event("e9", "a6", "impression", T1), event("e10", "a6", "impression", T1 + minute),
            event("e11", "a6", "click", T1 - minute),  # before the impression: not attributed
        ],
    )  # fmt: skip
    users = spark.createDataFrame([("adv-000001", 30, "F", "low", "Chad", 60.0, 150.0, 40000.0)], USERS_SCHEMA)
    rows = feature_transforms.logged_examples(auctions, feedback, users).collect()
    assert {row.example_id: row.label for row in rows} == {
        "auction:a1": 1, "auction:a2": 0, "auction:a5": 1, "auction:a6": 0,
    }  # fmt: skip
    assert {(row.source, row.dataset, row.device_type, row.ad_category, row.country) for row in rows} == {
        ("logged", "auctions", "mobile", "Electronics", "Chad")
    }


def test_logged_examples_see_only_earlier_labels_of_their_ad(spark):
    hour = timedelta(hours=1)
    auctions, feedback = auction_log(
        spark,
        [auction("b1", T1), auction("b2", T1 + hour), auction("b3", T1 + 2 * hour)],
        [
            event("f1", "b1", "impression", T1), event("f2", "b1", "click", T1 + timedelta(minutes=5)),
            event("f3", "b2", "impression", T1 + hour), event("f4", "b2", "click", T1 + hour),
            event("f5", "b3", "impression", T1 + 2 * hour),
        ],
    )  # fmt: skip
    advertising, ratings, users = frames(spark, [])
    training = feature_transforms.build_training_set(advertising, ratings, users, auctions, feedback)
    ctr = {row.example_id: row.ad_ctr_smoothed for row in training.where(F.col("source") == "logged").collect()}
    prior, weight = feature_transforms.PRIOR_CTR, feature_transforms.PRIOR_WEIGHT
    # b1's own click (5 min after it) is not a feature of b1; b3 sees b1 and b2, both clicked.
    assert ctr == pytest.approx(
        {"auction:b1": prior, "auction:b2": (1 + prior * weight) / (1 + weight),
         "auction:b3": (2 + prior * weight) / (2 + weight)}
    )  # fmt: skip


def affinity_by_example(training) -> dict[str, float]:
    return {row.example_id: row.category_affinity for row in training.collect()}


def test_rates_use_only_strictly_earlier_examples(spark):
    training = feature_transforms.build_training_set(*frames(spark, [True, False, True, True]))
    affinity = affinity_by_example(training)
    prior, weight = feature_transforms.PRIOR_CTR, feature_transforms.PRIOR_WEIGHT
    assert affinity["adv:1"] == pytest.approx(prior)  # nothing earlier: the prior
    assert affinity["adv:2"] == pytest.approx((1 + prior * weight) / (1 + weight))
    assert affinity["adv:3"] == pytest.approx((1 + prior * weight) / (2 + weight))
    # adv:100 shares adv:3's time: neither sees the other's label.
    assert affinity["adv:100"] == pytest.approx(affinity["adv:3"])
    assert affinity["adv:4"] == pytest.approx((3 + prior * weight) / (4 + weight))


def test_changing_future_labels_changes_no_earlier_feature(spark):
    before = affinity_by_example(
        feature_transforms.build_training_set(*frames(spark, [True, False, True, True, False]))
    )
    after = affinity_by_example(feature_transforms.build_training_set(*frames(spark, [True, False, True, False, True])))
    cutoff = ["adv:1", "adv:2", "adv:3", "adv:100", "adv:4"]  # examples up to and including hour 3
    assert {k: before[k] for k in cutoff} == {k: after[k] for k in cutoff}
    assert before["adv:5"] != after["adv:5"]


def test_rating_to_label_rule_drops_the_ambiguous_middle(spark):
    ratings = spark.createDataFrame(
        [("U0001", f"ads16-00-{i:02d}", "Clothing & Shoes", rating) for i, rating in enumerate([1, 2, 3, 4, 5])],
        RATINGS_SCHEMA,
    )
    users = spark.createDataFrame([("ads16-U0001", 30, "F", "low", "Chad", None, None, None)], USERS_SCHEMA)
    examples = feature_transforms.ads16_examples(ratings, users).orderBy("ad_id").collect()
    assert [row.label for row in examples] == [0, 0, 1, 1]
    start, end = datetime(2016, 1, 1, tzinfo=UTC), datetime(2016, 7, 25, tzinfo=UTC)
    assert all(start <= row.event_time.replace(tzinfo=UTC) < end for row in examples)
    again = feature_transforms.ads16_examples(ratings, users).orderBy("ad_id").collect()
    assert [row.event_time for row in again] == [row.event_time for row in examples]
