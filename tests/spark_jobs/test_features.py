"""Gold features from the committed samples end to end, which interval an hourly run rebuilds, and the bronze
versions both builders read."""

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from adstream.contracts import Table
from adstream.settings import Settings
from ingestion.pipeline import ingest
from spark_jobs import features, silver
from spark_jobs.feature_transforms import TRAINING_COLUMNS
from tests.conftest import make_settings
from tests.spark_jobs.test_feature_transforms import T1, auction, auction_log, event

pytestmark = pytest.mark.slow
SAMPLES = Path(__file__).resolve().parents[2] / "data" / "kaggle"
ADVERTISING_V1_ROWS = 400


def keep_first_advertising_rows(settings: Settings, rows: int = ADVERTISING_V1_ROWS) -> int:
    """A new version of the ingested bronze/advertising (version 0, 1000 rows) holding only its first ``rows``
    rows; returns that version."""
    from deltalake import DeltaTable, write_deltalake

    location, options = settings.delta_rs_location(Table.BRONZE_ADVERTISING)
    first = DeltaTable(location, storage_options=options).to_pyarrow_table().slice(0, rows)
    write_deltalake(location, first, mode="overwrite", storage_options=options)
    return DeltaTable(location, storage_options=options).version()


def test_hourly_runs_rebuild_the_hour_whose_attribution_window_closed():
    start, end = datetime(2026, 11, 24, 10, tzinfo=UTC), datetime(2026, 11, 24, 11, tzinfo=UTC)
    assert features.interval_for_run("scheduled", start, end) == (
        datetime(2026, 11, 24, 9, 30, tzinfo=UTC), datetime(2026, 11, 24, 10, 30, tzinfo=UTC),
    )  # fmt: skip
    assert features.interval_for_run("manual", start, end) == (None, None)
    assert features.interval_for_run("asset_triggered", start, end) == (None, None)


def test_gold_tables_from_the_committed_samples_and_interval_replace(spark, tmp_path):
    kaggle_dir = tmp_path / "kaggle"
    shutil.copytree(SAMPLES, kaggle_dir)
    settings = make_settings(tmp_path, kaggle_dir=kaggle_dir, reports_dir=tmp_path / "reports")
    for dataset in ("advertising", "ads16", "amazon"):
        ingest(settings, dataset)
    silver.build(spark, settings)
    assert "gold/ctr_training_set" in features.build(spark, settings)  # before any auction: bootstrap only
    ad_id = spark.read.format("delta").load(settings.lake_path("silver/ads")).first().ad_id
    auctions, feedback = auction_log(
        spark,
        [auction(f"s{i}", T1 + timedelta(minutes=i), ad_id=ad_id) for i in range(3)],
        [event(f"g{i}", f"s{i}", "impression", T1 + timedelta(minutes=i), ad_id=ad_id) for i in range(3)]
        + [event("g9", "s0", "click", T1 + timedelta(minutes=4), ad_id=ad_id)],
    )
    auctions.write.format("delta").save(settings.lake_path("silver/auctions"))
    feedback.write.format("delta").save(settings.lake_path("silver/feedback_events"))
    written = features.build(spark, settings)
    training = spark.read.format("delta").load(settings.lake_path("gold/ctr_training_set"))
    assert written["gold/ctr_training_set"] == training.count()
    assert {row.source for row in training.select("source").distinct().collect()} == {"bootstrap", "logged"}
    logged = {row.example_id: row.label for row in training.where(F.col("source") == "logged").collect()}
    assert logged == {"auction:s0": 1, "auction:s1": 0, "auction:s2": 0}
    ad = spark.read.format("delta").load(settings.lake_path("gold/ad_features")).where(F.col("ad_id") == ad_id)
    assert [(row.logged_impressions, row.logged_clicks) for row in ad.collect()] == [(3, 1)]
    assert training.where(F.col("example_id").startswith("adv:")).count() == 1000
    assert training.select("example_id").distinct().count() == training.count()
    assert set(TRAINING_COLUMNS) <= set(training.columns)
    assert written["gold/user_features"] == 1024

    # Re-running one interval replaces exactly it: same rows, no duplicates.
    start, end = datetime(2016, 3, 1), datetime(2016, 4, 1)
    march = training.where((F.col("event_time") >= start) & (F.col("event_time") < end)).count()
    assert features.build(spark, settings, start, end)["gold/ctr_training_set"] == march
    again = spark.read.format("delta").load(settings.lake_path("gold/ctr_training_set"))
    assert again.count() == training.count() == again.select("example_id").distinct().count()
    # An interval with no data writes nothing and says so.
    assert "gold/ctr_training_set" not in features.build(spark, settings, datetime(2030, 1, 1), datetime(2030, 2, 1))


def test_silver_and_gold_read_bronze_at_the_version_named_not_the_latest(spark, tmp_path):
    settings = make_settings(tmp_path, kaggle_dir=SAMPLES, reports_dir=tmp_path / "reports")
    for dataset in ("advertising", "ads16", "amazon"):
        ingest(settings, dataset)
    assert keep_first_advertising_rows(settings) == 1
    named = {Table.BRONZE_ADVERTISING: 0}

    assert silver.build(spark, settings, bronze_versions=named)["silver/users"] == 1000 + 24
    features.build(spark, settings, bronze_versions=named)
    training = spark.read.format("delta").load(settings.lake_path("gold/ctr_training_set"))
    assert training.where(F.col("example_id").startswith("adv:")).count() == 1000
    assert silver.build(spark, settings, "users")["silver/users"] == ADVERTISING_V1_ROWS + 24  # named none: latest
