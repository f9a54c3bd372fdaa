"""Gold features and the CTR training set: reads silver and bronze, writes gold/ctr_training_set,
gold/user_features and gold/ad_features (`adstream features [--start ISO --end ISO]`, DAG feature_build).

The transforms and their documented rules are in spark_jobs.feature_transforms. Here:
- An interval run replaces exactly that interval of the training set (Delta ``replaceWhere``);
  a run without one rebuilds it whole. The serving tables are always rebuilt from all history.
- Hourly (scheduled) runs rebuild the logged examples of the hour that ended one
  attribution window ago, [start - window, end - window): their labels are final.
- The bronze tables are read at the Delta versions the caller names (the DAG: those its triggering Asset
  events name, as silver was), or at their latest.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from adstream.contracts import Table
from adstream.settings import Settings
from spark_jobs.feature_transforms import (
    ATTRIBUTION_WINDOW,
    build_ad_features,
    build_training_set,
    build_user_features,
    in_interval,
    segment_affinities,
)
from spark_jobs.silver import read_at_version


def build(
    spark: SparkSession,
    settings: Settings,
    start: datetime | None = None,
    end: datetime | None = None,
    bronze_versions: Mapping[Table, int] | None = None,
) -> dict[str, int]:
    """Writes gold features; with an interval, replaces exactly that interval of the training set. Bronze is read
    at the versions ``bronze_versions`` names (the latest of a table it names none for)."""
    versions = dict(bronze_versions or {})

    def read(table: Table) -> DataFrame:
        return read_at_version(spark, settings, table, versions.get(table))

    def read_if_any(table: Table) -> DataFrame | None:
        # The auction log and feedback exist once the platform has served; before that, bootstrap only.
        return read(table) if DeltaTable.isDeltaTable(spark, settings.lake_path(table)) else None

    users, ads = read(Table.SILVER_USERS), read(Table.SILVER_ADS)
    ratings, advertising = read(Table.BRONZE_ADS16_RATINGS), read(Table.BRONZE_ADVERTISING)
    auctions, feedback = read_if_any(Table.SILVER_AUCTIONS), read_if_any(Table.SILVER_FEEDBACK_EVENTS)
    if auctions is None or feedback is None:
        print("no silver/auctions + silver/feedback_events yet: bootstrap examples only")
    examples = build_training_set(advertising, ratings, users, auctions, feedback)
    training = in_interval(examples, start, end).cache()
    rows = training.count()
    written = {}
    if rows == 0:
        print(f"no examples in [{start}, {end}): the training set is left as it is")
    else:
        writer = training.withColumn("event_date", F.to_date("event_time")).write.format("delta")
        if start is not None or end is not None:
            condition = " AND ".join(
                clause
                for clause in (
                    f"event_time >= '{start.isoformat()}'" if start else "",
                    f"event_time < '{end.isoformat()}'" if end else "",
                )
                if clause
            )
            writer = writer.mode("overwrite").option("replaceWhere", condition)
        else:
            writer = writer.mode("overwrite").option("overwriteSchema", "true")
        writer.partitionBy("event_date").save(settings.lake_path(Table.GOLD_CTR_TRAINING_SET))
        written[Table.GOLD_CTR_TRAINING_SET.value] = rows
    affinities = segment_affinities(ratings, users)
    user_features = build_user_features(users, affinities)
    ad_features = build_ad_features(ads, read(Table.GOLD_CTR_TRAINING_SET) if rows else training, feedback)
    for table, frame in ((Table.GOLD_USER_FEATURES, user_features), (Table.GOLD_AD_FEATURES, ad_features)):
        frame.write.format("delta").mode("overwrite").option("overwriteSchema", "true").save(settings.lake_path(table))
        written[table.value] = read(table).count()
    training.unpersist()
    return written


def interval_for_run(
    run_type: str, start: datetime | None, end: datetime | None
) -> tuple[datetime | None, datetime | None]:
    """Scheduled (hourly) runs rebuild the examples of the hour whose attribution window has closed,
    [start - window, end - window); asset-triggered and manual runs rebuild everything."""
    if run_type != "scheduled" or start is None or end is None:
        return None, None
    return start - ATTRIBUTION_WINDOW, end - ATTRIBUTION_WINDOW


def build_for_run(
    spark: SparkSession,
    settings: Settings,
    run_type: str,
    start: datetime | None,
    end: datetime | None,
    bronze_versions: Mapping[Table, int] | None = None,
) -> dict[str, int]:
    """A DAG run's build: the interval ``interval_for_run`` gives, or everything on a lake never built; bronze at
    ``bronze_versions`` (``build``)."""
    start, end = interval_for_run(run_type, start, end)
    if start is not None and not DeltaTable.isDeltaTable(spark, settings.lake_path(Table.GOLD_CTR_TRAINING_SET)):
        # An hourly run on a lake never built (the cron tick came before the Asset-triggered run):
        # an hour's examples alone would leave training without its bootstrap set.
        print("no gold/ctr_training_set yet: this scheduled run builds it whole")
        start, end = None, None
    return build(spark, settings, start, end, bronze_versions)
