"""Gold features: the rating-to-label rule, and no label from an example's own time or later leaks into it."""

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from ingestion.pipeline import ingest
from spark_jobs import features, silver
from tests.conftest import make_settings

pytestmark = pytest.mark.slow
SAMPLES = Path(__file__).resolve().parents[2] / "data" / "kaggle"
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


def affinity_by_example(training) -> dict[str, float]:
    return {row.example_id: row.category_affinity for row in training.collect()}


def test_rates_use_only_strictly_earlier_examples(spark):
    training = features.build_training_set(*frames(spark, [True, False, True, True]))
    affinity = affinity_by_example(training)
    prior, weight = features.PRIOR_CTR, features.PRIOR_WEIGHT
    assert affinity["adv:1"] == pytest.approx(prior)  # nothing earlier: the prior
    assert affinity["adv:2"] == pytest.approx((1 + prior * weight) / (1 + weight))
    assert affinity["adv:3"] == pytest.approx((1 + prior * weight) / (2 + weight))
    # adv:100 shares adv:3's time: neither sees the other's label.
    assert affinity["adv:100"] == pytest.approx(affinity["adv:3"])
    assert affinity["adv:4"] == pytest.approx((3 + prior * weight) / (4 + weight))


def test_changing_future_labels_changes_no_earlier_feature(spark):
    before = affinity_by_example(features.build_training_set(*frames(spark, [True, False, True, True, False])))
    after = affinity_by_example(features.build_training_set(*frames(spark, [True, False, True, False, True])))
    cutoff = ["adv:1", "adv:2", "adv:3", "adv:100", "adv:4"]  # examples up to and including hour 3
    assert {k: before[k] for k in cutoff} == {k: after[k] for k in cutoff}
    assert before["adv:5"] != after["adv:5"]


def test_rating_to_label_rule_drops_the_ambiguous_middle(spark):
    ratings = spark.createDataFrame(
        [("U0001", f"ads16-00-{i:02d}", "Clothing & Shoes", rating) for i, rating in enumerate([1, 2, 3, 4, 5])],
        RATINGS_SCHEMA,
    )
    users = spark.createDataFrame([("ads16-U0001", 30, "F", "low", "Chad", None, None, None)], USERS_SCHEMA)
    examples = features.ads16_examples(ratings, users).orderBy("ad_id").collect()
    assert [row.label for row in examples] == [0, 0, 1, 1]
    start, end = datetime(2016, 1, 1, tzinfo=UTC), datetime(2016, 7, 25, tzinfo=UTC)
    assert all(start <= row.event_time.replace(tzinfo=UTC) < end for row in examples)
    again = features.ads16_examples(ratings, users).orderBy("ad_id").collect()
    assert [row.event_time for row in again] == [row.event_time for row in examples]


def test_gold_tables_from_the_committed_samples_and_interval_replace(spark, tmp_path):
    kaggle_dir = tmp_path / "kaggle"
    shutil.copytree(SAMPLES, kaggle_dir)
    settings = make_settings(tmp_path, kaggle_dir=kaggle_dir, reports_dir=tmp_path / "reports")
    for dataset in ("advertising", "ads16", "amazon"):
        ingest(settings, dataset)
    silver.build(spark, settings)
    written = features.build(spark, settings)
    training = spark.read.format("delta").load(settings.lake_path("gold/ctr_training_set"))
    assert written["gold/ctr_training_set"] == training.count()
    assert {row.source for row in training.select("source").distinct().collect()} == {"bootstrap"}
    assert training.where(F.col("example_id").startswith("adv:")).count() == 1000
    assert training.select("example_id").distinct().count() == training.count()
    assert set(features.TRAINING_COLUMNS) <= set(training.columns)
    assert written["gold/user_features"] == 1024

    # Re-running one interval replaces exactly it: same rows, no duplicates.
    start, end = datetime(2016, 3, 1), datetime(2016, 4, 1)
    march = training.where((F.col("event_time") >= start) & (F.col("event_time") < end)).count()
    assert features.build(spark, settings, start, end)["gold/ctr_training_set"] == march
    again = spark.read.format("delta").load(settings.lake_path("gold/ctr_training_set"))
    assert again.count() == training.count() == again.select("example_id").distinct().count()
    # An interval with no data writes nothing and says so.
    assert "gold/ctr_training_set" not in features.build(spark, settings, datetime(2030, 1, 1), datetime(2030, 2, 1))
